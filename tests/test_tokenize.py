"""Labels sit exactly on assistant contents plus the end-of-turn token; padding never hides that token."""

import shutil
from pathlib import Path

import pytest

from tunelab.data import Example, load_examples
from tunelab.data.batching import collate, count_label_tokens, epoch_batches
from tunelab.data.tokenize import IGNORE_INDEX, encode_chat

FIXTURES = Path(__file__).parent / "fixtures"

MULTI_TURN = Example(
    messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "say alice"},
        {"role": "assistant", "content": "alice", "weight": 0},
        {"role": "user", "content": "say bob"},
        {"role": "assistant", "content": "bob"},
        {"role": "user", "content": "say paris"},
        {"role": "assistant", "content": " paris, london!"},
    ]
)


def labelled_text(tokenizer, encoded) -> str:
    ids = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    return tokenizer.decode(ids)


def expected_text(example: Example, eot: str) -> str:
    return "".join(
        m["content"] + eot for m in example.messages if m["role"] == "assistant" and m.get("weight", 1)
    )


def check_labels(tokenizer, examples, eot):
    for example in examples:
        encoded = encode_chat(example, tokenizer, max_length=4096)
        assert labelled_text(tokenizer, encoded) == expected_text(example, eot), example.line


def test_labels_are_assistant_contents_plus_end_of_turn(tiny_tokenizer):
    examples = load_examples(FIXTURES / "good_chat.jsonl") + [MULTI_TURN]
    check_labels(tiny_tokenizer, examples, "<|im_end|>")


@pytest.mark.embedded
def test_labels_with_the_embedded_tokenizer():
    from tunelab.models import load_tokenizer

    tokenizer = load_tokenizer("default")
    examples = load_examples(FIXTURES / "good_chat.jsonl") + [MULTI_TURN]
    check_labels(tokenizer, examples, "<|im_end|>")


def test_weight_zero_turn_is_context_only(tiny_tokenizer):
    encoded = encode_chat(MULTI_TURN, tiny_tokenizer, max_length=4096)
    assert "alice" not in labelled_text(tiny_tokenizer, encoded)


def test_train_on_inputs_labels_everything(tiny_tokenizer):
    encoded = encode_chat(MULTI_TURN, tiny_tokenizer, max_length=4096, train_on_inputs=True)
    assert encoded.labels == encoded.input_ids


def test_truncation_keeps_the_start(tiny_tokenizer):
    full = encode_chat(MULTI_TURN, tiny_tokenizer, max_length=4096)
    short = encode_chat(MULTI_TURN, tiny_tokenizer, max_length=10)
    assert short.truncated and not full.truncated
    assert short.input_ids == full.input_ids[:10]


def test_padding_keeps_end_of_turn_label_when_pad_is_eos(tiny_tokenizer):
    assert tiny_tokenizer.pad_token_id == tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    short = encode_chat(
        Example([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "bob"}]),
        tiny_tokenizer,
        512,
    )
    long = encode_chat(MULTI_TURN, tiny_tokenizer, 512)
    batch = collate([short, long], tiny_tokenizer.pad_token_id)
    n = len(short.input_ids)
    eot = tiny_tokenizer.pad_token_id
    row_labels = batch["labels"][0].tolist()
    assert row_labels[:n] == short.labels and eot in row_labels[:n]  # the real end-of-turn is learned
    assert set(row_labels[n:]) == {IGNORE_INDEX}  # padding is not
    assert batch["attention_mask"][0].sum() == n
    assert count_label_tokens(batch["labels"]) == short.n_trainable + long.n_trainable


def test_left_padding_for_generation(tiny_tokenizer):
    a = encode_chat(MULTI_TURN, tiny_tokenizer, 512)
    b = encode_chat(
        Example([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]),
        tiny_tokenizer,
        512,
    )
    batch = collate([a, b], 0, padding_side="left")
    assert batch["input_ids"][1, -len(b.input_ids) :].tolist() == b.input_ids
    assert batch["attention_mask"][1, : -len(b.input_ids)].sum() == 0


def test_epoch_batches_cover_every_example_once_and_are_deterministic():
    lengths = [(i * 37) % 101 + 1 for i in range(230)]
    batches = epoch_batches(lengths, 8, seed=3, epoch=1)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(230))
    assert batches == epoch_batches(lengths, 8, seed=3, epoch=1)
    assert batches != epoch_batches(lengths, 8, seed=3, epoch=2)


def test_length_grouping_cuts_padding():
    lengths = [(i * 37) % 101 + 1 for i in range(400)]

    def waste(batches):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    grouped = epoch_batches(lengths, 8, seed=0, epoch=0)
    plain = [list(range(i, i + 8)) for i in range(0, 400, 8)]
    assert waste(grouped) < 0.2 * waste(plain)


def test_a_model_without_a_chat_template_gets_a_plain_one(tiny_llama_dir, tmp_path):
    from tiny import make_tokenizer
    from tunelab.models import load_tokenizer

    model_dir = shutil.copytree(tiny_llama_dir, tmp_path / "base")
    (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    base = make_tokenizer()
    base.chat_template = None  # as a base model's tokenizer comes
    base.save_pretrained(model_dir)
    said = []
    tokenizer = load_tokenizer(str(model_dir), log=said.append)
    assert "no chat template" in said[-1]
    check_labels(tokenizer, load_examples(FIXTURES / "good_chat.jsonl") + [MULTI_TURN], tokenizer.eos_token)
    prompt = tokenizer.apply_chat_template(
        MULTI_TURN.messages[:2], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "system:\nBe brief.\nuser:\nsay alice\nassistant:\n"
