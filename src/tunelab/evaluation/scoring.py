"""Log-likelihood scoring: how likely the model finds each candidate answer after a prompt.

Used for classification (label words after a chat prompt) and multiple-choice benchmarks (letters or option
texts after a plain-text context, tokenised as lm-evaluation-harness does). When every candidate is the same
single token for every prompt, one forward pass per prompt reads them all from the next-token distribution;
otherwise each (prompt, candidate) pair is scored, batched.
"""

from __future__ import annotations

import torch

from ..data.batching import collate
from ..data.tokenize import EncodedExample
from ..inference.generation import chat_prompt_ids


def candidate_ids(tokenizer, candidates: list[str]) -> list[list[int]]:
    return [tokenizer(c, add_special_tokens=False)["input_ids"] for c in candidates]


@torch.no_grad()
def score_candidates(
    model,
    tokenizer,
    prompts: list[list[dict]],
    candidates: list[str],
    batch_size: int = 8,
    max_length: int = 2048,
) -> torch.Tensor:
    """(N, C) summed log-probabilities of each candidate answer after each prompt."""
    model.eval()
    cands = candidate_ids(tokenizer, candidates)
    prompt_ids = [chat_prompt_ids(tokenizer, p)[-max_length:] for p in prompts]
    if all(len(c) == 1 for c in cands):
        return _single_token_scores(
            model, prompt_ids, [c[0] for c in cands], tokenizer.pad_token_id, batch_size
        )
    return _sequence_scores(model, prompt_ids, cands, tokenizer.pad_token_id, batch_size)


def _single_token_scores(model, prompt_ids, token_ids, pad_id, batch_size) -> torch.Tensor:
    rows = []
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate([EncodedExample(prompt_ids[i], []) for i in chunk], pad_id, padding_side="left")
        logits = model(
            input_ids=batch["input_ids"].to(model.device),
            attention_mask=batch["attention_mask"].to(model.device),
            logits_to_keep=1,
        ).logits[:, -1]  # (B, V): left padding puts every prompt's last token at the end
        rows.append((chunk, logits.float().log_softmax(-1)[:, token_ids].cpu()))
    scores = torch.empty(len(prompt_ids), len(token_ids))
    for chunk, values in rows:
        scores[chunk] = values
    return scores


def _sequence_scores(model, prompt_ids, cands, pad_id, batch_size) -> torch.Tensor:
    pairs = [(prompt, cand) for prompt in prompt_ids for cand in cands]
    return torch.tensor(_pair_scores(model, pairs, pad_id, batch_size)).reshape(len(prompt_ids), len(cands))


def _pair_scores(model, pairs: list[tuple[list[int], list[int]]], pad_id, batch_size) -> list[float]:
    """Summed log-probability of each continuation's tokens after its context's tokens."""
    items = [EncodedExample(context + cont, [-100] * len(context) + cont) for context, cont in pairs]
    scores = []
    for start in range(0, len(items), batch_size):
        batch = collate(items[start : start + batch_size], pad_id)
        logits = model(
            input_ids=batch["input_ids"].to(model.device),
            attention_mask=batch["attention_mask"].to(model.device),
        ).logits.float()
        labels = batch["labels"].to(model.device)[:, 1:]  # (B, T-1)
        logprobs = logits[:, :-1].log_softmax(-1)
        gathered = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels != -100)
        scores += gathered.sum(-1).tolist()
    return scores


def encode_pair(tokenizer, context: str, continuation: str, max_length: int) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) split as lm-evaluation-harness splits them: the context's trailing
    spaces move to the continuation, the pair is encoded whole, and the continuation is what follows the
    context's own tokens. The context is cut from the left to fit `max_length`."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    continuation_ids = whole[len(context_ids) :]
    return context_ids[-(max_length - len(continuation_ids)) :], continuation_ids


@torch.no_grad()
def score_continuations(
    model, tokenizer, contexts: list[str], continuations: list[list[str]], batch_size=8, max_length=2048
) -> list[list[float]]:
    """Summed log-probabilities of each question's continuations after its plain-text context (no chat
    template), as lm-evaluation-harness computes them; questions may have different numbers of them."""
    model.eval()
    encoded = [[encode_pair(tokenizer, c, cont, max_length) for cont in conts] for c, conts in
               zip(contexts, continuations, strict=True)]  # fmt: skip
    tokens = [[cont for _, cont in row] for row in encoded]
    shared_context = all(context == row[0][0] for row in encoded for context, _ in row)
    if (
        shared_context
        and all(len(t) == 1 for row in tokens for t in row)
        and all(row == tokens[0] for row in tokens)
    ):  # letters: one forward pass per question reads every option
        prompt_ids = [row[0][0] for row in encoded]
        token_ids = [t[0] for t in tokens[0]]
        return _single_token_scores(model, prompt_ids, token_ids, tokenizer.pad_token_id, batch_size).tolist()
    flat = _pair_scores(model, [pair for row in encoded for pair in row], tokenizer.pad_token_id, batch_size)
    scores, start = [], 0
    for row in encoded:
        scores.append(flat[start : start + len(row)])
        start += len(row)
    return scores
