"""`tunelab export` on tiny models: merged weights equal the adapter, GGUF round trips through llama.cpp's
converter and transformers' GGUF loader, the Ollama TEMPLATE renders as the chat template does (in Go's
own text/template), tool conversations included, heads load in AutoModelForSequenceClassification,
unmergeable runs are refused.

GGUF tests build the tiny model with the embedded model's tokenizer: llama.cpp's converter only accepts
tokenizers it recognises. The converter comes from PyPI the first time (cached afterwards). Their run
trains on some function-calling examples too, so every format is checked to carry the tool template.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import WEATHER, call, copy_task_rows, write_jsonl
from tiny import make_model_dir
from tunelab import TrainConfig, load_for_inference, train
from tunelab.cli import app
from tunelab.data.tokenize import render_chat
from tunelab.data.tools import PROLOGUE_MARK, template_message
from tunelab.export import ExportConfig, ExportError, export
from tunelab.export.ollama import chat_shape, go_template, read_template
from tunelab.methods import REGISTRY

GO_RENDERER = Path(__file__).parent / "gotemplate"
runner = CliRunner()
# A function-calling conversation: text with parallel calls, their answers, a call with no text and its
# answer last (no record ends so; training takes it without its answer).
TOOL_MESSAGES = [
    {"role": "system", "content": "Copy."},
    {"role": "user", "content": "Weather in Paris and Lyon?"},
    {"role": "assistant", "content": "Checking.", "tool_calls": [call("c1", "Paris"), call("c2", "Lyon")]},
    {"role": "tool", "tool_call_id": "c1", "content": "18C"},
    {"role": "tool", "tool_call_id": "c2", "content": "15C"},
    {"role": "assistant", "content": "Paris: 18C; Lyon: 15C."},
    {"role": "user", "content": "And {{ Oslo }}?"},
    {"role": "assistant", "tool_calls": [call("c3", "Oslo")]},
    {"role": "tool", "tool_call_id": "c3", "content": "-2C"},
]
TOOL_CHAT = [template_message(m) for m in TOOL_MESSAGES]  # as chat templates take it


def copy_rows() -> list[dict]:
    return [
        {"messages": [{"role": "system", "content": "Copy."}, *r["messages"]]} for r in copy_task_rows(16)
    ]


def train_run(base: Path, out: Path, method: str = "lora", steps: int = 4, rows=None, **options) -> Path:
    rows = rows or copy_rows()
    data = write_jsonl(out.parent / f"{out.name}.jsonl", rows)
    config = TrainConfig.from_sources(model=str(base), data=str(data), out=str(out), method=method,
                                      max_steps=steps, lr=2e-2, batch_size=4, **options)  # fmt: skip
    train(config)
    return out


@pytest.fixture(scope="module")
def smol_base(tmp_path_factory):
    from tunelab.models import load_tokenizer

    return make_model_dir(tmp_path_factory.mktemp("smol-tiny"), "llama", tokenizer=load_tokenizer("default"))


@pytest.fixture(scope="module")
def smol_lora(smol_base, tmp_path_factory):
    tools = {"tools": [WEATHER], "messages": TOOL_MESSAGES[:-1]}  # so the run saves the tool template
    return train_run(smol_base, tmp_path_factory.mktemp("runs") / "lora", rows=[*copy_rows(), tools])


def prompts(tokenizer) -> torch.Tensor:
    texts = [tokenizer.apply_chat_template(r["messages"][:1], tokenize=False, add_generation_prompt=True)
             for r in copy_task_rows(4)]  # fmt: skip
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def logits(model, enc) -> torch.Tensor:
    with torch.no_grad():
        return model(**enc).logits[:, -1].float()  # (B, vocab): the next token after each prompt


@pytest.mark.parametrize(
    "method,options",
    [("lora", {}), ("lora", {"dora": True}), ("ia3", {}), ("selective", {"norms_only": True})],
)
def test_hf_merged_logits_equal_the_adapter(tiny_llama_dir, tmp_path, method, options):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = train_run(tiny_llama_dir, tmp_path / "run", method, **options)
    model_spec, adapter = (str(run), None) if method == "selective" else (str(tiny_llama_dir), str(run))
    tuned, tokenizer = load_for_inference(model_spec, adapter)
    result = export(ExportConfig(out=str(tmp_path / "hf"), model=model_spec, adapter=adapter))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    enc = prompts(tokenizer)
    assert (logits(merged, enc) - logits(tuned, enc)).abs().max() < 1e-4
    assert "model.safetensors" in result.files and (tmp_path / "hf" / "README.md").is_file()
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").chat_template == tokenizer.chat_template
    assert tokenizer.eos_token_id in merged.generation_config.eos_token_id
    assert json.loads((tmp_path / "hf" / "export.json").read_text())["method"] == method


def test_hf_export_renders_tool_conversations_as_training_did(smol_base, smol_lora, tmp_path):
    from transformers import AutoTokenizer

    export(ExportConfig(out=str(tmp_path / "hf"), model=str(smol_base), adapter=str(smol_lora)))
    run, exported = AutoTokenizer.from_pretrained(smol_lora), AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert exported.chat_template.startswith(PROLOGUE_MARK)
    for messages in (TOOL_CHAT, TOOL_CHAT[1:]):
        # what any user of the folder renders, with no tunelab: transformers' own call
        rendered = exported.apply_chat_template(messages, tools=[WEATHER], tokenize=False)
        assert rendered == render_chat(run, messages, [WEATHER])


def test_gguf_f32_round_trip_answers_like_the_adapter(smol_base, smol_lora, tmp_path):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    tuned, tokenizer = load_for_inference(str(smol_base), str(smol_lora))
    result = export(ExportConfig(out=str(tmp_path / "g"), model=str(smol_base), adapter=str(smol_lora),
                                 format="gguf", quant="f32"))  # fmt: skip
    name = "g-f32.gguf"
    assert name in result.files
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "g", gguf_file=name, dtype=torch.float32)
    enc = prompts(tokenizer)
    assert (logits(back, enc) - logits(tuned, enc)).abs().max() < 1e-4
    fields = GGUFReader(tmp_path / "g" / name).fields
    text = fields["tokenizer.chat_template"]
    assert bytes(text.parts[text.data[0]]).decode() == tokenizer.chat_template  # the template travels,
    assert tokenizer.chat_template.startswith(PROLOGUE_MARK)  # with its tool prologue
    eos = fields["tokenizer.ggml.eos_token_id"]
    assert int(eos.parts[eos.data[0]][0]) == tokenizer.eos_token_id  # and the end-of-turn stop token


def go_render(template: str, messages: list[dict], tmp_path: Path, tools: list | None = None) -> str:
    (tmp_path / "t.tmpl").write_text(template)
    (tmp_path / "m.json").write_text(json.dumps({"messages": messages, "tools": tools}))
    command = ["go", "run", ".", str(tmp_path / "t.tmpl"), str(tmp_path / "m.json")]
    return subprocess.run(command, cwd=GO_RENDERER, capture_output=True, text=True, check=True).stdout


def test_ollama_export_q8_0_and_its_template_renders_like_jinja(smol_base, smol_lora, tmp_path):
    from transformers import AutoModelForCausalLM

    result = export(ExportConfig(out=str(tmp_path / "o"), model=str(smol_base), adapter=str(smol_lora),
                                 format="ollama"))  # fmt: skip
    assert set(result.files) == {"o-q8_0.gguf", "Modelfile", "README.md"}
    assert result.command.startswith("ollama create o -f ")
    modelfile = (tmp_path / "o" / "Modelfile").read_text()
    assert "FROM ./o-q8_0.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """Copy."""' in modelfile  # every training example had this system prompt

    tuned, tokenizer = load_for_inference(str(smol_base), str(smol_lora))
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "o", gguf_file="o-q8_0.gguf", dtype=torch.float32)
    enc = prompts(tokenizer)
    expected, got = logits(tuned, enc), logits(back, enc)
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()  # 8-bit weights: close, not equal

    if shutil.which("go") is None:
        pytest.skip("Go is not installed (Debian: golang-go); it renders the TEMPLATE as Ollama does")
    two_turns = [
        {"role": "system", "content": "Copy."},
        {"role": "user", "content": "say alice"},
        {"role": "assistant", "content": "alice"},
        {"role": "user", "content": "say {{ bob }}"},
    ]
    template = read_template(tmp_path / "o" / "Modelfile")
    for messages in (two_turns, two_turns[1:]):
        jinja = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert go_render(template, messages, tmp_path) == jinja

    # Tool conversations, with and without a system message and tools. Ollama prints a tool's function and
    # a call's arguments compactly (Go's json.Marshal), the prologue's tojson with spaces: that JSON is
    # compacted in the Jinja rendering before comparing, nothing else.
    spaced = [
        WEATHER["function"],
        *(c["function"]["arguments"] for m in TOOL_CHAT for c in m.get("tool_calls", [])),
    ]
    for messages, tools in [(TOOL_CHAT, [WEATHER]), (TOOL_CHAT[1:], [WEATHER]), (TOOL_CHAT, None)]:
        jinja = tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=True
        )
        for value in spaced:
            jinja = jinja.replace(json.dumps(value), json.dumps(value, separators=(",", ":")))
        assert go_render(template, messages, tmp_path, tools) == jinja
    # Ollama reads a reply as calls from the text that the template's first `if` on .ToolCalls starts with
    tag = re.search(r"\{\{ if [^}]*\.ToolCalls[^}]*\}\}(.*?)\{\{", template, re.DOTALL)[1]
    assert tag.strip() == "<tool_call>"


def test_a_template_that_is_not_a_sequence_of_turns_is_refused(tiny_tokenizer):
    assert "{{ .Content }}" in go_template(chat_shape(tiny_tokenizer))
    from tiny import make_tokenizer

    reversed_turns = make_tokenizer()  # its own copy: the session's tokenizer stays as it is
    reversed_turns.chat_template = "{% for m in messages|reverse %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ExportError, match="TEMPLATE by hand"):
        chat_shape(reversed_turns)


def test_gguf_lora_writes_the_adapter_and_its_base(smol_base, smol_lora, tmp_path):
    from gguf import GGUFReader

    result = export(ExportConfig(out=str(tmp_path / "l"), model=str(smol_base), adapter=str(smol_lora),
                                 format="gguf-lora", quant="f32"))  # fmt: skip
    assert {"l-lora-f32.gguf", "l-base-f32.gguf"} <= set(result.files)
    lora = GGUFReader(tmp_path / "l" / "l-lora-f32.gguf")
    kind = lora.fields["general.type"]
    assert bytes(kind.parts[kind.data[0]]).decode() == "adapter"
    assert any(t.name.endswith("lora_a") for t in lora.tensors)


def test_head_exports_as_a_sequence_classifier_with_the_same_predictions(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    rows = [{"text": f"the film was {'great wonderful' if i % 2 else 'bad awful'} {i}", "label": i % 2}
            for i in range(32)]  # fmt: skip
    data = write_jsonl(tmp_path / "cls.jsonl", rows)
    head = train_run(
        tiny_llama_dir, tmp_path / "head", "head", steps=10, rows=rows, labels="negative,positive"
    )
    preds = tmp_path / "preds.jsonl"
    predicted = runner.invoke(app, ["predict", "--model", str(tiny_llama_dir), "--adapter", str(head),
                                    "--data", str(data), "--out", str(preds)])  # fmt: skip
    assert predicted.exit_code == 0, predicted.output
    exported = runner.invoke(app, ["export", "--model", str(tiny_llama_dir), "--adapter", str(head),
                                   "--out", str(tmp_path / "cls")])  # fmt: skip
    assert exported.exit_code == 0, exported.output

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cls")
    assert model.config.id2label == {0: "negative", 1: "positive"}
    _, tokenizer = load_for_inference(str(tiny_llama_dir), str(head))
    ours = [json.loads(line)["prediction"] for line in preds.read_text().splitlines()]
    theirs = []
    for row in rows:
        messages = [{"role": "user", "content": row["text"]}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            theirs.append(model.config.id2label[int(model(**ids).logits.argmax(-1))])
    assert theirs == ours and len(set(ours)) == 2


def test_unmergeable_methods_say_why():
    refused = {name for name, method in REGISTRY.items() if not method.mergeable}
    assert refused == {"prompt-tuning", "prefix-tuning", "adapter"}
    assert all(REGISTRY[name].not_mergeable for name in refused)


def test_prompt_tuning_export_fails_cleanly_and_writes_nothing(tiny_llama_dir, tmp_path):
    run = train_run(tiny_llama_dir, tmp_path / "pt", "prompt-tuning", steps=2, num_virtual_tokens=4)
    out = tmp_path / "exports" / "pt"
    out.parent.mkdir()
    result = runner.invoke(app, ["export", "--model", str(tiny_llama_dir), "--adapter", str(run),
                                 "--format", "gguf", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 1
    assert "prompt-tuning run cannot be exported" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not out.exists() and not any((tmp_path / "exports").iterdir())


@pytest.mark.llama_cpp
def test_llama_cpp_answers_like_the_adapter(smol_base, smol_lora, tmp_path):
    """In llama.cpp itself (`make llama-cpp` builds llama-cpp-python from source)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make llama-cpp)")
    from tunelab import generate

    tuned, tokenizer = load_for_inference(str(smol_base), str(smol_lora))
    conversations = [r["messages"][:1] for r in copy_task_rows(8)]
    expected = generate(tuned, tokenizer, conversations, max_new_tokens=8)
    export(ExportConfig(out=str(tmp_path / "g"), model=str(smol_base), adapter=str(smol_lora),
                        format="gguf", quant="f32"))  # fmt: skip
    llm = llama_cpp.Llama(str(tmp_path / "g" / "g-f32.gguf"), n_ctx=256, verbose=False)
    got = [
        llm.create_chat_completion(messages=c, max_tokens=8, temperature=0)["choices"][0]["message"][
            "content"
        ]
        for c in conversations
    ]
    assert [g.strip() for g in got] == expected


def test_k_quants_without_llama_quantize_say_how_to_get_it(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-quantize anywhere
    monkeypatch.delenv("TUNELAB_LLAMA_QUANTIZE", raising=False)
    result = runner.invoke(app, ["export", "--model", str(tiny_llama_dir), "--format", "gguf",
                                 "--quant", "q4_k_m", "--out", str(tmp_path / "q")])  # fmt: skip
    assert result.exit_code == 1 and "llama-quantize" in result.output and "q8_0" in result.output
    assert not (tmp_path / "q").exists()
