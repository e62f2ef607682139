"""Inverse-Hessian-vector products without forming the Hessian: solve (H + lambda I) x = b from
Hessian-vector products alone.

Vectors are lists of tensors (one per parameter), so the solvers work on any set of parameters.
- ``conjugate_gradient``: exact in exact arithmetic for a positive-definite damped Hessian; stops at
  a relative residual ``tol``. The default.
- ``lissa`` (Agarwal et al. 2017): the truncated Neumann series x <- b + (I - (H + lambda I)/scale) x,
  solution x / scale; needs ``scale`` above the largest eigenvalue of H + lambda I, tolerates noisy
  (mini-batch) Hessian-vector products.
Both report their iterations and the final relative residual ||(H + lambda I) x - b|| / ||b||.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch

Vector = list[torch.Tensor]
HVP = Callable[[Vector], Vector]


@dataclasses.dataclass
class Solution:
    x: Vector
    method: str
    iterations: int
    relative_residual: float
    damping: float


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def norm(a: Sequence[torch.Tensor]) -> float:
    return math.sqrt(dot(a, a))


def damped(hvp: HVP, damping: float) -> HVP:
    return lambda v: [h + damping * x for h, x in zip(hvp(v), v)]


def residual(hvp: HVP, x: Vector, b: Vector, damping: float) -> float:
    applied = damped(hvp, damping)(x)
    return norm([a - c for a, c in zip(applied, b)]) / max(norm(b), 1e-30)


def conjugate_gradient(hvp: HVP, b: Vector, damping: float, *, tol: float = 1e-6, max_iter: int = 100,
                       on_step: Callable[[int, float], None] | None = None) -> Solution:
    operator = damped(hvp, damping)
    b_norm = max(norm(b), 1e-30)
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rr = dot(r, r)
    iterations = 0
    while iterations < max_iter and math.sqrt(rr) / b_norm > tol:
        ap = operator(p)
        curvature = dot(p, ap)
        if curvature <= 0:
            # Negative curvature: the damped Hessian is not positive definite here; more damping needed.
            raise ValueError(f"the damped Hessian has negative curvature ({curvature:.3g}); raise the damping")
        step = rr / curvature
        x = [xi + step * pi for xi, pi in zip(x, p)]
        r = [ri - step * api for ri, api in zip(r, ap)]
        rr_next = dot(r, r)
        p = [ri + (rr_next / rr) * pi for ri, pi in zip(r, p)]
        rr = rr_next
        iterations += 1
        if on_step is not None:
            on_step(iterations, math.sqrt(rr) / b_norm)
    # The recursive residual drifts from the true one in floating point: report the true one.
    return Solution(x, "cg", iterations, residual(hvp, x, b, damping), damping)


def lissa(hvp: HVP, b: Vector, damping: float, *, scale: float, tol: float = 1e-6, max_iter: int = 1000,
          on_step: Callable[[int, float], None] | None = None) -> Solution:
    operator = damped(hvp, damping)
    estimate = [t.clone() for t in b]
    iterations = 0
    change = float("inf")
    b_norm = max(norm(b), 1e-30)
    while iterations < max_iter and change > tol:
        applied = operator(estimate)
        updated = [bi + ei - ai / scale for bi, ei, ai in zip(b, estimate, applied)]
        # updated - estimate = b - (H + lambda I) x for the current x = estimate / scale: the residual.
        change = norm([u - e for u, e in zip(updated, estimate)]) / b_norm
        estimate = updated
        iterations += 1
        if on_step is not None:
            on_step(iterations, change)
    x = [e / scale for e in estimate]
    return Solution(x, "lissa", iterations, residual(hvp, x, b, damping), damping)
