"""A long prompt arriving while other answers stream, on the service's engine (in process, embedded model):
how long the streaming answers stall, and how long the long prompt waits for its first token, with its
prefill in one pass (`--prefill-chunk-tokens 0`) and in chunks between decode steps.

python bench/chunked_prefill.py [--streams 4] [--long-tokens 1500] [--chunk 512]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time

from serve_batching import machine

from tunelab.service.engine import Engine, Generation, Sampling, Target
from tunelab.service.metrics import Metrics
from tunelab.service.settings import ServiceSettings

TEXT = "Tell me about the history of the city and its river, its bridges and its people. "


def stalls(chunk: int, streams: int, long_tokens: int) -> tuple[float, float, float]:
    """(the streams' longest pause between two tokens while the long prompt was prefilled, their median
    pause before it came, the long prompt's seconds to its first token)."""
    settings = ServiceSettings(
        data_dir=tempfile.mkdtemp(), base_models={"base": "default"}, prefill_chunk_tokens=chunk
    )
    engine = Engine(settings, metrics=Metrics())
    engine.base("base")
    tokenizer = engine.tokenizer("base")
    base = Target("base", "base")
    stamps: list[list[float]] = [[] for _ in range(streams)]
    running = []
    for i in range(streams):
        ids = tokenizer(f"Story {i}: once upon a time")["input_ids"]
        sampling = Sampling(max_tokens=10_000, temperature=0.0, logit_bias={tokenizer.eos_token_id: -100.0})
        generation = Generation(engine, base, ids, sampling)
        stamped(generation.request, stamps[i])
        running.append(generation)
        threading.Thread(target=generation.run).start()
    time.sleep(3)  # the streams are decoding
    long_ids = tokenizer(TEXT * (2 * long_tokens // len(tokenizer(TEXT)["input_ids"])))["input_ids"][
        :long_tokens
    ]
    start = time.perf_counter()
    long = Generation(engine, base, long_ids, Sampling(max_tokens=1, temperature=0.0))
    long.run()
    first = time.perf_counter() - start
    time.sleep(2)  # the streams' next tokens end their pause
    for generation in running:
        generation.cancel()
    gaps = [(a, b) for s in stamps for a, b in zip(s, s[1:], strict=False)]
    before = sorted(b - a for a, b in gaps if b < start)
    during = [b - a for a, b in gaps if b >= start and a <= start + first]
    return max(during), before[len(before) // 2], first


def stamped(request, stamps: list[float]) -> None:
    """Note when each of the request's tokens comes (the scheduler looks `on_token` up at every token)."""
    on_token = request.on_token
    request.on_token = lambda *token: (stamps.append(time.perf_counter()), on_token(*token))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--long-tokens", type=int, default=1500)
    parser.add_argument("--chunk", type=int, default=512)
    args = parser.parse_args()
    print(f"machine: {machine()}; {args.streams} streams, a {args.long_tokens}-token prompt arrives")
    for chunk in (0, args.chunk):
        worst, usual, first = stalls(chunk, args.streams, args.long_tokens)
        print(
            f"prefill chunk {chunk or 'off'}: streams paused up to {worst:.2f} s (before: {usual * 1000:.0f} "
            f"ms a token); the long prompt's first token after {first:.2f} s"
        )


if __name__ == "__main__":
    main()
