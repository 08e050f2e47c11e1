"""An answer's `logprobs` in OpenAI's shapes, from the tokens a `Generation` reports with their
log-probabilities: chat's `{"content": [{token, logprob, bytes, top_logprobs}], "refusal"}` and the legacy
completions' `{tokens, token_logprobs, top_logprobs, text_offset}` (shapes.py `ChatLogprobs`,
`TextLogprobs`). The values are the model's own (`inference.scheduler.TokenLogprob` says which)."""

from __future__ import annotations

import math

from ..inference.token_bytes import TokenBytes
from .engine import ReportedToken

UNLIKELY = -9999.0  # OpenAI's value for a log-probability too small to tell (JSON has no -Infinity)


def logprobs_body(tokens: list[ReportedToken], texts: TokenBytes, chat: bool) -> dict:
    return chat_logprobs(tokens, texts) if chat else text_logprobs(tokens, texts)


def chat_logprobs(tokens: list[ReportedToken], texts: TokenBytes) -> dict:
    content = [
        {
            **token_entry(t.token, t.logprob, texts),
            "top_logprobs": [token_entry(i, lp, texts) for i, lp in t.top],
        }
        for t in tokens
    ]
    return {"content": content, "refusal": None}


def text_logprobs(tokens: list[ReportedToken], texts: TokenBytes) -> dict:
    """`top_logprobs` holds the chosen token too (OpenAI: "up to logprobs+1 elements"); two tokens of one
    text keep the likelier one's value."""
    tops = []
    for t in tokens:
        top: dict[str, float] = {}
        for token, logprob in [*t.top, (t.token, t.logprob)]:
            top.setdefault(texts.text_of(token), finite(logprob))
        tops.append(top)
    return {
        "tokens": [texts.text_of(t.token) for t in tokens],
        "token_logprobs": [finite(t.logprob) for t in tokens],
        "top_logprobs": tops,
        "text_offset": [t.offset for t in tokens],
    }


def token_entry(token: int, logprob: float, texts: TokenBytes) -> dict:
    raw = texts.bytes_of(token)
    return {"token": raw.decode("utf-8", errors="replace"), "logprob": finite(logprob), "bytes": list(raw)}


def finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else UNLIKELY
