"""Human-readable audit reports: Markdown (plots beside it as PNG files) and one self-contained
HTML page (plots embedded). Both are rendered from the same list of blocks built from the JSON
report, so they always say the same thing. Neither holds record text unless the JSON does
(``--include-examples``): the tables are built from summaries only."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

from forgetkit.audit.attacks.measure import MIA_SCORES
from forgetkit.stages.common import fmt

SET_METRICS = (
    ("rouge_l", "ROUGE-L recall"),
    ("el5", "EL5"),
    ("el10", "EL10"),
    ("em", "exact memorisation"),
    ("ma", "MA"),
    ("es", "extraction strength"),
    ("probability", "probability"),
    ("truth_ratio", "truth ratio"),
    ("canary_exposure", "canary exposure (bits)"),
    ("canary_exposure_low", "canary exposure from the bottom (bits)"),
    ("nll", "mean NLL"),
    ("perplexity", "perplexity"),
    ("records", "records"),
)

# The attack matrix's columns: (summary key, label); MIA AUCs are added after them.
ATTACK_METRICS = (("rouge_l", "ROUGE-L"), ("el10", "EL10"), ("em", "EM"), ("probability", "probability"),
                  ("truth_ratio", "truth ratio"), ("canary_exposure", "canary bits"),
                  ("canary_exposure_low", "canary bits (bottom)"), ("secret_in_answer", "secrets out"))

Block = tuple  # ("h", level, text) | ("p", text) | ("table", columns, rows) | ("img", title, path)


def _blocks(report: dict[str, Any], plots: dict[str, Path]) -> list[Block]:
    results = report["results"]
    variants = list(results)
    blocks: list[Block] = [("h", 1, "forgetkit audit report")]
    audited = "unlearned" if "unlearned" in results else "model"
    verdict = results[audited].get("verdict")
    if verdict:
        blocks.append(("p", f"Verdict for **{audited}**: **{verdict['verdict'].upper()}**. Rule: {verdict['rule']}."))
        rows = [
            (c["name"], c["kind"], c["value"], c["rule"], c.get("p_value"),
             "skipped: " + c["skipped"] if c["skipped"] else ("pass" if c["passed"] else "FAIL"))
            for c in verdict["checks"]
        ]
        blocks.append(("table", ["check", "kind", "value", "threshold", "p (gap is noise)", "result"], rows))
    model = report["base_model"]
    lines = [f"model `{model.get('model_id')}` (fingerprint {str(model.get('fingerprint'))[:16]})"]
    if report.get("adapter"):
        lines.append(f"adapter `{report['adapter'].get('path')}` (sha256 {report['adapter'].get('sha256', '')[:16]})")
    for name, record in report["inputs"].items():
        lines.append(f"{name} set: `{Path(record.get('path', '')).name}` (sha256 {record.get('sha256', '')[:16]})")
    lines.append(f"suites: {', '.join(report['suites'])}; attacks: {', '.join(report['attacks']) or 'none'}")
    blocks.append(("h", 2, "Inputs"))
    blocks.append(("p", "; ".join(lines) + "."))

    blocks.append(("h", 2, "Per-set metrics"))
    set_names = list(results[variants[0]]["sets"])
    columns = ["metric"] + [f"{s} / {v}" for s in set_names for v in variants]
    rows = []
    for key, label in SET_METRICS:
        row = [label] + [results[v]["sets"][s]["summary"].get(key) for s in set_names for v in variants]
        if any(x is not None for x in row[1:]):
            rows.append(row)
    blocks.append(("table", columns, rows))
    if "metrics" in plots:
        blocks.append(("img", "Metrics per set and model", plots["metrics"]))

    tofu_rows = []
    for v in variants:
        tofu = results[v].get("tofu", {})
        utility = tofu.get("model_utility") or {}
        if utility.get("value") is not None or tofu.get("forget_quality") is not None:
            partial = "" if utility.get("complete") else f" (from {len(utility.get('parts', {}))} of 9 numbers)"
            tofu_rows.append((v, tofu.get("forget_quality"), fmt(utility.get("value")) + partial))
    if tofu_rows:
        blocks.append(("h", 2, "TOFU"))
        blocks.append(("table", ["model", "Forget Quality (KS p-value)", "Model Utility"], tofu_rows))
        if "truth_ratio" in plots:
            blocks.append(("img", "Truth ratios on the forget set", plots["truth_ratio"]))

    mia_rows = []
    for v in variants:
        for member, scores in results[v].get("mia", {}).items():
            leaks = results[v].get("tofu", {}).get("privleak", {}) if member == "forget" else {}
            mia_rows.append([v, f"{member} vs held-out"] + [scores[s]["auc"] for s in scores]
                            + [leaks.get("min_k") if leaks else None])
    if mia_rows:
        score_names = list(next(iter(results[v]["mia"].values())).keys())
        blocks.append(("h", 2, "Membership inference (ROC AUC; 0.5 = indistinguishable)"))
        blocks.append(("table", ["model", "sets"] + score_names + ["PrivLeak (min_k)"], mia_rows))
        if "mia_roc" in plots:
            blocks.append(("img", "ROC curves", plots["mia_roc"]))

    for v in variants:
        blocks.extend(attack_blocks(v, results[v].get("attacks") or {}, plots))
        if results[v].get("attack_seconds"):
            blocks.append(("p", "Seconds per attack: " + ", ".join(f"{k} {fmt(t)}" for k, t in results[v]["attack_seconds"].items())))
    blocks.append(("p", "Record text, generated answers and secrets are "
                   + ("included in the JSON report (--include-examples)." if not report.get("redacted") else "left out of every report (redacted).")))
    return blocks


def _cell(value: Any, control: Any) -> str:
    return fmt(value) + (f" ({fmt(control)})" if control is not None else "")


def attack_blocks(variant: str, attacks: dict[str, Any], plots: dict[str, Path]) -> list[Block]:
    """The attack x metric matrix (attacked forget, the attacked control in brackets), the recovery
    table (forget change minus control change), what each attack did, and the sampling leak rates."""
    views = {name: view for name, view in attacks.items() if "matrix" in view}
    if not attacks:
        return []
    blocks: list[Block] = [("h", 2, f"Attacks on {variant}")]
    if views:
        shown = [(k, label) for k, label in ATTACK_METRICS if any(k in v["matrix"] for v in views.values())]
        rows, recovery_rows = [], []
        for name, view in views.items():
            m = view["matrix"]
            auc = (view.get("mia") or {}).get("attacked", {})
            control_auc = (view.get("mia") or {}).get("unattacked", {})
            rows.append([name] + [_cell(m[k]["forget"][1], (m[k]["control"] or [None, None])[1]) if k in m else ""
                                  for k, _ in shown] + [fmt(auc.get(s)) for s in MIA_SCORES])
            recovery_rows.append([name] + [m[k].get("recovery") if k in m else None for k, _ in shown]
                                 + [control_auc.get(s) for s in MIA_SCORES])
        blocks.append(("p", "Under each attack: the forget set's value, the held-out control's under the same attack in "
                       "brackets; MIA AUCs compare the attacked forget set with the attacked control."))
        blocks.append(("table", ["attack"] + [label for _, label in shown] + [f"MIA {s} AUC" for s in MIA_SCORES], rows))
        blocks.append(("p", "Recovery: the forget set's change under the attack minus the control's change (toward "
                       "remembering; truth ratio and bottom exposure have no direction and show no recovery). "
                       "The last columns are the MIA AUCs without the attack."))
        blocks.append(("table", ["attack"] + [label for _, label in shown] + [f"MIA {s} AUC before" for s in MIA_SCORES],
                       recovery_rows))
        plot = plots.get(f"attack_matrix_{variant}")
        if plot:
            blocks.append(("img", f"Recovery under attack ({variant}), in units of each check's margin", plot))
        plot = plots.get(f"relearn_{variant}")
        if plot:
            blocks.append(("img", f"Relearning: forget and control against steps ({variant})", plot))
        described = []
        for name, view in views.items():
            details = view.get("details", {})
            if "wording" in details:
                described.append(f"{name}: " + "; ".join(f"{k}: {v}" for k, v in details["wording"].items()))
            elif view["attack"] == "relearn":
                described.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in details.items()))
        if described:
            blocks.append(("p", "What each attack did. " + " / ".join(described)))
    sampled = attacks.get("sampling", {})
    rows = [(f"sampling x{sampled['samples']}", name, sampled[name]["leak_rate"], sampled[name]["leaking_sample_share"])
            for name in ("forget", "holdout") if "leak_rate" in sampled.get(name, {})]
    if rows:
        blocks.append(("table", ["attack", "set", "leak rate", "leaking sample share"], rows))
    skipped = [f"{name}: {view['skipped']}" for name, view in attacks.items() if "skipped" in view]
    if skipped:
        blocks.append(("p", "Skipped: " + "; ".join(skipped)))
    return blocks


def to_markdown(blocks: list[Block], relative_to: Path) -> str:
    out = []
    for block in blocks:
        if block[0] == "h":
            out.append("#" * block[1] + " " + block[2])
        elif block[0] == "p":
            out.append(block[1])
        elif block[0] == "table":
            _, columns, rows = block
            out.append("| " + " | ".join(columns) + " |")
            out.append("|" + "|".join(" --- " for _ in columns) + "|")
            out.extend("| " + " | ".join(fmt(x) for x in row) + " |" for row in rows)
        elif block[0] == "img":
            out.append(f"![{block[1]}]({Path(os.path.relpath(block[2], relative_to)).as_posix()})")
        out.append("")
    return "\n".join(out)


def _inline_bold(text: str) -> str:
    parts = html.escape(text).split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts)).replace("`", "")


def to_html(blocks: list[Block]) -> str:
    body = []
    for block in blocks:
        if block[0] == "h":
            body.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif block[0] == "p":
            body.append(f"<p>{_inline_bold(block[1])}</p>")
        elif block[0] == "table":
            _, columns, rows = block
            head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
            cells = "".join(
                "<tr>" + "".join(f"<td>{html.escape(fmt(x))}</td>" for x in row) + "</tr>" for row in rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif block[0] == "img":
            data = base64.b64encode(Path(block[2]).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(block[1])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(block[1])}</figcaption></figure>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px}"
        "td{text-align:right}td:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}"
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>forgetkit audit report</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_readable(report: dict[str, Any], markdown_path: Path, html_path: Path, plot_folder: Path) -> list[Path]:
    """Render plots, Markdown and HTML, each atomically; returns the files written."""
    from forgetkit.artifacts import atomic_file, atomic_folder
    from forgetkit.audit.plots import render_all

    with atomic_folder(plot_folder) as staging:
        made = render_all(report, staging)
        with atomic_file(html_path) as tmp:
            tmp.write_text(to_html(_blocks(report, made)), encoding="utf-8")
    # Markdown links point at the plots' final names, next to the Markdown file.
    final = {name: plot_folder / path.name for name, path in made.items()}
    with atomic_file(markdown_path) as tmp:
        tmp.write_text(to_markdown(_blocks(report, final), markdown_path.parent), encoding="utf-8")
    return [markdown_path, html_path, *final.values()]
