"""TOFU's metrics (Maini et al. 2024, as open-unlearning computes them).

Every probability is length-normalised: p(a | q) ** (1 / |a|) = exp(-mean NLL of a's tokens).
- probability: that of the answer; for sets whose records have perturbed answers but no
  paraphrased one (real authors, world facts) it is normalised against the wrong answers,
  p_answer / (p_answer + sum of p_perturbed);
- truth ratio R = P(perturbed) / P(paraphrased), perturbed answers averaged geometrically (the
  answer stands in for the paraphrase where a set has none); summarised on the forget set as
  mean(min(R, 1/R)) and elsewhere as mean(max(0, 1 - R));
- Forget Quality: the p-value of the two-sample KS test between the per-record R of the audited
  model and of a reference model never trained on the forget set;
- Model Utility: the harmonic mean of probability, ROUGE-L and truth ratio on the retain, real
  authors and world facts sets.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import ks_2samp

UTILITY_SETS = ("retain", "real_authors", "world_facts")
UTILITY_METRICS = ("probability", "rouge_l", "truth_ratio")


def length_normalised_probability(nll: Sequence[float]) -> float:
    return math.exp(-float(np.mean(nll)))


def normalised_probability(p_answer: float, p_perturbed: Sequence[float]) -> float:
    return p_answer / (p_answer + float(np.sum(p_perturbed)))


def truth_ratio(p_paraphrased: float, p_perturbed: Sequence[float]) -> float:
    """P(perturbed) / P(paraphrased), the perturbed probabilities averaged geometrically."""
    log_perturbed = float(np.mean(np.log(np.asarray(p_perturbed, dtype=np.float64))))
    return math.exp(log_perturbed - math.log(p_paraphrased))


def truth_ratio_summary(ratios: Sequence[float], forget: bool) -> float:
    values = np.asarray(ratios, dtype=np.float64)
    if forget:
        return float(np.mean(np.minimum(values, 1.0 / values)))
    return float(np.mean(np.maximum(0.0, 1.0 - values)))


def forget_quality(ratios: Sequence[float], reference_ratios: Sequence[float]) -> float:
    return float(ks_2samp(np.asarray(ratios, float), np.asarray(reference_ratios, float)).pvalue)


def harmonic_mean(values: Sequence[float]) -> float:
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def model_utility(summaries: dict[str, dict[str, float | None]]) -> dict[str, object]:
    """Harmonic mean over the utility sets present; ``complete`` says whether all three were."""
    parts = {
        f"{name}/{metric}": summaries[name][metric]
        for name in UTILITY_SETS
        if name in summaries
        for metric in UTILITY_METRICS
        if summaries[name].get(metric) is not None
    }
    if not parts:
        return {"value": None, "parts": {}, "complete": False}
    return {
        "value": harmonic_mean(list(parts.values())),
        "parts": parts,
        "complete": len(parts) == len(UTILITY_SETS) * len(UTILITY_METRICS),
    }
