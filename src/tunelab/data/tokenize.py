"""Chat examples -> token ids and labels, through the model's own chat template.

Only assistant contents and the end-of-turn token that closes each assistant turn carry labels (so the
model learns what to say and when to stop); everything else is -100 unless `train_on_inputs` is set.
Spans are found on the rendered text and mapped to tokens with the tokenizer's offsets, so this works for
any chat template without per-model rules (transformers' `return_assistant_tokens_mask` needs templates
with `{% generation %}` markers, which most models, SmolLM2 included, do not have).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .examples import Example

IGNORE_INDEX = -100


class TemplateError(UserError, ValueError):
    """The chat template changed a message so that its content cannot be found in the rendered text."""


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    target: int | None = None  # the class index, for classification heads

    @property
    def n_trainable(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


def chat_messages(example: Example) -> list[dict]:
    """Messages as the chat template expects them (the `weight` key is ours, not the template's)."""
    return [{"role": m["role"], "content": m["content"]} for m in example.messages]


def _assistant_spans(text: str, messages: list[dict], train_on: list[bool]) -> list[tuple[int, int]]:
    spans, cursor = [], 0
    for message, trained in zip(messages, train_on, strict=True):
        content = message["content"]
        start = text.find(content, cursor)
        if start < 0:  # some templates trim contents
            content = content.strip()
            start = text.find(content, cursor)
        if start < 0:
            raise TemplateError(
                f"the chat template rendered a {message['role']} message so that its content "
                f"({message['content'][:40]!r}...) is not in the text; cannot place labels"
            )
        end = start + len(content)
        if trained:
            spans.append((start, end))
        cursor = end
    return spans


def encode_chat(
    example: Example, tokenizer, max_length: int, train_on_inputs: bool = False
) -> EncodedExample:
    messages = chat_messages(example)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    if train_on_inputs:
        labels = list(input_ids)
    else:
        train_on = [m["role"] == "assistant" and m.get("weight", 1) != 0 for m in example.messages]
        spans = _assistant_spans(text, messages, train_on)
        labels = _label_spans(input_ids, offsets, spans, _special_ids(tokenizer))
    truncated = len(input_ids) > max_length
    return EncodedExample(input_ids[:max_length], labels[:max_length], truncated)


def _label_spans(input_ids, offsets, spans, special_ids: set[int]) -> list[int]:
    labels = [IGNORE_INDEX] * len(input_ids)
    for start, end in spans:
        closing = None
        for i, (a, b) in enumerate(offsets):
            if a < end and b > start:
                labels[i] = input_ids[i]
            elif a >= end and b > a:
                closing = i
                break
        # The token right after the content ends the turn when it is a special token (<|im_end|>, </s>,
        # <|eot_id|>, <end_of_turn>...): learning it is how the model learns to stop.
        if closing is not None and input_ids[closing] in special_ids:
            labels[closing] = input_ids[closing]
    return labels


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(tok_id for tok_id, tok in tokenizer.added_tokens_decoder.items() if tok.special)
    return ids


def encode_examples(examples: list[Example], tokenizer, max_length: int, train_on_inputs: bool = False):
    """Encode all examples; returns (encoded, stats) and drops those left with nothing to learn."""
    encoded, dropped, truncated = [], 0, 0
    for example in examples:
        item = encode_chat(example, tokenizer, max_length, train_on_inputs)
        truncated += item.truncated
        if item.n_trainable == 0:
            dropped += 1
            continue
        encoded.append(item)
    return encoded, {"examples": len(encoded), "dropped_no_labels": dropped, "truncated": truncated}


def encode_documents(documents: list[str], tokenizer, block_size: int) -> list[EncodedExample]:
    """Plain text for continued pre-training: documents joined with EOS and cut into full blocks.

    Packing wastes no compute on padding; the tail shorter than a block is dropped.
    """
    stream: list[int] = []
    for text in documents:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]
    return [EncodedExample(list(block), list(block)) for block in blocks]


def encode_for_classification(
    examples: list[Example], tokenizer, labels: list[str], max_length: int
) -> list[EncodedExample]:
    """The prompt as the model would see it before answering, and the answer's class index.

    Long prompts keep their end: the head reads the last token.
    """
    index = {label: i for i, label in enumerate(labels)}
    encoded = []
    for example in examples:
        answer = example.messages[-1]["content"]
        if answer not in index:
            raise TemplateError(f"line {example.line}: answer {answer!r} is not one of the labels {labels}")
        ids = tokenizer.apply_chat_template(
            chat_messages(Example(example.messages[:-1])), tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(ids, add_special_tokens=False)["input_ids"]
        encoded.append(EncodedExample(ids[-max_length:], [], len(ids) > max_length, target=index[answer]))
    return encoded
