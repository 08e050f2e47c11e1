"""Continuous batching for one model: sequences that arrive while others generate join the running batch
at the next decode step and leave the step they finish, each with its own adapter, sampling settings and
stop. One thread runs the model; callers get their tokens through a callback, as they come.

Written here because transformers' own continuous batching packs every sequence into one row of a paged
cache, where per-row adapters (the S-LoRA/Punica idea: one batch, many LoRA adapters) cannot apply. The
sequences admitted together are prefilled in one forward pass, each distinct prompt once (the `n` choices
of a request share it) and each from where the prefix cache's KV of an earlier prompt ends; their KV is
then right-aligned into the running batch's left-padded cache, and every decode step runs the whole batch
at once. A prompt longer than `prefill_chunk` that arrives while rows decode is prefilled a chunk between
decode steps (vLLM's chunked prefill), so the running rows go on at a slower pace rather than wait for
its whole prefill. Caches are plain (full-attention) layers: a sliding-window model attends to its whole
context here.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from transformers import DynamicCache

from .generation import MIN_TEMPERATURE, cache_argument
from .kv_cache import Layers, growing_cache
from .prefix_cache import PrefixCache, PrefixHit

log = logging.getLogger(__name__)


class TokenLogprob(NamedTuple):
    """A chosen token's log-probability and the `top` most likely tokens' (id, log-probability), most likely
    first. Both come from the model's own distribution at that position: log_softmax of its raw logits,
    before logit_bias, penalties, temperature and top_p (what vLLM reports by default, `raw_logprobs`, and
    how OpenAI describes them: the model's likelihood of each token)."""

    logprob: float
    top: list[tuple[int, float]]


@dataclass
class SequenceRequest:
    """What to generate. `on_token(id, logprob)` receives each new token (an end-of-text one included, as
    `generate` gives it to a streamer) with its `TokenLogprob` when `logprobs` asks for them (else None),
    and `on_end(finish_reason, error)` comes once at the end, error None unless the model failed; both are
    called from the scheduler's thread.

    The penalties and bias change the logits before temperature and top_p, as OpenAI defines them:
    `logits[j] += logit_bias[j] - count[j] * frequency_penalty - (count[j] > 0) * presence_penalty`, where
    `count[j]` is how often token j occurs in the completion so far (not the prompt)."""

    prompt_ids: list[int]
    max_tokens: int
    on_token: Callable[[int, TokenLogprob | None], None]
    on_end: Callable[[str, Exception | None], None]
    adapter: str | None = None  # None: the base model alone
    temperature: float = 0.0  # below MIN_TEMPERATURE: greedy
    top_p: float = 1.0
    seed: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    logprobs: int | None = None  # None: no log-probabilities; k: each token's and the top k's
    cancelled: threading.Event = field(default_factory=threading.Event)  # set it to end the sequence
    cached_tokens: int = 0  # set at its prefill: the prompt's leading tokens whose KV was stored already


@dataclass
class Row:
    """A sequence in the running batch."""

    request: SequenceRequest
    length: int  # real tokens in the cache
    next_token: int = -1  # sampled, not yet in the cache
    generated: int = 0
    generator: torch.Generator | None = None
    bias: torch.Tensor | None = None  # (V,) logit_bias, dense; None when the request has none
    counts: torch.Tensor | None = None  # (V,) each token's count in the completion; None without penalties


class BatchScheduler:
    """Runs the batch on its own thread. `model_for(adapters)`, given each row's adapter (None: the base),
    returns (model, context, kwargs): run the model inside `context` with `kwargs` added to its inputs
    (e.g. PEFT's `adapter_names`); or None when those adapters cannot share a batch. It is called from the
    scheduler's thread only, the one thread that touches the model. `prefix_cache_bytes` bounds the KV
    kept of recent prompts (0: none kept); `prefill_chunk` is the most prompt tokens one forward pass
    prefills while rows decode (0: whole prompts)."""

    def __init__(
        self,
        model_for: Callable,
        max_batch: int = 16,
        on_step: Callable[[int], None] | None = None,
        prefix_cache_bytes: int = 0,
        prefill_chunk: int = 0,
    ):
        self.model_for, self.max_batch, self.prefill_chunk = model_for, max_batch, prefill_chunk
        self.on_step = on_step  # told the number of rows of each decode step
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        self.pending: deque[SequenceRequest] = deque()
        self.calls: deque[Callable[[], None]] = deque()  # to run on this thread between steps
        self.rows: list[Row] = []
        self.cache: DynamicCache | None = None
        # A long prompt being prefilled a chunk at a time, with the KV of its tokens done so far (None
        # before its first chunk); the requests behind it wait, so none is passed over.
        self.partial: tuple[SequenceRequest, PrefixHit | None] | None = None
        self.wake = threading.Condition()  # new work, or (notify_all) nothing left to do
        self.thread = threading.Thread(target=self._loop, name="batch-scheduler", daemon=True)
        self.thread.start()

    def submit(self, request: SequenceRequest) -> None:
        with self.wake:
            self.pending.append(request)
            self.wake.notify_all()

    def call_soon(self, function: Callable[[], None]) -> None:
        """Run `function` on the scheduler's thread before the next step (e.g. to change the model)."""
        with self.wake:
            self.calls.append(function)
            self.wake.notify_all()

    def end_adapter(self, adapter: str) -> None:
        """End the running sequences that use `adapter` and forget its prompts' KV (call it from the
        scheduler's thread, before the adapter is unloaded)."""
        requests = [row.request for row in self.rows]
        if self.partial is not None:
            requests.append(self.partial[0])
        for request in requests:
            if request.adapter == adapter:
                request.cancelled.set()
        self._retire()
        self.prefix_cache.forget(adapter)

    @property
    def queued(self) -> int:
        return len(self.pending)

    @property
    def running(self) -> int:
        return len(self.rows) + (self.partial is not None)

    def wait_idle(self, timeout: float) -> bool:
        """Whether every sequence ended (and none waits) within `timeout` seconds."""
        with self.wake:
            return self.wake.wait_for(self._idle, timeout)

    def _idle(self) -> bool:
        return not self.pending and not self.rows and not self.calls and self.partial is None

    def _loop(self) -> None:
        while True:
            with self.wake:
                while self._idle():
                    self.wake.notify_all()
                    self.wake.wait()
            try:
                while self.calls:
                    call = self.calls.popleft()
                    try:
                        call()
                    except Exception:  # the caller's own work failed; the batch goes on
                        log.exception("call on the scheduler's thread failed")
                self._admit()
                self._retire()  # those cancelled since the last step, or done at their first token
                if self.rows:
                    self._step()
                    self._retire()
            except Exception as err:  # a model failure ends every sequence in the batch, not the server
                for row in self.rows:
                    row.request.on_end("stop", err)
                self.rows, self.cache = [], None

    def _admit(self) -> None:
        """New sequences in arrival order, while the batch has room and they can share it (the first one
        that cannot waits for the batch to drain, and those behind it too, so none is passed over); those
        admitted together are prefilled in one forward pass. A long prompt while rows decode is taken
        alone, a chunk each time round."""
        if self.partial is not None:
            return self._prefill_chunk()
        admitted: list[SequenceRequest] = []
        while self.pending and len(self.rows) + len(admitted) < self.max_batch:
            request = self.pending[0]
            try:
                if not request.cancelled.is_set() and not self._fits([*admitted, request]):
                    break
            except Exception as err:  # this request's own failure (e.g. its adapter); the others go on
                self.pending.popleft()
                request.on_end("stop", err)
                continue
            if request.cancelled.is_set():
                self.pending.popleft()
                request.on_end("stop", None)
                continue
            if 0 < self.prefill_chunk < len(request.prompt_ids) and (self.rows or admitted):
                if not admitted:  # else it starts once those admitted before it are prefilled
                    self.pending.popleft()
                    self.partial = (request, None)
                break
            self.pending.popleft()
            admitted.append(request)
        if admitted:
            try:
                self._prefill(admitted)
            except Exception as err:
                for request in admitted:
                    request.on_end("stop", err)

    def _fits(self, requests: list[SequenceRequest]) -> bool:
        adapters = [row.request.adapter for row in self.rows] + [r.adapter for r in requests]
        return self.model_for(adapters) is not None

    @torch.no_grad()
    def _prefill_chunk(self) -> None:
        """The next chunk of the long prompt (its first from where the prefix cache's KV ends); after
        its last, its row joins the batch. A failure or a cancel ends that request alone."""
        request, done = self.partial
        try:
            if request.cancelled.is_set():
                self.partial = None
                return request.on_end("stop", None)
            prompt = request.prompt_ids
            if done is None:
                done = self.prefix_cache.longest(request.adapter, prompt)
                request.cached_tokens = done.tokens if done else 0
            end = (done.tokens if done else 0) + self.prefill_chunk
            if end >= len(prompt):
                self.partial = None
                return self._prefill([request], last_chunk=done)
            model, context, extra = self.model_for([request.adapter])
            with context:
                _, layers = prefill(model, [prompt[:end]], [done], extra)
            self.partial = (request, PrefixHit(end, layers))
        except Exception as err:
            self.partial = None
            request.on_end("stop", err)

    @torch.no_grad()
    def _prefill(self, requests: list[SequenceRequest], last_chunk: PrefixHit | None = None) -> None:
        """Each distinct (adapter, prompt) once, from where its stored prefix ends (or, for the last chunk
        of one long prompt, from where its earlier chunks end); every request then gets its own row (and
        random numbers) on its prompt's KV, and the prompts' KV is stored for later."""
        prompts: dict[tuple[str | None, tuple[int, ...]], int] = {}  # distinct prompt -> its index
        for request in requests:
            prompts.setdefault((request.adapter, tuple(request.prompt_ids)), len(prompts))
        if last_chunk is not None:
            hits = [last_chunk]
        else:
            hits = [self.prefix_cache.longest(adapter, list(ids)) for adapter, ids in prompts]
            for request in requests:
                hit = hits[prompts[(request.adapter, tuple(request.prompt_ids))]]
                request.cached_tokens = hit.tokens if hit else 0
        model, context, extra = self.model_for([adapter for adapter, _ in prompts])
        with context:
            logits, layers = prefill(model, [list(ids) for _, ids in prompts], hits, extra)
        for p, (adapter, ids) in enumerate(prompts):
            self.prefix_cache.put(adapter, list(ids), row_layers(layers, p, len(ids)))
        which = [prompts[(r.adapter, tuple(r.prompt_ids))] for r in requests]
        if len(prompts) < len(requests):  # choices of one prompt: its KV repeated, one row each
            index = torch.tensor(which, device=logits.device)
            logits = logits.index_select(0, index)
            layers = [(k.index_select(0, index), v.index_select(0, index)) for k, v in layers]
        rows = []
        for r, request in enumerate(requests):
            row = Row(
                request, length=len(request.prompt_ids), generator=generator_for(request, logits.device)
            )
            row.bias, row.counts = adjustments(request, logits[r])
            self._take(row, logits[r])
            rows.append(row)
        self._join(rows, layers)

    def _join(self, rows: list[Row], layers: Layers) -> None:
        """Rows and their KV (right-aligned) into the running batch (finished ones leave at the next
        `_retire`)."""
        if self.cache is None:
            self.rows, self.cache = rows, growing_cache(layers)
            return
        width = max(self.cache.get_seq_length(), layers[0][0].shape[2])
        merged = []
        for ours, (keys, values) in zip(self.cache.layers, layers, strict=True):
            keys = torch.cat([left_pad(ours.keys, width), left_pad(keys, width)])
            values = torch.cat([left_pad(ours.values, width), left_pad(values, width)])
            merged.append((keys, values))  # (B, heads, width, head_dim)
        self.cache = growing_cache(merged)
        self.rows += rows

    @torch.no_grad()
    def _step(self) -> None:
        """One token for every row: each row's last sampled token, at its own position."""
        model, context, extra = self.model_for([row.request.adapter for row in self.rows])
        width, device = self.cache.get_seq_length(), model.device
        ids = torch.tensor([[row.next_token] for row in self.rows], device=device)  # (B, 1)
        positions = torch.tensor([[row.length] for row in self.rows], device=device)  # (B, 1)
        mask = torch.zeros(len(self.rows), width + 1, dtype=torch.long, device=device)  # (B, width + 1)
        for r, row in enumerate(self.rows):
            mask[r, width - row.length :] = 1  # the left padding stays 0
        with context:
            out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{cache_argument(): self.cache},
                **extra,
            )
        self.cache = getattr(out, cache_argument())
        if self.on_step:
            self.on_step(len(self.rows))
        for r, row in enumerate(self.rows):
            row.length += 1
            self._take(row, out.logits[r, -1])

    def _take(self, row: Row, logits: torch.Tensor) -> None:
        """Sample the row's next token from its logits (V,); a row without bias, penalties or logprobs
        (the common case) costs no more than the sampling itself."""
        request, scores = row.request, logits
        if row.bias is not None:
            scores = scores.float() + row.bias
        if row.counts is not None:
            penalty = row.counts * request.frequency_penalty + (row.counts > 0) * request.presence_penalty
            scores = scores.float() - penalty
        row.next_token = sample(scores, request, row.generator)
        row.generated += 1
        if row.counts is not None:
            row.counts[row.next_token] += 1
        if request.logprobs is None:
            request.on_token(row.next_token, None)
        else:  # the model's own distribution: `logits`, not `scores`
            request.on_token(row.next_token, token_logprob(logits, row.next_token, request.logprobs))

    def _retire(self) -> None:
        """End finished rows; drop them and the cache columns that are padding in every row left."""
        reasons = [finish_reason(row) for row in self.rows]
        if not any(reasons):
            return
        for row, reason in zip(self.rows, reasons, strict=True):
            if reason:
                row.request.on_end(reason, None)
        keep = [r for r, reason in enumerate(reasons) if not reason]
        self.rows = [self.rows[r] for r in keep]
        if not self.rows:
            self.cache = None
            return
        start = self.cache.get_seq_length() - max(row.length for row in self.rows)
        index = torch.tensor(keep, device=self.cache.layers[0].keys.device)
        self.cache = growing_cache(
            [(layer.keys[index, :, start:], layer.values[index, :, start:]) for layer in self.cache.layers]
        )


