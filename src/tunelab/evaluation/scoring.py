"""Log-likelihood scoring: how likely the model finds each candidate answer after a chat prompt.

Used for classification (label words) and multiple choice (letters). When every candidate is a single
token, one forward pass per prompt reads them all from the next-token distribution; otherwise each
(prompt, candidate) pair is scored, batched.
"""

from __future__ import annotations

import torch

from ..data.batching import collate
from ..data.tokenize import EncodedExample
from ..inference.generate import chat_prompt_ids


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
    pairs = [(i, j) for i in range(len(prompt_ids)) for j in range(len(cands))]
    items = [
        EncodedExample(prompt_ids[i] + cands[j], [-100] * len(prompt_ids[i]) + cands[j]) for i, j in pairs
    ]
    scores = torch.empty(len(prompt_ids), len(cands))
    for start in range(0, len(items), batch_size):
        chunk = list(range(start, min(start + batch_size, len(items))))
        batch = collate([items[k] for k in chunk], pad_id)
        logits = model(
            input_ids=batch["input_ids"].to(model.device),
            attention_mask=batch["attention_mask"].to(model.device),
        ).logits.float()
        labels = batch["labels"].to(model.device)[:, 1:]  # (B, T-1)
        logprobs = logits[:, :-1].log_softmax(-1)
        gathered = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels != -100)
        for k, total in zip(chunk, gathered.sum(-1).tolist(), strict=True):
            i, j = pairs[k]
            scores[i, j] = total
    return scores
