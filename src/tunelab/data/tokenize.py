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
from .tools import template_message, tool_template

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
    return [template_message(m) for m in example.messages]


def uses_tools(messages: list[dict], tools: list | None) -> bool:
    return bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


def render_chat(tokenizer, messages: list[dict], tools: list | None = None, generation: bool = False) -> str:
    """The conversation as the model reads it, ending where it answers with `generation`; tool data
    through the template `tool_template` gives (data/tools.py)."""
    template = tool_template(tokenizer.chat_template) if uses_tools(messages, tools) else None
    return tokenizer.apply_chat_template(
        messages, tools=tools, chat_template=template, tokenize=False, add_generation_prompt=generation
    )


def _assistant_spans(tokenizer, text: str, example: Example, messages: list[dict]) -> list[tuple[int, int]]:
    spans, cursor = [], 0
    for i, (original, message) in enumerate(zip(example.messages, messages, strict=True)):
        trained = message["role"] == "assistant" and original.get("weight", 1) != 0
        if message.get("tool_calls"):  # its text is the template's writing of the calls
            start, end = _turn_span(tokenizer, text, example.tools, messages, i)
        else:
            start, end = _find_content(text, message, cursor)
        if trained:
            spans.append((start, end))
        cursor = end
    return spans


def _find_content(text: str, message: dict, cursor: int) -> tuple[int, int]:
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
    return start, start + len(content)


def _turn_span(tokenizer, text: str, tools, messages: list[dict], i: int) -> tuple[int, int]:
    """Where assistant turn `i` is written: after the prompt that asks for it, up to its end-of-turn
    token (which `_label_spans` labels as the token after the span)."""
    prompt = render_chat(tokenizer, messages[:i], tools, generation=True)
    through = render_chat(tokenizer, messages[: i + 1], tools)
    if not (through.startswith(prompt) and text.startswith(through)):
        raise TemplateError(
            f"the chat template does not write message {i} (tool calls) after the turns before it; "
            "cannot place labels"
        )
    turn = through[len(prompt) :].rstrip()
    for token in sorted(tokenizer.all_special_tokens, key=len, reverse=True):
        if token and turn.endswith(token):
            turn = turn[: -len(token)]
            break
    return len(prompt), len(prompt) + len(turn.rstrip())


def encode_chat(
    example: Example, tokenizer, max_length: int, train_on_inputs: bool = False
) -> EncodedExample:
    messages = chat_messages(example)
    text = render_chat(tokenizer, messages, example.tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    if train_on_inputs:
        labels = list(input_ids)
    else:
        spans = _assistant_spans(tokenizer, text, example, messages)
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
    """Encode all examples; returns (encoded, stats) and drops those left with nothing to learn. Tool data
    installs the template that renders it on the tokenizer, so the run saves what training saw."""
    if any(uses_tools(e.messages, e.tools) for e in examples):
        tokenizer.chat_template = tool_template(tokenizer.chat_template)
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
        prompt = render_chat(tokenizer, chat_messages(Example(example.messages[:-1])), example.tools, True)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        encoded.append(EncodedExample(ids[-max_length:], [], len(ids) > max_length, target=index[answer]))
    return encoded
