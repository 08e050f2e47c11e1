"""Generation with the same chat template as training: batched (left padding, KV cache) or streamed."""

from __future__ import annotations

import functools
import inspect
import json
import queue
from collections.abc import Callable, Iterator
from pathlib import Path
from threading import Thread

import torch

from ..data.tokenize import render_chat
from ..data.tools import template_message
from ..errors import UserError
from ..methods import get_method
from ..methods.base import load_peft_adapter
from ..models import load_model
from ..ops import prefix_tokens, virtual_tokens
from ..run_dir import RunDir


def load_for_inference(model_spec: str, adapter: str | None = None):
    """(model, tokenizer) in eval mode. `model_spec` may itself be an adapter folder (its base is read from
    its config); the adapter's own tokenizer files, when present, carry its chat template."""
    from transformers import AutoTokenizer

    folder = adapter_folder(model_spec, adapter)
    if folder and adapter is None:
        model_spec = base_of_adapter(folder)
    model, tokenizer = load_model(model_spec)
    if folder:
        model = attach_adapter(model, folder)
        if RunDir(folder).tokenizer_config.is_file():
            tokenizer = AutoTokenizer.from_pretrained(folder)
    model.eval()
    return model, tokenizer


def adapter_folder(model_spec: str, adapter: str | None) -> str | None:
    """The adapter to apply: `adapter`, or `model_spec` itself when that is an adapter folder."""
    if adapter is None and RunDir(model_spec).is_adapter():
        return model_spec
    return adapter


def adapter_method(folder: str):
    """The tunelab method that saved this adapter folder, or None for a PEFT adapter (any PEFT method)."""
    name = RunDir(folder).read_adapter_config().get("tunelab_method")
    return get_method(name) if name else None


def classifies(model_spec: str, adapter: str | None) -> bool:
    """Whether the model loaded from these predicts labels (a classification head) instead of generating."""
    folder = adapter_folder(model_spec, adapter)
    method = adapter_method(folder) if folder else None
    return method is not None and method.task == "classification"


def require_generative(model_spec: str, adapter: str | None, what: str) -> None:
    if classifies(model_spec, adapter):
        raise UserError(f"{what}: this adapter is a classification head; use `tunelab predict`")


def base_of_adapter(folder: str) -> str:
    """The base model spec an adapter was trained on: the run config's `model` (portable, e.g. 'default'),
    else the adapter config's base path."""
    run = RunDir(folder)
    run_config = run.read_config()
    return run_config["model"] if run_config else run.read_adapter_config()["base_model_name_or_path"]


def attach_adapter(model, folder: str):
    """PEFT adapters load through PEFT; tunelab's own kinds (marked `tunelab_method`) through their method."""
    method = adapter_method(folder)
    return method.load(model, Path(folder)) if method else load_peft_adapter(model, Path(folder))


def prompt_messages(messages: list[dict]) -> list[dict]:
    """The conversation up to (not including) its final assistant turn, as the template expects it: tool
    calls and the tool messages answering them kept, in the template's shape (data/tools.py)."""
    end = len(messages) - 1 if messages and messages[-1]["role"] == "assistant" else len(messages)
    return [template_message(m) for m in messages[:end]]


def chat_prompt(tokenizer, messages: list[dict], tools: list | None = None) -> str:
    """The conversation as the model was trained to see it: its chat template, ending where it answers."""
    return render_chat(tokenizer, messages, tools, generation=True)


def chat_prompt_ids(tokenizer, messages: list[dict], tools: list | None = None) -> list[int]:
    return tokenizer(chat_prompt(tokenizer, messages, tools), add_special_tokens=False)["input_ids"]


# Below this, logits divided by the temperature overflow to inf and sampling fails; it is greedy anyway.
MIN_TEMPERATURE = 1e-3


