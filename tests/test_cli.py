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


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


@pytest.fixture
def scripted_chat(monkeypatch, tiny_llama_dir):
    """(replies, prompts): the tiny model "writes" each of `replies` in turn, token by token, through the
    real streaming path; `prompts` holds the text of each prompt it was given."""
    import torch
    from transformers import AutoTokenizer

    from tunelab.inference import generation

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)  # byte-level: any reply round-trips
    replies, prompts = [], []

    def scripted_inputs(model, enc):
        def call(input_ids, streamer, **kwargs):
            prompts.append(tokenizer.decode(input_ids[0]))
            streamer.put(input_ids[0])
            for token in tokenizer(replies.pop(0), add_special_tokens=False)["input_ids"]:
                streamer.put(torch.tensor([token]))
            streamer.end()

        return call, dict(enc), enc["input_ids"].shape[1]

    monkeypatch.setattr(generation, "_generation_inputs", scripted_inputs)
    return replies, prompts


def test_chat_with_tools_prints_calls_as_json_lines(scripted_chat, tiny_llama_dir, tmp_path):
    replies, prompts = scripted_chat
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps({"tools": [WEATHER]}))
    replies.append(CALL)
    result = invoke("chat", "--model", tiny_llama_dir, "--tools", tools, "Weather in Oslo?")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ['{"name": "get_weather", "arguments": {"city": "Oslo"}}']
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in prompts[0]


def test_chat_asks_for_each_call_result_and_sends_it_back(scripted_chat, tiny_llama_dir, tmp_path):
    replies, prompts = scripted_chat
    tools = tmp_path / "functions.json"
    tools.write_text(json.dumps([WEATHER["function"]]))  # a legacy `functions` list
    replies += [CALL, "It is -2C in Oslo.", "Bye."]
    result = runner.invoke(
        app,
        ["chat", "--model", str(tiny_llama_dir), "--tools", str(tools)],
        input="Weather in Oslo?\n-2C, snow\nThanks\n",
    )
    assert result.exit_code == 0, result.output
    assert 'model> get_weather({"city": "Oslo"})' in result.output
    assert 'tool get_weather({"city": "Oslo"})> ' in result.output
    assert "model> It is -2C in Oslo." in result.output and "model> Bye." in result.output
    answered = f"<|im_start|>assistant\n{CALL}<|im_end|>\n<|im_start|>user\n<tool_response>\n-2C, snow\n"
    assert answered in prompts[1] and answered in prompts[2]
    assert prompts[1].endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_chat_plain_replies_and_a_bad_tools_file(scripted_chat, tiny_llama_dir, tmp_path):
    replies, prompts = scripted_chat
    replies.append("Hello there.")
    result = invoke("chat", "--model", tiny_llama_dir, "Hi")
    assert (result.exit_code, result.output) == (0, "Hello there.\n")
    assert "<tools>" not in prompts[0]
    bad = tmp_path / "tools.json"
    bad.write_text(json.dumps([{"type": "function", "function": {"name": "get weather"}}]))
    result = invoke("chat", "--model", tiny_llama_dir, "--tools", bad, "Hi")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert str(bad) in result.output and "tools[0].function.name" in result.output
