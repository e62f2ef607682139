"""``forgetkit push``: publish an unlearning adapter on the Hugging Face Hub with its evidence.

The folder uploaded (or written by ``--dry-run DIR``) is::

    adapter_config.json, adapter_model.safetensors   the standard PEFT adapter
    training_log.json                                 the loss curve, when the adapter has one
    forgetkit.json                                    our metadata, local paths reduced to file names
    README.md                                         the model card
    audit/report.json, report.md, report.html, report.plots/   the audit, re-rendered from the same numbers

Before anything leaves the machine: the report must be the audit of this very adapter (same folder
hash) and redacted, and no file may hold forget-set text (``forgetkit.hub.leaks``). The token comes
from huggingface_hub's usual places and is never printed or written; error messages are scrubbed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from forgetkit import registry
from forgetkit.adapters import ADAPTER_FILES
from forgetkit.artifacts import METADATA_FILE, Metadata, atomic_folder, input_record, read_metadata, sha256_file, write_json
from forgetkit.audit.reference import read_report
from forgetkit.audit.report import write_readable
from forgetkit.console import console
from forgetkit.data import Record, load_records
from forgetkit.errors import ForgetkitError
from forgetkit.hub import leaks
from forgetkit.hub.card import CardInputs, ForgottenData, build_card
from forgetkit.hub.resolve import hub_error, split_hub_id
from forgetkit.stages.common import table

FORGET_ROLES = ("forget", "remove", "correct", "modify")  # inputs whose records were forgotten or edited away
LEFT_OUT = ("README.md", METADATA_FILE)  # rewritten for publication rather than copied
REPORT_FOLDER = "audit"


@dataclasses.dataclass
class PushParams:
    repo_id: str
    report: str | None = None
    no_report: bool = False
    private: bool = False
    revision: str | None = None
    dry_run: Path | None = None
    forget: str | None = None  # the forget set, when it is no longer where the adapter's metadata says
    license: str = "other"
    base_model: str | None = None  # Hub id of the base, when the adapter was made from a local folder
    message: str | None = None


# --------------------------------------------------------------------------- checks


def check_adapter(adapter: Path) -> Metadata:
    if not adapter.is_dir():
        raise ForgetkitError(f"{adapter}: not an adapter folder")
    meta = read_metadata(adapter)
    if meta.stage != "unlearn":
        raise ForgetkitError(f"{adapter}: is a '{meta.stage}' artifact; push takes an adapter from 'forgetkit unlearn'")
    for name in ADAPTER_FILES:
        if not (adapter / name).is_file():
            raise ForgetkitError(f"{adapter}: missing {name}; not a complete PEFT adapter")
    return meta


def check_report(report_path: str, adapter: Path, meta: Metadata) -> dict[str, Any]:
    report = read_report(report_path)
    audited = report.get("adapter") or {}
    if not audited:
        raise ForgetkitError(f"{report_path}: audits a model without an adapter; audit this one with "
                             f"forgetkit audit --adapter {adapter}")
    here = input_record(adapter)["sha256"]
    if audited.get("sha256") != here:
        raise ForgetkitError(f"{report_path}: made for another adapter (sha256 {str(audited.get('sha256'))[:12]}, "
                             f"this one is {here[:12]}), or the adapter changed since its audit; audit it again")
    if report.get("base_model", {}).get("fingerprint") != meta.base_model.fingerprint:
        raise ForgetkitError(f"{report_path}: made on another base model than {adapter}")
    if not report.get("redacted", True):
        raise ForgetkitError(f"{report_path}: made with --include-examples, so it holds record text; "
                             "audit again without it to publish")
    return report


def _load_checked(role: str, record: dict[str, str], given: str | None, adapter: Path) -> list[Record]:
    """Records of one forget input, refusing a file that is not the one the adapter was made from."""
    path = given or record.get("path", "")
    recorded_sha = record.get("sha256", "")
    if not given and not path.startswith("hf:") and not Path(path).is_file():
        raise ForgetkitError(f"{adapter}: its {role} set {path} is gone, so the upload cannot be checked for "
                             "forget-set text; give the set with --forget FILE")
    if Path(path).is_file() and recorded_sha:
        actual = input_record(path)["sha256"]
        if actual != recorded_sha:
            raise ForgetkitError(f"{path}: not the {role} set {adapter} was made from (sha256 {actual[:12]}, "
                                 f"recorded {recorded_sha[:12]})")
    return load_records(path)


def forget_records(meta: Metadata, adapter: Path, given: str | None) -> tuple[list[Record], list[ForgottenData]]:
    """Every record whose text must not be published, and how the card names each set."""
    roles = {role: record for role, record in meta.inputs.items() if role in FORGET_ROLES}
    if not roles:
        if given is None:
            raise ForgetkitError(f"{adapter}: its metadata names no forget set; give it with --forget FILE")
        roles = {"forget": {"path": given, "sha256": ""}}
    records: list[Record] = []
    named: list[ForgottenData] = []
    for index, (role, record) in enumerate(sorted(roles.items())):
        loaded = _load_checked(role, record, given if index == 0 else None, adapter)
        records += loaded
        named.append(ForgottenData(role, Path(record.get("path", "")).name, record.get("sha256", ""), len(loaded)))
    train = meta.inputs.get("train")
    if meta.parameters.get("method") == "llmeraser" and train and Path(train.get("path", "")).is_file():
        # An edit names records of D; their original answers are in D itself.
        questions = {r.get("original_question") or r.get("question") for r in records}
        records += [r for r in load_records(train["path"]) if r.get("question") in questions]
    return records, named


# --------------------------------------------------------------------------- the folder


PATH_KEYS = ("path", "report")  # keys whose string values name local files or folders


def publishable(value: Any, base_id: str | None, key: str | None = None) -> Any:
    """A copy of metadata or a report with local paths reduced to file names and the base model named
    by its Hub id: a user's directory layout is nobody else's business."""
    if isinstance(value, dict):
        out = {k: publishable(v, base_id, k) for k, v in value.items()}
        if "model_id" in out and "fingerprint" in out:
            out["model_id"] = base_id or Path(str(value["model_id"])).name
        return out
    if isinstance(value, list):
        return [publishable(v, base_id) for v in value]
    if isinstance(value, str) and not value.startswith("hf:") and (
        (key in PATH_KEYS and ("/" in value or "\\" in value))
        or value.startswith(("/", "~"))
        or (("/" in value) and Path(value).exists())
    ):
        return Path(value).name
    return value


def base_hub_id(meta: Metadata, given: str | None) -> str | None:
    if given:
        return given
    recorded = meta.base_model.model_id
    return recorded if split_hub_id(recorded) and not Path(recorded).exists() else None


def stage_folder(folder: Path, adapter: Path, meta: Metadata, report: dict[str, Any] | None,
                 params: PushParams, forgotten: list[ForgottenData]) -> None:
    base_id = base_hub_id(meta, params.base_model)
    for path in sorted(adapter.iterdir()):
        if path.is_file() and path.name not in LEFT_OUT:
            shutil.copy2(path, folder / path.name)
    # peft records the base as it was loaded, a local path here; name it as others will load it.
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_id or Path(str(config.get("base_model_name_or_path") or "")).name or None
    write_json(folder / "adapter_config.json", config)
    write_json(folder / METADATA_FILE, publishable(dataclasses.asdict(meta), base_id))
    report_sha = None
    if report is not None:
        public = publishable(report, base_id)
        audit = folder / REPORT_FOLDER
        audit.mkdir()
        write_json(audit / "report.json", public)
        write_readable(public, audit / "report.md", audit / "report.html", audit / "report.plots")
        report_sha = sha256_file(audit / "report.json")
    init = meta.inputs.get("init", {}).get("path")
    init_scheme = None
    if init and Path(init).is_dir():
        try:
            init_scheme = read_metadata(init).parameters.get("scheme")
        except ForgetkitError:
            pass
    datasets = sorted({r["path"][3:].split(":")[0] for r in meta.inputs.values() if str(r.get("path", "")).startswith("hf:")})
    card = build_card(CardInputs(
        repo_id=params.repo_id, adapter=meta, adapter_sha256=input_record(adapter)["sha256"], base_model=base_id,
        license=params.license, forgotten=forgotten, datasets=datasets, report=report, report_sha256=report_sha,
        init_scheme=init_scheme,
    ))
    card.save(folder / "README.md")


# --------------------------------------------------------------------------- upload


def _scrub(message: str) -> str:
    from huggingface_hub import get_token

    token = get_token()
    return message.replace(token, "***") if token else message


def require_token() -> None:
    from huggingface_hub import get_token

    if get_token() is None:
        raise ForgetkitError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login`")


def upload(folder: Path, params: PushParams) -> dict[str, Any]:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()  # run_push checked the token first
    try:
        api.create_repo(params.repo_id, private=params.private or None, exist_ok=True, repo_type="model")
        if params.revision and params.revision != "main":
            api.create_branch(params.repo_id, branch=params.revision, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
                      for p in sorted(folder.rglob("*")) if p.is_file()]
        commit = api.create_commit(params.repo_id, operations=operations, revision=params.revision,
                                   commit_message=params.message or "forgetkit push: unlearning adapter, audit and card")
    except ForgetkitError:
        raise
    except Exception as exc:  # huggingface_hub's HTTP errors, connection errors, invalid card metadata
        raise ForgetkitError(f"{params.repo_id}: push failed: {_scrub(hub_error(exc))}") from None
    return {"repo_id": params.repo_id, "revision": params.revision or "main", "commit": commit.oid,
            "url": commit.commit_url, "private": params.private}


def _record_push(adapter: Path, report_path: str | None, push: dict[str, Any]) -> None:
    store = registry.open_store(required=False)
    if store is None:
        return
    try:
        for path in filter(None, (adapter, report_path)):
            entry = store.add(registry.describe(path))
            store.add_push(entry.id, push)
    except ForgetkitError as exc:
        raise ForgetkitError(f"pushed to {push['url']}, but could not record the push: {exc}") from None


def run_push(adapter: str | Path, params: PushParams) -> dict[str, Any]:
    adapter = Path(adapter)
    if split_hub_id(params.repo_id) is None:
        raise ForgetkitError(f"--repo-id '{params.repo_id}': expected OWNER/NAME")
    if params.report and params.no_report:
        raise ForgetkitError("give either --report or --no-report, not both")
    if params.dry_run is None:
        require_token()  # before the folder is built and scanned: without a token there is nothing to do
    meta = check_adapter(adapter)
    if base_hub_id(meta, params.base_model) is None:
        console.print(f"[yellow]note[/]: the base model {meta.base_model.model_id} is a local folder, so the card "
                      "cannot name it; give its Hub id with --base-model")
    if params.report is None and not params.no_report:
        raise ForgetkitError(f"{adapter}: no audit report given; run forgetkit audit --adapter {adapter} and pass "
                             "--report report.json (or --no-report to publish without evidence)")
    report = check_report(params.report, adapter, meta) if params.report else None
    records, forgotten = forget_records(meta, adapter, params.forget)
    targets = leaks.needles(records)
    if params.dry_run is None:
        registry.ensure_ready()

    def build(folder: Path) -> list[Path]:
        stage_folder(folder, adapter, meta, report, params, forgotten)
        found = leaks.scan(folder, targets)
        if found:
            where = "; ".join(f"{f.file} holds '{f.field}' of {f.source}" for f in found[:5])
            raise ForgetkitError(f"refusing to publish forget-set text: {where}" + (" ..." if len(found) > 5 else ""))
        return sorted(p for p in folder.rglob("*") if p.is_file())

    if params.dry_run is not None:
        with atomic_folder(params.dry_run) as staging:
            files = [params.dry_run / p.relative_to(staging) for p in build(staging)]
        result = {"dry_run": str(params.dry_run), "files": [str(p.relative_to(params.dry_run)) for p in files]}
        _print_files(params.dry_run, files, f"would push to {params.repo_id} (dry run; nothing sent)")
        return result
    with tempfile.TemporaryDirectory(prefix="forgetkit-push-") as scratch:
        folder = Path(scratch)
        files = build(folder)
        _print_files(folder, files, f"pushing to {params.repo_id}")
        push = upload(folder, params)
    _record_push(adapter, params.report, push)
    console.print(f"[green]pushed[/] {push['url']}")
    return {**push, "files": [str(p.relative_to(folder)) for p in files]}


def _print_files(folder: Path, files: list[Path], title: str) -> None:
    rows = [(str(p.relative_to(folder)), p.stat().st_size, sha256_file(p)[:12]) for p in files]
    console.print(table(title, ["file", "bytes", "sha256"], rows))
