"""The CLI as users run it: the console script in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path


from forgetkit.artifacts import read_metadata

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


def forgetkit(*args, check=True, env=None):
    result = subprocess.run([str(BIN / "forgetkit"), *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


def forgetkit_here(*args, check=True):
    """The same command in this process: no interpreter start-up (3 s a call), for the many error
    checks; ``forgetkit`` above runs the real console script."""
    from typer.testing import CliRunner

    from forgetkit.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback the user would have seen
    if check and result.exit_code != 0:
        raise AssertionError(result.stderr)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def one_line_error(result, pattern):
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    import re

    assert re.search(pattern, lines[0]), lines[0]


def test_plugins_lists_builtins_and_the_example_plugin():
    out = forgetkit("plugins").stdout
    for name in ("ihl", "ga", "gd", "npo", "kl", "idk", "fila", "lora", "pissa"):
        assert f" {name} " in out
    assert "simnpo" in out and "forgetkit-simnpo" in out


def test_bad_inputs_give_one_line_errors(tiny_models, data_dir, tmp_path):
    llama, gpt2 = tiny_models["llama"], tiny_models["gpt2"]
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    one_line_error(forgetkit("fisher", llama, tmp_path / "bad.jsonl", "--retain", data_dir / "retain_small.jsonl",
                             "-o", tmp_path / "f.st", check=False), r"bad.jsonl:2: invalid JSON")
    (tmp_path / "empty.jsonl").write_text("")
    one_line_error(forgetkit_here("fisher", llama, tmp_path / "empty.jsonl", "--retain", data_dir / "retain_small.jsonl",
                             check=False), r"empty.jsonl: no records")
    one_line_error(forgetkit_here("unlearn", llama, data_dir / "forget.jsonl", "--loss", "nope", check=False),
                   r"unknown loss 'nope' \(installed: .*ihl")
    one_line_error(forgetkit_here("unlearn", llama, data_dir / "forget.jsonl", "--loss-param", "beta", check=False),
                   r"--loss-param 'beta': expected KEY=VALUE")
    one_line_error(forgetkit_here("unlearn", llama, data_dir / "forget.jsonl", "--loss", "npo", "--loss-param", "beta=high",
                             check=False), r"parameter 'beta' expects float")
    for option in ("--relearn-rho", "--sam-rho"):
        one_line_error(forgetkit_here("unlearn", llama, data_dir / "forget.jsonl", "--loss", "ga", option, "-1",
                                      "-o", tmp_path / "refused", check=False), f"{option} must be 0")
        assert not list(tmp_path.glob("refused*"))  # refused before anything is written
    one_line_error(forgetkit_here("audit", tmp_path / "nomodel", "--forget", data_dir / "forget.jsonl", check=False),
                   r"nomodel: not a local folder and could not be fetched")

    # An artifact of the right stage for another model, and one of the wrong stage.
    forgetkit_here("fisher", gpt2, data_dir / "forget.jsonl", "--retain", data_dir / "retain_small.jsonl", "-o", tmp_path / "g.st")
    one_line_error(forgetkit_here("init", llama, "--fisher", tmp_path / "g.st", "-o", tmp_path / "init", check=False),
                   r"g.st: made for base model .*gpt2.* not .*llama")
    forgetkit_here("init", gpt2, "--fisher", tmp_path / "g.st", "-o", tmp_path / "init")
    one_line_error(forgetkit_here("init", gpt2, "--fisher", tmp_path / "init", "-o", tmp_path / "init2", check=False),
                   r"init: is a 'init' artifact, but a fisher artifact is needed")
    one_line_error(forgetkit_here("merge", gpt2, tmp_path / "init", check=False), r"is a 'init' artifact, but a unlearn")
    assert not (tmp_path / "init2").exists()


def test_recipe_forgets_and_plugin_loss_runs(memorised, tmp_path):
    """The quickstart recipe end to end on the memorised model, through the CLI."""
    env = {"FORGETKIT_CACHE": str(memorised.parents[1]), "PATH": f"{BIN}:{os.environ['PATH']}"}
    work = tmp_path / "work"
    result = subprocess.run(["bash", str(ROOT / "recipes" / "quickstart.sh"), str(work)], capture_output=True, text=True,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    report = json.loads((work / "report.json").read_text())["results"]
    base, after = report["base"]["sets"], report["unlearned"]["sets"]

    def drop(split, key):
        b, a = base[split]["summary"][key], after[split]["summary"][key]
        return (b - a) / b

    assert base["forget"]["summary"]["rouge_l"] > 0.95 and base["forget"]["summary"]["el10"] > 0.3  # memorised
    assert drop("forget", "el10") >= 0.8 and drop("forget", "rouge_l") >= 0.8
    assert abs(drop("retain", "rouge_l")) <= 0.1
    # Canary exposure: memorised secrets rank first of 256 (8 bits) before; forget secrets fall
    # toward the never-seen ones' level, retained secrets stay at the top (a model built on another
    # machine once let one retain secret slip to second place: mean 7.97).
    assert base["forget"]["summary"]["canary_exposure"] == 8.0
    assert after["retain"]["summary"]["canary_exposure"] >= 7.5
    assert after["forget"]["summary"]["canary_exposure"] < 5.0
    # Membership inference (forget vs held-out): from certain (1.0) to well below; retain unchanged.
    mia_before, mia_after = report["base"]["mia"], report["unlearned"]["mia"]
    for score in ("loss", "min_k", "min_k_pp"):
        assert mia_before["forget"][score]["auc"] == 1.0 and mia_after["forget"][score]["auc"] < 0.6
        assert mia_after["retain"][score]["auc"] > 0.95
    assert report["base"]["verdict"]["verdict"] == "not forgotten"
    assert report["unlearned"]["verdict"]["verdict"] != "not forgotten"
    int8 = report["unlearned"]["attacks"]["int8"]["sets"]
    assert int8["forget"]["attacked"]["rouge_l"] < 0.2 and int8["retain"]["attacked"]["rouge_l"] > 0.8
    assert (work / "report.html").is_file() and (work / "report.plots" / "mia_roc.png").is_file()
    for stage, artifact in (("fisher", "fisher.safetensors"), ("init", "init"), ("unlearn", "adapter"), ("merge", "merged")):
        assert read_metadata(work / artifact).stage == stage
    # The recipe's last steps: the folder publishing would upload, and the adapter's recorded lineage.
    assert (work / "upload" / "README.md").is_file() and (work / "upload" / "audit" / "report.json").is_file()
    for stage in ("unlearn", "init", "fisher", "audited by", "data forget.jsonl"):
        assert stage in result.stdout

    # A third-party loss from plugins/, through the same CLI.
    model_dir = forgetkit("quickstart", "--prepare-only", "--workdir", work, env=env).stdout.strip()
    forgetkit("unlearn", model_dir, work / "forget.jsonl", "--retain", work / "retain.jsonl", "--loss", "simnpo",
              "--loss-param", "beta=2.5", "--epochs", "1", "--batch-size", "4", "--micro-batch-size", "4",
              "--lr", "2e-3", "-o", work / "simnpo", env=env)
    meta = read_metadata(work / "simnpo")
    assert meta.parameters["loss"] == "simnpo" and "simnpo" in meta.results["final_terms"]


def test_audit_bad_inputs_give_one_line_errors(tiny_models, tokenizer, data_dir, tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    llama = tiny_models["llama"]
    forget, holdout = data_dir / "forget.jsonl", data_dir / "holdout.jsonl"
    small = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    AutoModelForCausalLM.from_config(small).save_pretrained(tmp_path / "mismatch")
    tokenizer.save_pretrained(tmp_path / "mismatch")
    one_line_error(forgetkit("audit", tmp_path / "mismatch", "--forget", forget, check=False),
                   r"model and tokenizer do not match \(the tokenizer has \d+ tokens, the model's embedding 100 rows\)")
    (tmp_path / "empty.jsonl").write_text("\n")
    one_line_error(forgetkit_here("audit", llama, "--forget", forget, "--holdout", tmp_path / "empty.jsonl", check=False),
                   r"empty.jsonl: no records")
    one_line_error(forgetkit_here("audit", llama, "--forget", forget, "--suite", "mia", check=False),
                   r"the mia suite needs a held-out set")
    one_line_error(forgetkit_here("audit", llama, "--forget", forget, "--suite", "tofu", check=False),
                   r"forget.jsonl: the tofu suite needs forget records with 'perturbed_answer'")
    one_line_error(forgetkit_here("audit", llama, "--forget", forget, "--suite", "extraktion", check=False),
                   r"unknown suite 'extraktion'")
    one_line_error(forgetkit_here("audit", llama, "--forget", forget, "--attacks", "jailbreak", check=False),
                   r"unknown attack 'jailbreak'")
    one_line_error(forgetkit_here("audit", llama, "--forget", forget, "--attacks", "relearn", "--relearn-rank", "0",
                                  check=False), r"--relearn-rank 0: the attacker's LoRA rank must be at least 1")
    one_line_error(forgetkit_here("audit", llama, "--forget", forget, "--alpha", "0", check=False),
                   r"--alpha 0.0: a significance level is in \(0, 1\]")
    one_line_error(forgetkit_here("unlearn", llama, forget, "--holdout", holdout, "--target", "holdout",
                                  "--target-auc-band", "0.7", "-o", tmp_path / "never", check=False),
                   r"--target-auc-band 0.7: a band around 0.5 lies in \(0, 0.5\]")
    assert not (tmp_path / "never").exists()
    (tmp_path / "secret.jsonl").write_text('{"question": "q?", "answer": "a", "secret": "123"}\n')
    one_line_error(forgetkit_here("audit", llama, "--forget", tmp_path / "secret.jsonl", check=False),
                   r"secret.jsonl:1: the secret does not occur in the record's answer or text")

    # A reference report made on another forget set is refused, naming both hashes.
    forgetkit_here("audit", llama, "--forget", holdout, "--holdout", forget, "--suite", "mia", "-o", tmp_path / "ref.json")
    one_line_error(forgetkit_here("audit", llama, "--forget", forget, "--holdout", holdout, "--suite", "mia",
                             "--reference-report", tmp_path / "ref.json", check=False),
                   r"ref.json: the reference report was made on a different forget set")
    (tmp_path / "notreport.json").write_text('{"hello": 1}')
    one_line_error(forgetkit_here("audit", llama, "--forget", forget, "--reference-report", tmp_path / "notreport.json",
                             check=False), r"notreport.json: not a forgetkit audit report")
    one_line_error(forgetkit_here("audit", llama, "--forget", forget, "--reference", llama, "--reference-report",
                             tmp_path / "ref.json", check=False), r"either --reference or --reference-report")
    assert not (tmp_path / "report.json").exists()
