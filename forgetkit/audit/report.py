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

from forgetkit.audit.verdict import rounded_results
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
            (c["name"], c["kind"], c["value"], c["rule"], "skipped: " + c["skipped"] if c["skipped"] else ("pass" if c["passed"] else "FAIL"))
            for c in verdict["checks"]
        ]
        blocks.append(("table", ["check", "kind", "value", "threshold", "result"], rows))
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

    attack_rows = []
    for v in variants:
        attacks = results[v].get("attacks") or {}
        if "attacked" in attacks.get("paraphrase", {}):
            a = attacks["paraphrase"]
            attack_rows.append((v, f"paraphrase ({a['paraphrases']})", "forget ROUGE-L", a["unattacked"]["rouge_l"], a["attacked"]["rouge_l"]))
        for key, result in rounded_results(attacks.get("quantize", {})):
            attack_rows.append((v, f"quantize {key}", "forget ROUGE-L", attacks["quantize"]["unattacked"].get("rouge_l"), result["forget"]["rouge_l"]))
        relearned = attacks.get("relearn", {})
        for name in ("forget", "holdout"):
            if name in relearned:
                r = relearned[name]
                attack_rows.append((v, f"relearn {relearned['steps']} steps ({name}, {r['records_used']} used)",
                                    f"{name} rest ROUGE-L", r["unattacked"]["rouge_l"], r["attacked"]["rouge_l"]))
        sampled = attacks.get("sampling", {})
        for name in ("forget", "holdout"):
            if "leak_rate" in sampled.get(name, {}):
                attack_rows.append((v, f"sampling x{sampled['samples']} ({name})", "leak rate", None, sampled[name]["leak_rate"]))
    if attack_rows:
        blocks.append(("h", 2, "Attacks"))
        blocks.append(("table", ["model", "attack", "measure", "without attack", "under attack"], attack_rows))
        if "attacks" in plots:
            blocks.append(("img", "Forget set under attack", plots["attacks"]))
    blocks.append(("p", "Record text, generated answers and secrets are "
                   + ("included in the JSON report (--include-examples)." if not report.get("redacted") else "left out of every report (redacted).")))
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
