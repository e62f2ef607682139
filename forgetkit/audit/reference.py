"""Reading the reference statistics out of an earlier audit report (``--reference-report``), so a
retain-only model is audited once and reused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from forgetkit.errors import ForgetkitError

REPORT_KIND = "forgetkit-audit-report"


def read_report(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ForgetkitError(f"{path}: no such report")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ForgetkitError(f"{path}:{exc.lineno}: not a JSON report ({exc.msg})") from None
    if not isinstance(report, dict) or report.get("kind") != REPORT_KIND:
        raise ForgetkitError(f"{path}: not a forgetkit audit report")
    return report


def reference_from_report(path: str | Path, forget_sha256: str) -> dict[str, Any]:
    """Truth ratios and MIA AUCs of the report's plain model (or of its own reference model),
    after checking the report was made on the same forget set."""
    report = read_report(path)
    made_on = report.get("inputs", {}).get("forget", {}).get("sha256")
    if forget_sha256 and made_on != forget_sha256:
        raise ForgetkitError(
            f"{path}: the reference report was made on a different forget set "
            f"(sha256 {str(made_on)[:12]}..., this audit's is {forget_sha256[:12]}...)"
        )
    results = report.get("results", {})
    name = "model" if "model" in results else "reference" if "reference" in results else None
    if name is None:
        raise ForgetkitError(f"{path}: the report audits an adapter; use a report of the reference model alone")
    stats = results[name].get("reference_stats") or {}
    if not stats.get("truth_ratio") and not stats.get("mia_auc"):
        raise ForgetkitError(f"{path}: the report has neither truth ratios (suite tofu) nor MIA AUCs (suite mia)")
    # The model the statistics describe: the report's own model, or the reference model it was given.
    if name == "reference":
        model = ((report.get("reference") or {}).get("source") or {}).get("model")
    else:
        model = report.get("base_model")
    return {**stats, "source": {"report": str(path), "variant": name, "model": model}}
