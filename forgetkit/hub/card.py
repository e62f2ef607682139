"""The model card of a pushed adapter, following the Hub's conventions: YAML front matter
(base_model, library_name: peft, license, tags, public datasets), then what was forgotten (named and
hashed, never shown), the method, the audit summary with its verdict, and how to load the adapter.

Everything in it comes from metadata and the audit report's numbers; no record text is read here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from forgetkit import __version__
from forgetkit.artifacts import Metadata
from forgetkit.stages.common import fmt

SETS = ("forget", "retain", "holdout")
SET_METRICS = (("rouge_l", "ROUGE-L recall"), ("el10", "EL10"), ("em", "exact memorisation"),
               ("canary_exposure", "canary exposure (bits)"), ("probability", "probability"))
LOKU_BIBTEX = (
    "@inproceedings{cha2025loku,",
    "  title     = {Towards Robust and Parameter-Efficient Knowledge Unlearning for LLMs},",
    "  author    = {Cha, Sungmin and Cho, Sungjun and Hwang, Dasol and Lee, Moontae},",
    "  booktitle = {International Conference on Learning Representations},",
    "  year      = {2025}",
    "}",
)
LLMERASER_BIBTEX = (
    "@article{ding2024llmeraser,",
    "  title   = {Unified Parameter-Efficient Unlearning for {LLMs}},",
    "  author  = {Ding, Chenlu and others},",
    "  journal = {arXiv preprint arXiv:2412.00383},",
    "  year    = {2024}",
    "}",
)
TRAINING_KEYS = ("lr", "epochs", "batch_size", "micro_batch_size", "weight_decay", "max_grad_norm", "seed")


@dataclasses.dataclass
class ForgottenData:
    """How the card names the data that was forgotten: its file name, hash and size, nothing more."""

    role: str
    name: str
    sha256: str
    records: int | None


@dataclasses.dataclass
class CardInputs:
    repo_id: str
    adapter: Metadata
    adapter_sha256: str
    base_model: str | None  # a Hub id; None when the base is only a local folder
    license: str
    forgotten: list[ForgottenData]
    datasets: list[str]  # public Hub datasets the adapter was made from
    report: dict[str, Any] | None
    report_sha256: str | None
    init_scheme: str | None = None  # from the init artifact, when it is still at hand


def _table(columns: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _method(meta: Metadata, init_scheme: str | None) -> tuple[list[str], list[str]]:
    """(tags, Markdown lines) describing how the adapter was made."""
    p = meta.parameters
    if p.get("method") == "llmeraser":
        lines = [f"- Method: LLMEraser (influence-function {p.get('edit')} edit of a fine-tuned LoRA adapter)",
                 f"- Solver: {p.get('solver')} on the {p.get('curvature')} curvature, damping {fmt(p.get('damping'))}",
                 f"- LoRA rank {p.get('rank')}, alpha {fmt(p.get('lora_alpha'))}"]
        return ["llmeraser"], lines
    init = meta.inputs.get("init")
    scheme = init_scheme or (None if init else "lora")
    train = p.get("train") or {}
    lines = [f"- Loss: `{p.get('loss')}`" + (f" with {p.get('loss_params')}" if p.get("loss_params") else ""),
             "- Initialisation: " + (f"{scheme or 'an init artifact'} (init sha256 {init['sha256'][:12]})" if init else "plain LoRA"),
             f"- LoRA rank {p.get('rank')}, alpha {fmt(p.get('lora_alpha'))}, targets `{p.get('targets')}`",
             "- Training: " + ", ".join(f"{k} {fmt(train[k])}" for k in TRAINING_KEYS if k in train)]
    results = meta.results or {}
    if results.get("epochs_run") is not None:
        lines.append(f"- Ran {results['epochs_run']} epochs ({results.get('steps')} steps)"
                     + (", stopped once forgotten" if results.get("stopped_early") else ""))
    return [t for t in (p.get("loss"), scheme) if t], lines


def _audit_section(report: dict[str, Any] | None, report_sha: str | None) -> list[str]:
    if report is None:
        return ["No audit report was published with this adapter (pushed with `--no-report`)."]
    results = report["results"]
    audited = "unlearned" if "unlearned" in results else "model"
    variants = [v for v in ("base", audited, "reference") if v in results]
    out: list[str] = []
    verdict = results[audited].get("verdict")
    if verdict:
        out.append(f"**Verdict: {verdict['verdict'].upper()}** (rule: {verdict['rule']}).")
        out.append("")
    rows = []
    for set_name in SETS:
        for key, label in SET_METRICS:
            values = [results[v]["sets"].get(set_name, {}).get("summary", {}).get(key) for v in variants]
            if any(x is not None for x in values):
                rows.append([f"{set_name} {label}"] + values)
    mia = [[f"MIA AUC {score} (forget vs held-out)"] + [results[v].get("mia", {}).get("forget", {}).get(score, {}).get("auc")
                                                       for v in variants] for score in ("loss", "min_k_pp")]
    rows += [row for row in mia if any(x is not None for x in row[1:])]
    tofu = [["Forget Quality (KS p-value)"] + [results[v].get("tofu", {}).get("forget_quality") for v in variants],
            ["Model Utility"] + [(results[v].get("tofu", {}).get("model_utility") or {}).get("value") for v in variants]]
    rows += [row for row in tofu if any(x is not None for x in row[1:])]
    out.append(_table(["metric"] + variants, rows))
    if verdict:
        out += ["", "Checks behind the verdict:", "",
                _table(["check", "value", "threshold", "p (gap is noise)", "result"],
                       [[c["name"], c["value"], c["rule"], c.get("p_value"),
                         ("skipped: " + c["skipped"]) if c["skipped"] else ("pass" if c["passed"] else "FAIL")]
                        for c in verdict["checks"]])]
        noise = verdict.get("within_noise") or []
        if noise:
            out += ["", f"{len(noise)} check(s) passed although beyond the margin, because the gap is within sampling "
                    f"noise at this set size: {', '.join(noise)}."]
    attacks = results[audited].get("attacks") or {}
    if attacks:
        out += ["", f"Attacks run: {', '.join(attacks)} (figures in `audit/report.md`)."]
    out += ["", f"Full report: `audit/report.json` (sha256 {str(report_sha)[:16]}), `audit/report.md`, "
            "`audit/report.html`. Reports hold numbers only; no record text."]
    return out


def build_card(inputs: CardInputs) -> ModelCard:
    meta = inputs.adapter
    method_tags, method_lines = _method(meta, inputs.init_scheme)
    data = ModelCardData(
        base_model=inputs.base_model,
        library_name="peft",
        license=inputs.license,
        tags=list(dict.fromkeys(["unlearning", "forgetkit", "lora", "peft", *method_tags])),
        datasets=inputs.datasets or None,
        pipeline_tag="text-generation",
    )
    # A base known only as a local folder is not named: its path is the user's business, not the card's.
    base = inputs.base_model or "BASE_MODEL"
    about_base = (f"`{base}`" if inputs.base_model else
                  f"the base model with fingerprint `{meta.base_model.fingerprint}` (its Hub id was not given)")
    name = inputs.repo_id.split("/")[-1]
    forgotten = [[f.role, f"`{f.name}`", f.sha256[:16], f.records] for f in inputs.forgotten]
    body = [
        f"# {name}",
        "",
        f"A LoRA adapter for {about_base} that makes the model forget specific data, made with "
        f"[forgetkit](https://pypi.org/project/forgetkit/) {__version__}.",
        "",
        "## What was forgotten",
        "",
        "The data is named by file and sha256 only; its contents are not published.",
        "",
        _table(["role", "file", "sha256 (first 16)", "records"], forgotten) if forgotten else "(not recorded)",
        "",
        "## Method",
        "",
        *method_lines,
        f"- Base model fingerprint (sha256 of config and weights, 16 hex): `{meta.base_model.fingerprint}`",
        f"- Adapter folder sha256 at audit time: `{inputs.adapter_sha256[:16]}`",
        "",
        "## Audit",
        "",
        *_audit_section(inputs.report, inputs.report_sha256),
        "",
        "## Usage",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{base}")',
        f'model = PeftModel.from_pretrained(base, "{inputs.repo_id}")',
        "model = model.merge_and_unload()  # optional: a plain transformers model",
        "```",
        "",
        "## Citation",
        "",
        "```bibtex",
        *(LLMERASER_BIBTEX if meta.parameters.get("method") == "llmeraser" else LOKU_BIBTEX),
        "```",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")
