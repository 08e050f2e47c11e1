"""The CLI end to end on a tiny model: real output, exit codes, and clear errors instead of tracebacks."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import SHARED_DATA, copy_task_rows, write_jsonl
from tunelab.cli import app

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_validate_exit_codes():
    bad = invoke("data", "validate", FIXTURES / "bad_chat.jsonl", "--model", "none")
    assert bad.exit_code == 1
    for line, code in [(3, "invalid_json"), (8, "unrecognized_role"), (13, "no_trainable_tokens")]:
        assert any(str(line) in row and code in row for row in bad.output.splitlines()), code
    good = invoke("data", "validate", FIXTURES / "good_chat.jsonl", "--model", "none")
    assert good.exit_code == 0, good.output


def test_missing_file_is_a_clear_error_not_a_traceback(tmp_path):
    result = invoke(
        "train", "--model", "none-such-folder/", "--data", tmp_path / "nope.jsonl", "--out", tmp_path / "o"
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "error" in result.output.lower()


def test_train_yaml_then_generate(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "copy.jsonl", copy_task_rows(32))
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_llama_dir}\nlr: 0.01\nbatch_size: 4\n")
    out = tmp_path / "run"
    result = invoke(
        "train", "--config", config, "--data", data, "--out", out, "--max-steps", 6, "--save-every", 3
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "summary.json").read_text())
    assert saved["steps"] == 6
    import yaml

    resolved = yaml.safe_load((out / "tunelab.yaml").read_text())
    assert (resolved["lr"], resolved["batch_size"], resolved["max_steps"]) == (0.01, 4, 6)

    again = invoke("train", "--config", config, "--data", data, "--out", out, "--max-steps", 6)
    assert again.exit_code == 1 and "finished run" in again.output

    preds = tmp_path / "preds.jsonl"
    result = invoke(
        "generate",
        "--model",
        tiny_llama_dir,
        "--adapter",
        out,
        "--data",
        data,
        "--out",
        preds,
        "--max-new-tokens",
        3,
    )
    assert result.exit_code == 0, result.output
    assert len(preds.read_text().splitlines()) == 32


def test_split_is_deterministic(tmp_path):
    src = write_jsonl(tmp_path / "all.jsonl", copy_task_rows(50))
    for name in ("a", "b"):
        assert invoke("data", "split", src, "--out", tmp_path / name, "--seed", 7).exit_code == 0
    assert (tmp_path / "a" / "test.jsonl").read_text() == (tmp_path / "b" / "test.jsonl").read_text()


@pytest.mark.embedded
def test_train_lora_on_sst2_with_the_embedded_model(tmp_path):
    """A few real steps on SST-2 rows as chat; the adapter loads with PEFT's own loader."""
    sst2 = SHARED_DATA / "sst2" / "train.jsonl"
    if not sst2.exists():
        pytest.skip("../shared/data/sst2 is not available")
    labels = {0: "negative", 1: "positive"}
    rows = [json.loads(line) for line in sst2.read_text().splitlines()[:24]]
    data = write_jsonl(
        tmp_path / "sst2.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": r["text"]},
                    {"role": "assistant", "content": labels[r["label"]]},
                ]
            }
            for r in rows
        ],
    )
    result = invoke(
        "train",
        "--model",
        "default",
        "--data",
        data,
        "--method",
        "lora",
        "--max-steps",
        3,
        "--out",
        tmp_path / "a",
    )
    assert result.exit_code == 0, result.output

    from peft import PeftModel

    from tunelab.models import load_model

    base, _ = load_model("default")
    model = PeftModel.from_pretrained(base, tmp_path / "a")
    assert any("lora_A" in name for name, _ in model.named_parameters())