def generation_kwargs(tokenizer, max_new_tokens: int, temperature: float, top_p: float) -> dict:
    """`model.generate` arguments: greedy at temperature 0 (or below MIN_TEMPERATURE), else top-p sampling."""
    sampling = temperature >= MIN_TEMPERATURE
    return {
        "max_new_tokens": max_new_tokens,
        "do_sample": sampling,
        "temperature": temperature if sampling else None,
        "top_p": top_p if sampling else None,
        "top_k": None,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


@torch.no_grad()
def generate(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
    tools: list[list[dict] | None] | None = None,
) -> list[str]:
    """Reply to each conversation (with its `tools`, when given: one list or None a conversation); greedy
    unless temperature > 0. Batches similar lengths together."""
    torch.manual_seed(seed)
    tools = tools or [None] * len(conversations)
    prompts = [
        chat_prompt(tokenizer, prompt_messages(c), t) for c, t in zip(conversations, tools, strict=True)
    ]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[str] = [""] * len(prompts)
    tokenizer.padding_side = "left"  # generation appends on the right, so pad on the left
    kwargs = generation_kwargs(tokenizer, max_new_tokens, temperature, top_p)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        enc = tokenizer(
            [prompts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False
        )
        enc = enc.to(model.device)
        new_tokens = _generate_new_tokens(model, enc, kwargs)
        for i, text in zip(chunk, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
            replies[i] = text.strip()
    return replies


def _generate_new_tokens(model, enc, kwargs) -> torch.Tensor:
    """Only the generated tokens, (B, new)."""
    call, inputs, prompt_columns = _generation_inputs(model, enc)
    return call(**inputs, **kwargs)[:, prompt_columns:]


def _generation_inputs(model, enc) -> tuple[Callable, dict, int]:
    """(the `generate` to call, its inputs, how many leading columns of its output are the prompt).

    PEFT's soft prompts and prefixes go in here rather than through PeftModel.generate, whose
    `prepare_inputs_for_generation` misplaces left padding (prompt tuning) and, from transformers 5.24,
    loses the prefixes (prefix tuning). With adapters disabled (`disable_adapter`) there are none."""
    if n_prefix := prefix_tokens(model):
        return _prefix_inputs(model, enc, n_prefix)
    if n_virtual := virtual_tokens(model):
        return model.get_base_model().generate, _soft_prompt_inputs(model, enc, n_virtual), 0
    return model.generate, dict(enc), enc["input_ids"].shape[1]


def _soft_prompt_inputs(model, enc, n_virtual: int) -> dict:
    """PEFT's prompt tuning drops position ids, so left padding would sit between the soft prompt and the
    text. Building the embeddings ourselves puts the padding first, as positions then count only real
    tokens: [pads | soft prompt | text], exactly as in training."""
    batch = enc["input_ids"].shape[0]
    prompt = model.get_prompt(batch_size=batch)
    text = model.get_input_embeddings()(enc["input_ids"])
    mask = enc["attention_mask"]
    pads = (mask == 0).sum(dim=1)
    embeds, full_mask = [], []
    for row in range(batch):
        p = int(pads[row])
        embeds.append(torch.cat([text[row, :p], prompt[row].to(text.dtype), text[row, p:]]))
        full_mask.append(
            torch.cat(
                [mask[row, :p], torch.ones(n_virtual, dtype=mask.dtype, device=mask.device), mask[row, p:]]
            )
        )
    return {"inputs_embeds": torch.stack(embeds), "attention_mask": torch.stack(full_mask)}


def _prefix_inputs(model, enc, n_prefix: int) -> tuple[Callable, dict, int]:
    """PEFT's prefix tuning: the base model generates from a cache that already holds the prefixes.

    PeftModel.generate cannot be used: its `prepare_inputs_for_generation` looks for the cache under
    `past_key_values`, which transformers 5.24 renamed `cache`; it then finds none at every step, hands the
    prefixes over as `past_key_values` beside the real `cache`, and the model drops them (the deprecated
    name loses), while the attention mask it lengthened for them no longer lines up with the keys.
    So the prefix cache goes in under the name this transformers takes, the text (only) as input ids and
    a mask over [prefix | pads | text]: generate then sees the cache as what precedes the text. Each row's
    text starts at position `n_prefix` after its padding, as in training and in PEFT's own generate."""
    mask = enc["attention_mask"]
    batch = mask.shape[0]
    prefix_mask = torch.ones(batch, n_prefix, dtype=mask.dtype, device=mask.device)
    inputs = {
        "input_ids": enc["input_ids"],
        "attention_mask": torch.cat([prefix_mask, mask], dim=1),
        "position_ids": (mask.cumsum(dim=1) - 1).masked_fill(mask == 0, 0) + n_prefix,
        cache_argument(): model.get_prompt(batch_size=batch),
    }
    return model.get_base_model().generate, inputs, enc["input_ids"].shape[1]


@functools.cache
def cache_argument() -> str:
    """The name `generate`, the models' forward and their outputs give a KV cache: `cache` (transformers
    5.24 on, where `past_key_values` is deprecated) or `past_key_values` (before)."""
    from transformers import GenerationMixin

    parameters = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class IncrementalDecoder:
    """Turns tokens into text as they come, a piece per token as soon as it is whole (as TGI and vLLM
    detokenize): transformers' TextStreamer holds text back to the next space, which delays every first
    token by a word. A few prompt tokens give the first piece its context (a leading space, say)."""

    CONTEXT = 5

    def __init__(self, tokenizer, prompt_ids: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-self.CONTEXT :])
        self.prefix, self.read = 0, len(self.ids)  # decoded before / up to here

    def add(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.prefix, self.read)
        text = self._decode(self.prefix, len(self.ids))
        if len(text) <= len(before) or text.endswith("\ufffd"):  # a character cut in two: wait for the rest
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before) :]

    def flush(self) -> str:
        """What is left at the end (bytes that never made a whole character)."""
        before, text = self._decode(self.prefix, self.read), self._decode(self.prefix, len(self.ids))
        self.prefix = self.read = len(self.ids)
        return text[len(before) :]

    def _decode(self, start: int, end: int) -> str:
        return self.tokenizer.decode(self.ids[start:end], skip_special_tokens=True)


