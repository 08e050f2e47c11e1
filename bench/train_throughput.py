"""Training throughput of each method on the embedded model: tokens/s, wall time, peak memory.

    python bench/train_throughput.py --methods lora,full --precisions fp32,bf16 --steps 10

Uses the demo's generated task (no downloads). Not a test: numbers depend on the machine.
"""

import argparse
import json
import tempfile
from pathlib import Path

from tunelab.demo import make_examples, write_jsonl
from tunelab.training import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lora,full,adapter,ia3,prompt-tuning")
    parser.add_argument("--precisions", default="auto")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        write_jsonl(make_examples(200, seed=0), data)
        for method in args.methods.split(","):
            for precision in args.precisions.split(","):
                out = Path(tmp) / f"{method}-{precision}"
                config = TrainConfig(
                    model="default", data=str(data), out=str(out), method=method, precision=precision,
                    max_steps=args.steps, batch_size=args.batch_size,
                )  # fmt: skip
                summary = train(config).summary
                rows.append({"method": method, "precision": precision, **summary})
                print(json.dumps(rows[-1]))
    print(f"\n{'method':<14}{'precision':<10}{'tokens/s':>10}{'wall s':>9}{'peak MB':>9}{'trainable':>13}")
    for r in rows:
        print(
            f"{r['method']:<14}{r['precision']:<10}{r['tokens_per_s']:>10}{r['wall_time_s']:>9}"
            f"{r['peak_memory_mb']:>9}{r['trainable_params']:>13,}"
        )


if __name__ == "__main__":
    main()
