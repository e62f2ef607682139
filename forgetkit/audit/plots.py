"""The report's figures (matplotlib, Agg backend, PNG): before/after bars, truth-ratio histograms
against the reference, MIA ROC curves, and attack results."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from forgetkit.audit.verdict import rounded_results  # noqa: E402

BAR_METRICS = ("rouge_l", "el10", "em", "ma", "probability", "truth_ratio")
COLOURS = {"base": "#8c8c8c", "unlearned": "#1f77b4", "model": "#1f77b4", "reference": "#2ca02c"}


def _colour(variant: str, number: int) -> str:
    return COLOURS.get(variant, f"C{number}")


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def metric_bars(results: dict[str, Any], path: Path) -> Path | None:
    variants = list(results)
    set_names = list(next(iter(results.values()))["sets"])
    figure, axes = plt.subplots(1, len(set_names), figsize=(4.2 * len(set_names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], set_names):
        metrics = [m for m in BAR_METRICS if any(results[v]["sets"][name]["summary"].get(m) is not None for v in variants)]
        width = 0.8 / len(variants)
        for number, variant in enumerate(variants):
            summary = results[variant]["sets"][name]["summary"]
            values = [summary.get(m) or 0.0 for m in metrics]
            ax.bar([i + number * width for i in range(len(metrics))], values, width, label=variant,
                   color=_colour(variant, number))
        ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(metrics))], metrics, rotation=30)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{name} set")
    axes[0][-1].legend(fontsize=8)
    return _save(figure, path)


def truth_ratio_histograms(results: dict[str, Any], reference: list[float] | None, path: Path) -> Path | None:
    series = {
        v: [r for r in results[v]["sets"]["forget"]["per_example"].get("truth_ratio") or [] if r is not None]
        for v in results
    }
    series = {v: s for v, s in series.items() if s}
    if not series:
        return None
    if reference and "reference" not in series:
        series["reference"] = list(reference)
    figure, ax = plt.subplots(figsize=(6.4, 3.6))
    logs = {v: [math.log10(max(r, 1e-12)) for r in s] for v, s in series.items()}
    low = min(min(x) for x in logs.values())
    high = max(max(x) for x in logs.values())
    bins = [low + (high - low + 1e-9) * i / 30 for i in range(31)]
    for number, (variant, values) in enumerate(logs.items()):
        ax.hist(values, bins=bins, alpha=0.5, label=variant, color=_colour(variant, number))
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("log10 truth ratio R = P(perturbed) / P(paraphrased), forget set")
    ax.set_ylabel("records")
    ax.legend(fontsize=8)
    return _save(figure, path)


def roc_curves(results: dict[str, Any], path: Path) -> Path | None:
    variants = [v for v in results if results[v].get("mia", {}).get("forget")]
    if not variants:
        return None
    figure, axes = plt.subplots(1, len(variants), figsize=(4.0 * len(variants), 3.8), squeeze=False)
    for ax, variant in zip(axes[0], variants):
        for score, value in results[variant]["mia"]["forget"].items():
            ax.plot(value["roc"]["fpr"], value["roc"]["tpr"], label=f"{score} (AUC {value['auc']:.2f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(f"MIA forget vs held-out: {variant}")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7, loc="lower right")
    return _save(figure, path)


def attack_bars(results: dict[str, Any], path: Path) -> Path | None:
    rows: dict[str, dict[str, float]] = {}
    for variant, value in results.items():
        attacks = value.get("attacks") or {}
        row: dict[str, float] = {}
        forget = value["sets"]["forget"]["summary"].get("rouge_l")
        if forget is not None:
            row["none"] = forget
        if "attacked" in attacks.get("paraphrase", {}):
            row["paraphrase"] = attacks["paraphrase"]["attacked"]["rouge_l"] or 0.0
        for key, result in rounded_results(attacks.get("quantize", {})):
            row[key] = result["forget"]["rouge_l"] or 0.0
        if "forget" in attacks.get("relearn", {}):
            row["relearn"] = attacks["relearn"]["forget"]["attacked"]["rouge_l"] or 0.0
        if "leak_rate" in attacks.get("sampling", {}).get("forget", {}):
            row["sampling leak"] = attacks["sampling"]["forget"]["leak_rate"] or 0.0
        if len(row) > 1:
            rows[variant] = row
    if not rows:
        return None
    labels = list(dict.fromkeys(k for row in rows.values() for k in row))
    figure, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 3.6))
    width = 0.8 / len(rows)
    for number, (variant, row) in enumerate(rows.items()):
        ax.bar([i + number * width for i in range(len(labels))], [row.get(k, 0.0) for k in labels], width,
               label=variant, color=_colour(variant, number))
    ax.set_xticks([i + width * (len(rows) - 1) / 2 for i in range(len(labels))], labels, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("forget ROUGE-L (sampling: leak rate)")
    ax.set_title("Forget set under attack")
    ax.legend(fontsize=8)
    return _save(figure, path)


def render_all(report: dict[str, Any], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    results = report["results"]
    reference = (report.get("reference") or {}).get("truth_ratio")
    made = {
        "metrics": metric_bars(results, folder / "metrics.png"),
        "truth_ratio": truth_ratio_histograms(results, reference, folder / "truth_ratio.png"),
        "mia_roc": roc_curves(results, folder / "mia_roc.png"),
        "attacks": attack_bars(results, folder / "attacks.png"),
    }
    return {name: path for name, path in made.items() if path is not None}