def prefill(
    model, prompts: list[list[int]], hits: list[PrefixHit | None], extra: dict
) -> tuple[torch.Tensor, Layers]:
    """One forward pass over what the prefix cache does not cover of each prompt: the stored prefixes'
    KV left-padded to one width, the rest of each prompt right-padded after it (so each row's tokens are
    contiguous). Returns each prompt's next-token logits (P, V) and its KV per layer, right-aligned to the
    longest prompt as the running batch keeps it (left padding zero)."""
    device = model.device
    known = [hit.tokens if hit else 0 for hit in hits]
    rest = [len(prompt) - k for prompt, k in zip(prompts, known, strict=True)]
    past, new = max(known), max(rest)
    ids = torch.zeros(len(prompts), new, dtype=torch.long, device=device)
    mask = torch.zeros(len(prompts), past + new, dtype=torch.long, device=device)
    for p, (prompt, k) in enumerate(zip(prompts, known, strict=True)):
        ids[p, : rest[p]] = torch.tensor(prompt[k:], device=device)
        mask[p, past - k : past + rest[p]] = 1
    positions = torch.tensor(known, device=device)[:, None] + torch.arange(new, device=device)
    last = torch.tensor(rest, device=device)[:, None] - 1  # (P, 1): each prompt's last position
    cache = growing_cache(past_layers(hits, past)) if past else growing_cache()
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=last,  # logits of each prompt's last token only: the head costs as much as a layer
        **{cache_argument(): cache},
        **extra,
    )
    shifts = [new - n for n in rest]
    keep = max(len(prompt) for prompt in prompts)
    layers = [
        (right_align(layer.keys, shifts)[:, :, -keep:], right_align(layer.values, shifts)[:, :, -keep:])
        for layer in getattr(out, cache_argument()).layers
    ]
    return out.logits[:, 0], layers


