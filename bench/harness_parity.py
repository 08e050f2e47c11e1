"""Parity with lm-evaluation-harness: the same MMLU questions, exemplars and model scored by both tools.

    make bench-harness        # or: python bench/harness_parity.py --harness .venv-bench/bin/lm_eval

The harness runs from its own environment (`make bench-harness` builds `.venv-bench`; it is never a
dependency of tunelab). The questions are a stratified sample of `../shared/data/mmlu/val` (tunelab's own
sampler, seeded); each subject becomes a harness task over local JSONL files, written with the harness's own
MMLU templates (letter: `mmlu`, cloze: `mmlu_continuation`) and its `first_n` exemplars from `dev/`. Prints
both tools' accuracy per mode and how many questions they answer alike. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import yaml

from tunelab.evaluation import EvalConfig, evaluate
from tunelab.evaluation.benchmarks import read_split, stratified_sample
from tunelab.models.loading import materialize, resolve

TEMPLATES = {  # lm-evaluation-harness 0.4: tasks/mmlu/default and tasks/mmlu/continuation
    "letter": {
        "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
        "D. {{choices[3]}}\nAnswer:",
        "doc_to_choice": ["A", "B", "C", "D"],
        "description": "The following are multiple choice questions (with answers) about {subject}.\n\n",
        "metric_list": [{"metric": "acc"}],
    },
    "cloze": {
        "doc_to_text": "Question: {{question.strip()}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "description": "The following are questions (with answers) about {subject}.\n\n",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    },
}


def write_tasks(questions, folder: Path, mmlu: Path) -> dict[str, list[str]]:
    """One harness task per subject and mode over JSONL copies of the sampled questions; returns the task
    names per mode, and keeps each subject's questions in tunelab's order."""
    dev = read_split(mmlu, "dev")
    tasks: dict[str, list[str]] = {mode: [] for mode in TEMPLATES}
    for subject in sorted({q.subject for q in questions}):
        slug = subject.replace(" ", "_")
        for split, rows in (("test", [q for q in questions if q.subject == subject]),
                            ("dev", [q for q in dev if q.subject == subject])):  # fmt: skip
            with (folder / f"{slug}_{split}.jsonl").open("w") as f:
                for q in rows:
                    f.write(
                        json.dumps({"question": q.question, "choices": q.options, "answer": q.answer}) + "\n"
                    )
        for mode, template in TEMPLATES.items():
            name = f"tunelab_{mode}_{slug}"
            task = {
                "task": name, "dataset_path": "json", "output_type": "multiple_choice",
                "dataset_kwargs": {"data_files": {split: str(folder / f"{slug}_{split}.jsonl")
                                                  for split in ("test", "dev")}},
                "test_split": "test", "fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"},
                "doc_to_target": "answer", **template,
                "description": template["description"].format(subject=subject),
            }  # fmt: skip
            (folder / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
            tasks[mode].append(name)
    return tasks


def run_harness(lm_eval: str, model_dir: str, tasks: list[str], folder: Path, shots: int, out: Path) -> dict:
    """{(task, doc id): the harness's logged sample: its log-likelihoods and per-question metrics}."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [lm_eval, "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
           "--tasks", ",".join(tasks), "--include_path", str(folder), "--num_fewshot", str(shots),
           "--batch_size", "8", "--device", "cpu", "--log_samples", "--output_path", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, env=env)
    samples = {}
    for path in out.rglob("samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        for line in path.read_text().splitlines():
            sample = json.loads(line)
            samples[(task, sample["doc_id"])] = sample
    return samples


def pick(sample: dict) -> int:
    lls = [float(resp[0]) for resp in sample["filtered_resps"]]
    return max(range(len(lls)), key=lls.__getitem__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--harness", default=".venv-bench/bin/lm_eval", help="the harness's lm_eval command")
    parser.add_argument("--mmlu", default="../shared/data/mmlu")
    parser.add_argument("--model", default="default")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="letter,cloze")
    args = parser.parse_args()

    mmlu = Path(args.mmlu)
    questions = stratified_sample(read_split(mmlu, "val"), args.limit, args.seed)
    model_dir = materialize(resolve(args.model))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tasks = write_tasks(questions, folder, mmlu)
        for mode in args.modes.split(","):
            config = EvalConfig(
                model=args.model, task="multiple-choice", benchmark=f"mmlu:{mmlu}", mode=mode,
                shots=args.shots, limit=args.limit, seed=args.seed, precision="fp32",
            )  # fmt: skip
            ours = evaluate(config, str(folder / f"ours-{mode}.json"))["results"]
            rows = [
                json.loads(x) for x in (folder / f"ours-{mode}.predictions.jsonl").read_text().splitlines()
            ]
            theirs = run_harness(
                args.harness, model_dir, tasks[mode], folder, args.shots, folder / f"lm-{mode}"
            )
            position: dict[str, int] = {}
            matched = []
            for row in rows:  # the harness numbers each subject's documents in file order, as written
                task = f"tunelab_{mode}_{row['subject'].replace(' ', '_')}"
                doc = position[task] = position.get(task, -1) + 1
                matched.append((row, theirs[(task, doc)]))
            alike = sum(pick(sample) == row["prediction"] for row, sample in matched)
            report = {"mode": mode, "questions": len(rows), "shots": args.shots, "same_answer": alike,
                      "tunelab": {"acc": ours["value"], "acc_norm": ours.get("acc_norm")}}  # fmt: skip
            report["harness"] = {
                metric: sum(sample[metric] for _, sample in matched) / len(matched)
                for metric in ("acc", "acc_norm") if metric in matched[0][1]
            }  # fmt: skip
            print(json.dumps(report))


if __name__ == "__main__":
    main()
