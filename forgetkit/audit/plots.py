"""The report's figures (matplotlib, Agg backend, PNG): before/after bars, truth-ratio histograms
against the reference, MIA ROC curves, the attack x metric heat map and relearning curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


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


# Recovery metrics in the heat map, with the verdict threshold that sets each one's margin.
RECOVERY_MARGINS = (("rouge_l", "rouge_margin"), ("el10", "el10_margin"), ("em", "em_margin"),
                    ("probability", "probability_margin"), ("canary_exposure", "exposure_margin_bits"),
                    ("secret_in_answer", "secret_margin"))


def attack_matrix(attacks: dict[str, Any], thresholds: dict[str, float], path: Path) -> Path | None:
    """Heat map of recovery (forget change minus control change) over each check's margin: above 1
    (red) the check fails. Cells print the attacked forget value and, in brackets, the control's."""
    views = {name: view for name, view in attacks.items() if "matrix" in view}
    if not views:
        return None
    columns = [(k, t) for k, t in RECOVERY_MARGINS if any(k in v["matrix"] for v in views.values())]
    grid, text = [], []
    for view in views.values():
        row, labels = [], []
        for key, threshold in columns:
            cell = view["matrix"].get(key)
            if cell is None or cell.get("recovery") is None:
                row.append(math.nan)
                labels.append("")
                continue
            margin = thresholds.get(threshold) or 0.0
            ratio = cell["recovery"] / margin if margin > 0 else (0.0 if cell["recovery"] <= 0 else 2.0)
            row.append(max(-2.0, min(2.0, ratio)))
            control = (cell.get("control") or [None, None])[1]
            labels.append(f"{cell['forget'][1]:.2f}" + (f"\n({control:.2f})" if control is not None else ""))
        grid.append(row)
        text.append(labels)
    figure, ax = plt.subplots(figsize=(1.3 * len(columns) + 2.5, 0.45 * len(views) + 1.6))
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-2, vmax=2, aspect="auto")
    for i, labels in enumerate(text):
        for j, label in enumerate(labels):
            dark = not math.isnan(grid[i][j]) and abs(grid[i][j]) > 1.2
            ax.text(j, i, label, ha="center", va="center", fontsize=6, color="white" if dark else "black")
    ax.set_xticks(range(len(columns)), [k for k, _ in columns], rotation=20, fontsize=8)
    ax.set_yticks(range(len(views)), list(views), fontsize=8)
    figure.colorbar(image, ax=ax, label="recovery / margin (> 1 fails)")
    ax.set_title("Attack x metric: recovery beyond the held-out control")
    return _save(figure, path)


def relearn_curves(attacks: dict[str, Any], path: Path) -> Path | None:
    """ROUGE-L and canary exposure against relearning steps, forget and control, per kind."""
    series: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for view in attacks.values():
        if view.get("attack") != "relearn" or "matrix" not in view:
            continue
        kind, steps = view["details"]["kind"], view["details"]["steps"]
        for metric in ("rouge_l", "canary_exposure"):
            cell = view["matrix"].get(metric)
            if cell is None:
                continue
            for role, values in (("forget", cell["forget"]), ("control", cell.get("control"))):
                if values is None:
                    continue
                line = series.setdefault((metric, kind, role), [(0, values[0])])
                line.append((steps, values[1]))
    if not series:
        return None
    metrics = sorted({m for m, _, _ in series}, key=("rouge_l", "canary_exposure").index)
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for (m, kind, role), points in series.items():
            if m != metric:
                continue
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color="C0" if kind == "part" else "C1",
                    linestyle="-" if role == "forget" else "--", label=f"{role}, {kind}")
        ax.set_xlabel("relearning steps")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    figure.suptitle("Relearning: recovery against steps")
    return _save(figure, path)


def render_all(report: dict[str, Any], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    results = report["results"]
    reference = (report.get("reference") or {}).get("truth_ratio")
    made = {
        "metrics": metric_bars(results, folder / "metrics.png"),
        "truth_ratio": truth_ratio_histograms(results, reference, folder / "truth_ratio.png"),
        "mia_roc": roc_curves(results, folder / "mia_roc.png"),
    }
    thresholds = (report.get("parameters") or {}).get("thresholds") or {}
    for variant, value in results.items():
        attacks = value.get("attacks") or {}
        made[f"attack_matrix_{variant}"] = attack_matrix(attacks, thresholds, folder / f"attack_matrix_{variant}.png")
        made[f"relearn_{variant}"] = relearn_curves(attacks, folder / f"relearn_{variant}.png")
    return {name: path for name, path in made.items() if path is not None}