def past_layers(hits: list[PrefixHit | None], width: int) -> Layers:
    """The hits' KV as a batch, each left-padded to `width` (zeros for a prompt without a hit)."""
    some = next(hit for hit in hits if hit).layers
    layers = []
    for index, (keys, _) in enumerate(some):
        empty = keys.new_zeros(1, keys.shape[1], width, keys.shape[3])
        rows = [
            [left_pad(part, width) for part in hit.layers[index]] if hit else (empty, empty) for hit in hits
        ]
        layers.append((torch.cat([k for k, _ in rows]), torch.cat([v for _, v in rows])))
    return layers


def row_layers(layers: Layers, row: int, tokens: int) -> Layers:
    """One row's last `tokens` columns of a batch's KV."""
    return [(keys[row : row + 1, :, -tokens:], values[row : row + 1, :, -tokens:]) for keys, values in layers]


def right_align(states: torch.Tensor, shifts: list[int]) -> torch.Tensor:
    """(B, heads, T, head_dim) with row b moved `shifts[b]` columns right (what moves in on the left is
    padding, hidden by the batch mask)."""
    if not any(shifts):
        return states
    width = states.shape[2]
    columns = torch.arange(width, device=states.device)
    index = (columns[None, :] - torch.tensor(shifts, device=states.device)[:, None]).clamp(min=0)
    return states.gather(2, index[:, None, :, None].expand_as(states))


