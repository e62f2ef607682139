"""Forget Quality against Model Utility, one point per method x init x rank, as in the TOFU and
LoKU papers' figures (Forget Quality on a log scale: it is a p-value)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_hex, to_rgb  # noqa: E402

from forgetkit.artifacts import atomic_file  # noqa: E402

METHOD_COLOURS = {"ga": "#d62728", "gd": "#ff7f0e", "npo": "#9467bd", "ihl": "#1f77b4", "simnpo": "#8c564b",
                  "unseen": "#2ca02c"}
INIT_MARKERS = {"lora": "o", "fila": "*"}
# A loss stopped at a target ("ihl@reference") is told from the same loss run to the end by its marker.
TARGET_MARKERS = {"holdout": "D", "reference": "P"}
GOAL_FQ, GOAL_MU_SHARE = 0.05, 0.9  # the goal the bench is run against: FQ >= 0.05 at >= 0.9 of full utility
FLOOR = 1e-20  # a p-value of 0 still has to show on a log axis


def loss_and_target(run: dict[str, Any]) -> tuple[str, str]:
    """("ihl", "holdout") for a run labelled "ihl@holdout lr 0.003 null 0.8": its first word, split at "@"."""
    loss, _, target = run["method"].split()[0].partition("@")
    return loss, target


def marker(run: dict[str, Any]) -> str:
    return TARGET_MARKERS.get(loss_and_target(run)[1]) or INIT_MARKERS.get(run["init"], "s")


# Further configurations of one loss (other parameters, other stopping) get shades of its colour:
# blended this far toward white (positive) or black (negative).
SHADES = (0.0, 0.45, -0.4, 0.7, -0.6, 0.25)


def shade(colour: str, variant: int) -> str:
    """The loss's colour for its ``variant``-th configuration in the plot (0: the colour itself)."""
    amount = SHADES[variant % len(SHADES)]
    toward = 1.0 if amount > 0 else 0.0
    return to_hex(tuple(c + abs(amount) * (toward - c) for c in to_rgb(colour)))


def fq_mu_plot(results: dict[str, Any], path: Path) -> Path:
    plotted = [r for r in results["runs"] if r["forget_quality"] is not None and r["model_utility"] is not None]
    labels = list(dict.fromkeys(f"{r['method'].upper()} + {r['init'].upper()}" for r in plotted))
    # The legend sits under the axes, so a long list of configurations never covers the points.
    figure, axis = plt.subplots(figsize=(8, 5 + 0.17 * (len(labels) + 3)))
    variants: dict[str, list[str]] = {}
    seen = set()
    for run in plotted:
        label = f"{run['method'].upper()} + {run['init'].upper()}"
        loss = loss_and_target(run)[0]
        configurations = variants.setdefault(loss, [])
        if label not in configurations:
            configurations.append(label)
        colour = shade(METHOD_COLOURS.get(loss, "#7f7f7f"), configurations.index(label))
        axis.scatter(run["model_utility"], max(run["forget_quality"], FLOOR), color=colour, marker=marker(run),
                     s=30 + 6 * run["rank"], alpha=0.8, label=None if label in seen else label,
                     edgecolors="black", linewidths=0.4)
        seen.add(label)
    full = results["full"]
    if full["forget_quality"] is not None and full["model_utility"] is not None:
        axis.scatter(full["model_utility"], max(full["forget_quality"], FLOOR), color="black", marker="X", s=90,
                     label="full model (before)")
        axis.axvline(GOAL_MU_SHARE * full["model_utility"], color="#7f7f7f", linestyle="-.", linewidth=1,
                     label=f"goal: {GOAL_MU_SHARE:g} x full utility, FQ {GOAL_FQ:g}")
        axis.axhline(GOAL_FQ, color="#7f7f7f", linestyle="-.", linewidth=1)
    if results["reference"]["model_utility"] is not None:
        axis.axvline(results["reference"]["model_utility"], color="#2ca02c", linestyle="--", linewidth=1,
                     label="reference utility")
    axis.axhline(1.0, color="#2ca02c", linestyle=":", linewidth=1)
    axis.set_yscale("log")
    axis.set_xlabel("Model Utility")
    axis.set_ylabel("Forget Quality (KS p-value, log)")
    axis.set_title("TOFU: Forget Quality against Model Utility (marker size = rank)")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.12), borderaxespad=0.0)
    axis.grid(True, alpha=0.3)
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path
