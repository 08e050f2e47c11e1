"""Batched generation with left padding gives what one-by-one generation gives; streaming matches too."""

import json

from conftest import write_jsonl
from tunelab.inference import generate_file, load_for_inference, stream_chat
from tunelab.inference.generation import generate
from tunelab.training import TrainConfig, train

CONVERSATIONS = [
    [{"role": "user", "content": "say alice"}],
    [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "say the quick brown fox please now"},
    ],
    [{"role": "user", "content": "x"}],
]


def test_batched_equals_one_by_one(tiny_llama_dir):
    model, tokenizer = load_for_inference(str(tiny_llama_dir))
    batched = generate(model, tokenizer, CONVERSATIONS, max_new_tokens=8, batch_size=3)
    single = [generate(model, tokenizer, [c], max_new_tokens=8, batch_size=1)[0] for c in CONVERSATIONS]
    assert batched == single
    assert any(batched)


def test_stream_matches_generate(tiny_llama_dir):
    model, tokenizer = load_for_inference(str(tiny_llama_dir))
    streamed = "".join(stream_chat(model, tokenizer, CONVERSATIONS[1], max_new_tokens=8)).strip()
    assert streamed == generate(model, tokenizer, [CONVERSATIONS[1]], max_new_tokens=8)[0]


def test_adapter_folder_alone_finds_its_base_and_answers_as_trained(tiny_llama_dir, tmp_path):
    # one fixed answer: learnable by a LoRA on a tiny random model in a few dozen steps
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"say {i}"},
                {"role": "assistant", "content": "paris london"},
            ]
        }
        for i in range(48)
    ]
    data = write_jsonl(tmp_path / "fixed.jsonl", rows)
    out = tmp_path / "lora"
    train(
        TrainConfig(
            model=str(tiny_llama_dir), data=str(data), out=str(out), max_steps=40, lr=3e-2, batch_size=8
        )
    )
    preds = tmp_path / "preds.jsonl"
    model, tokenizer = load_for_inference(str(out))  # base read from adapter_config.json
    generate_file(model, tokenizer, str(data), str(preds), max_new_tokens=4)
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 48 and rows[0]["reference"] == "paris london"
    accuracy = sum(r["prediction"] == r["reference"] for r in rows) / len(rows)
    assert accuracy >= 0.9


def test_incremental_decoding_gives_a_piece_per_whole_token_and_the_same_text(tiny_tokenizer):
    from tunelab.inference.generation import IncrementalDecoder

    prompt = tiny_tokenizer("say bob")["input_ids"]
    text = "the quick fox: h\u00e9llo \U0001f600 w\u00f6rld"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(tiny_tokenizer, prompt)
    pieces = [decoder.add(token) for token in ids]
    assert "".join(pieces) + decoder.flush() == tiny_tokenizer.decode(ids) == text
    assert all("\ufffd" not in piece for piece in pieces)  # a character cut across tokens waits
    words = tiny_tokenizer("the quick fox", add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(tiny_tokenizer, prompt)
    assert all(decoder.add(token) for token in words)  # no piece waits for the next word


def test_each_conversation_is_asked_with_its_own_tools(tiny_llama_dir, tmp_path, monkeypatch):
    """`generate_file` on function-calling data shows each example's tools, as training did."""
    from conftest import WEATHER
    from tunelab.inference import generation

    asked, real = [], generation.chat_prompt

    def kept_prompt(*args):
        asked.append(real(*args))
        return asked[-1]

    monkeypatch.setattr(generation, "chat_prompt", kept_prompt)
    model, tokenizer = load_for_inference(str(tiny_llama_dir))
    rows = [{"tools": [WEATHER], "messages": [{"role": "user", "content": "weather in Oslo?"}]}]
    data = write_jsonl(tmp_path / "calls.jsonl", [*rows, {"messages": CONVERSATIONS[0]}])
    assert generate_file(model, tokenizer, str(data), str(tmp_path / "out.jsonl"), max_new_tokens=2) == 2
    assert '"name": "get_weather"' in asked[0] and "<tools>" in asked[0]
    assert "<tools>" not in asked[1]