def generator_for(request: SequenceRequest, device) -> torch.Generator | None:
    """The row's own random numbers when it samples (seeded when asked), so rows never share a stream."""
    if request.temperature < MIN_TEMPERATURE:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(request.seed if request.seed is not None else torch.seed())
    return generator


def finish_reason(row: Row) -> str | None:
    """'stop' (end of text, or cancelled), 'length' (max_tokens), or None while it goes on."""
    request = row.request
    if request.cancelled.is_set() or row.next_token in request.eos_token_ids:
        return "stop"
    return "length" if row.generated >= request.max_tokens else None


def adjustments(request: SequenceRequest, logits: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """(bias, counts) for a row, each (V,) on the logits' device, or None when the request has none. Ids
    beyond the logits (the service refuses them) are left out rather than indexed."""
    vocab, bias, counts = logits.shape[-1], None, None
    if not (request.logit_bias or request.frequency_penalty or request.presence_penalty):
        return bias, counts
    if request.logit_bias:
        ids = [i for i in request.logit_bias if 0 <= i < vocab]
        bias = torch.zeros(vocab, dtype=torch.float32, device=logits.device)
        index = torch.tensor(ids, dtype=torch.long, device=logits.device)
        bias[index] = torch.tensor([float(request.logit_bias[i]) for i in ids], device=logits.device)
    if request.frequency_penalty or request.presence_penalty:
        counts = torch.zeros(vocab, dtype=torch.float32, device=logits.device)
    return bias, counts


def token_logprob(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """`token`'s log-probability under the model's raw logits (V,), and the `top` most likely tokens'."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    best = logprobs.topk(min(top, logprobs.shape[-1])) if top else None
    pairs = list(zip(best.indices.tolist(), best.values.tolist(), strict=True)) if best is not None else []
    return TokenLogprob(float(logprobs[token]), pairs)


def sample(logits: torch.Tensor, request: SequenceRequest, generator: torch.Generator | None) -> int:
    """Greedy without a generator, else top-p sampling at the request's temperature. (V,) -> token id"""
    if generator is None:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / request.temperature, dim=-1)
    if request.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > request.top_p  # the top token always stays
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs.masked_fill(outside, 0.0))
    return int(torch.multinomial(probs, 1, generator=generator))


def left_pad(states: torch.Tensor, width: int) -> torch.Tensor:
    """(B, heads, T, head_dim) -> (B, heads, width, head_dim), zeros first (the batch mask hides them)."""
    missing = width - states.shape[2]
    if missing == 0:
        return states
    return torch.nn.functional.pad(states, (0, 0, missing, 0))