class TextPieces:
    """Tokens in, text out, from one thread to another: the generating thread `add`s each token and `end`s;
    the reader iterates the pieces as they become whole (IncrementalDecoder). What is `add`ed with a token
    (`note`) comes out with the piece that makes its text whole, through `items()`."""

    def __init__(self, tokenizer, prompt_ids: list[int]):
        self.decoder = IncrementalDecoder(tokenizer, prompt_ids)
        self.queue: queue.SimpleQueue[tuple[str, list] | None] = queue.SimpleQueue()  # (piece, notes); None
        self.notes: list = []  # of tokens whose text is not whole yet

    def add(self, token: int, note=None) -> None:
        if note is not None:
            self.notes.append(note)
        if piece := self.decoder.add(token):
            self.queue.put((piece, self.notes))
            self.notes = []

    def end(self) -> None:
        self.queue.put((self.decoder.flush(), self.notes))
        self.notes = []
        self.queue.put(None)

    def items(self) -> Iterator[tuple[str, list]]:
        while (item := self.queue.get()) is not None:
            yield item

    def __iter__(self) -> Iterator[str]:
        for piece, _ in self.items():
            yield piece


class PiecesStreamer:
    """A streamer for `model.generate` (its `put` and `end`) that decodes as the service does."""

    def __init__(self, pieces: TextPieces):
        self.pieces, self.prompt_seen = pieces, False

    def put(self, value: torch.Tensor) -> None:
        """The prompt's ids first (skipped), then each step's new token, (1,) or (1, 1)."""
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in value.flatten().tolist():
            self.pieces.add(token)

    def end(self) -> None:
        self.pieces.end()


def stream_chat(
    model,
    tokenizer,
    messages: list[dict],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    tools: list | None = None,
) -> Iterator[str]:
    """Yield the reply piece by piece as it is generated; `tools` (OpenAI's) are shown to the model."""
    prompt_ids = chat_prompt_ids(tokenizer, prompt_messages(messages), tools)
    ids = torch.tensor([prompt_ids], device=model.device)
    pieces = TextPieces(tokenizer, prompt_ids)
    kwargs = generation_kwargs(tokenizer, max_new_tokens, temperature, top_p)
    call, inputs, _ = _generation_inputs(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    failures: list[Exception] = []

    def run() -> None:
        try:
            call(**inputs, **kwargs, streamer=PiecesStreamer(pieces))
        except Exception as err:  # raised below, where the reader waits, instead of leaving it waiting
            failures.append(err)
            pieces.end()

    thread = Thread(target=run)
    thread.start()
    yield from (piece for piece in pieces if piece)
    thread.join()
    if failures:
        raise failures[0]


def generate_file(model, tokenizer, data: str, out: str, fmt: str | None = None, **kwargs) -> int:
    """Write one JSONL row per example: the prompt, the prediction and (when present) the reference."""
    from ..data.formats import load_examples

    examples = load_examples(data, format=fmt, for_training=False)
    conversations = [e.messages for e in examples]
    predictions = generate(model, tokenizer, conversations, tools=[e.tools for e in examples], **kwargs)
    with open(out, "w") as f:
        for example, prediction in zip(examples, predictions, strict=True):
            last = example.messages[-1]
            row = {
                "line": example.line,
                "messages": prompt_messages(example.messages),
                "prediction": prediction,
            }
            if last["role"] == "assistant":
                row["reference"] = last["content"]
            f.write(json.dumps(row) + "\n")
    return len(predictions)
