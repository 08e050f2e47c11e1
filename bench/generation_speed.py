"""Batched generation (left padding, KV cache) against one `generate` call per example, embedded model.

python bench/generation_speed.py --n 32 --max-new-tokens 32
"""

import argparse
import time

from tunelab.demo import make_examples
from tunelab.inference import generate, load_for_inference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    model, tokenizer = load_for_inference("default")
    conversations = [e.messages[:-1] for e in make_examples(args.n, seed=0)]
    timings = {}
    for name, batch_size in (("batched", args.batch_size), ("one by one", 1)):
        start = time.perf_counter()
        outputs = generate(
            model, tokenizer, conversations, max_new_tokens=args.max_new_tokens, batch_size=batch_size
        )
        timings[name] = time.perf_counter() - start
        print(f"{name:>10}: {timings[name]:6.1f} s for {len(outputs)} examples")
    print(f"speed-up: {timings['one by one'] / timings['batched']:.1f}x")


if __name__ == "__main__":
    main()
