"""The `tunelab demo` task learnt from a reward instead of from answers: reinforcement fine-tuning (GRPO)
with a python grader that scores the share of the person's fields an answer states as JSON.

python examples/rl_demo.py --out /tmp/rl-demo            # about half an hour on a 2-core laptop CPU

It writes the demo's data as OpenAI reinforcement fine-tuning lines (`messages` and the fields the grader
reads, `expected` and `answer`), the grader, then runs the `tunelab` commands a user would, printing each:
the embedded model's answers to the 50 held-out rows graded before training, after the demo's SFT run (the
answers learnt from examples), after GRPO from the base (the reward only) and, with --sft-then-grpo, after
GRPO from the SFT adapter. One grader gives both figures: `multi` with the fields' share as its reward and
exact match (a `string_check` against the demo's answer) as a sub-reward. Then a table, with each run's
training time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tunelab.demo import make_examples

FIELDS_SOURCE = '''import json
import re


def grade(sample, item):
    """The share of the expected fields that the answer states as JSON ("key": value), halved unless the
    whole answer is one JSON object."""
    text, expected = sample["output_text"], item["expected"]
    found = sum(
        re.search(rf'"{key}"\\s*:\\s*{re.escape(json.dumps(value))}', text) is not None
        for key, value in expected.items()
    )
    try:
        whole = isinstance(json.loads(text), dict)
    except ValueError:
        whole = False
    return found / len(expected) * (1.0 if whole else 0.5)
'''
FIELDS = {"type": "python", "name": "fields", "source": FIELDS_SOURCE}
EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
         "reference": "{{item.answer}}", "operation": "eq"}  # fmt: skip
REPORT = {"type": "multi", "name": "fields and exact match", "graders": {"fields": FIELDS, "exact": EXACT},
          "calculate_output": "fields"}  # fmt: skip


def rl_rows(n: int, seed: int) -> list[dict]:
    """The demo's examples as prompts, with the demo's answer and its fields for the graders."""
    rows = []
    for example in make_examples(n, seed):
        answer = example.messages[-1]["content"]
        rows.append({"messages": example.messages[:-1], "expected": json.loads(answer), "answer": answer})
    return rows


def write(path: Path, value) -> Path:
    if isinstance(value, list):
        path.write_text("".join(json.dumps(row) + "\n" for row in value))
    else:
        path.write_text(json.dumps(value, indent=1))
    return path


def tunelab(*args) -> float:
    """Runs one `tunelab` command as a user would; its wall time in seconds."""
    command = ["tunelab", *map(str, args)]
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tunelab", *map(str, args)], check=True)
    return time.perf_counter() - start


def graded(out: Path, name: str, test: Path, report: Path, adapter: Path | None) -> dict:
    result = out / f"{name}.json"
    tunelab("eval", "--model", "default", *(["--adapter", adapter] if adapter else []), "--data", test,
            "--grader", report, "--max-new-tokens", 64, "--out", result)  # fmt: skip
    return json.loads(result.read_text())["results"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/rl-demo")
    parser.add_argument("--steps", type=int, default=30, help="GRPO optimizer steps (4 prompts x 8 answers)")
    parser.add_argument("--sft-then-grpo", action="store_true", help="also GRPO from the SFT adapter")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = write(out / "train.jsonl", rl_rows(300, 1)), write(out / "test.jsonl", rl_rows(50, 2))
    grader, report = write(out / "fields.json", FIELDS), write(out / "report.json", REPORT)
    sft_data = out / "sft.jsonl"  # the demo's own training file: the same 300 examples with their answers
    sft_data.write_text("".join(json.dumps({"messages": e.messages}) + "\n" for e in make_examples(300, 1)))
    grpo = ["--objective", "grpo", "--grader", grader, "--data", train, "--max-steps", args.steps,
            "--batch-size", 4, "--generations", 8, "--max-completion-tokens", 48, "--lr", 2e-4]  # fmt: skip

    sft = ["--data", sft_data, "--max-steps", 30, "--lr", 1e-3, "--batch-size", 8]  # the demo's settings
    runs = {  # name -> (folder, training flags; None: the base model)
        "base model": ("base", None),
        "SFT (the demo: 30 steps on 300 answers)": ("sft", sft),
        f"GRPO from the base ({args.steps} steps)": ("grpo", grpo),
    }
    if args.sft_then_grpo:
        runs[f"SFT, then GRPO ({args.steps} steps)"] = ("sft-grpo", [*grpo, "--init-adapter", out / "sft"])
    rows = {}
    for name, (folder, flags) in runs.items():
        seconds = tunelab("train", *flags, "--out", out / folder, "--overwrite") if flags else None
        rows[name] = (seconds, graded(out, folder, test, report, out / folder if flags else None))

    print("\n| model | training | fields reward [95% CI] | exact match [95% CI] |\n|---|---|---|---|")
    for name, (seconds, result) in rows.items():
        fields, exact = result["reward"], result["sub_rewards"]["exact"]
        print(f"| {name} | {f'{seconds:.0f} s' if seconds else '-'} | {fields['mean']:.3f} "
              f"[{fields['ci95'][0]:.3f}, {fields['ci95'][1]:.3f}] | {exact['mean']:.2f} "
              f"[{exact['ci95'][0]:.2f}, {exact['ci95'][1]:.2f}] |")  # fmt: skip


if __name__ == "__main__":
    main()
