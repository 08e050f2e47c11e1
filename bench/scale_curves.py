"""Training tokens/s and peak memory against sequence length and model size (issue 15's scale curves).

    python bench/scale_curves.py --lengths 256,512,1024,2048 --models default,/path/to/gemma-3-270m.gguf

Each point is a LoRA run (r=16, alpha=32, all linear layers, fp32) of `--steps` steps of `--rows` rows,
every row `length` tokens long: legal case documents from ../shared/data/legal_multilexsum, joined, as the
answer to "Summarize the case", cut at the length. Each run is its own process, so its peak RSS is its own.
Tokens/s is over the steps after the first (the first pays one-off allocations). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

DOCUMENTS = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "legal_multilexsum" / "multilexsum.jsonl"
)
CHARS_PER_TOKEN = 5  # conservative: a document this many characters per token long fills the length


def long_rows(length: int, rows: int) -> list[dict]:
    """`rows` answers of at least `length` tokens: documents joined end to end until long enough."""
    documents = iter([json.loads(line)["document"] for line in DOCUMENTS.open()] * 4)
    answers = []
    for _ in range(rows):
        answer = ""
        while len(answer) < CHARS_PER_TOKEN * length:
            answer += next(documents) + "\n\n"
        answers.append(answer)
    prompt = {"role": "user", "content": "Summarize the case."}
    return [{"messages": [prompt, {"role": "assistant", "content": answer}]} for answer in answers]


def run_point(model: str, length: int, args, tmp: Path) -> dict:
    data = tmp / f"rows-{length}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in long_rows(length, args.rows * args.steps)))
    out = tmp / f"run-{Path(model).stem}-{length}"
    command = [
        str(Path(sys.executable).parent / "tunelab"), "train", "--model", model, "--data", str(data),
        "--out", str(out),
        "--method", "lora", "--lora-r", "16", "--lora-alpha", "32", "--precision", "fp32",
        "--max-length", str(length), "--batch-size", str(args.rows), "--max-steps", str(args.steps),
        "--log-every", "1", "--overwrite",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{model} at {length} tokens failed:\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    steps = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    steps = [r for r in steps if r.get("kind") == "train"]
    later = steps[1:] or steps
    seconds = later[-1]["elapsed_s"] - (steps[0]["elapsed_s"] if len(steps) > 1 else 0)
    tokens = args.rows * length * len(later)
    return {
        "model": model,
        "length": length,
        "rows": args.rows,
        "tokens_per_s": round(tokens / seconds, 1),
        "peak_memory_mb": summary["peak_memory_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default")
    parser.add_argument("--lengths", default="256,512,1024,2048")
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores", flush=True)
    print("| model | length | rows | tokens/s | peak RSS MB |\n|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for length in (int(x) for x in args.lengths.split(",")):
                point = run_point(model, length, args, Path(tmp))
                print(f"| {Path(model).name} | {length} | {args.rows} | {point['tokens_per_s']} | "
                      f"{point['peak_memory_mb']} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
