"""`tunelab eval --groups FILE`: the metric on each group's slice of the test data, and a counterfactual
probe: the same inputs with the group words swapped (he<->she, names from the file), evaluated again; how
often the prediction changes measures what the model learnt from the group words alone."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from ..data.groups import load_groups, mentions, swapper
from ..data.tokenize import chat_messages
from . import metrics
from .config import EvalConfig
from .runner import question_and_answer, read_examples


def _slice(rows: list[dict], names: list[str], seed: int) -> dict:
    result = metrics.score(names, [r["prediction"] for r in rows], [r["reference"] for r in rows], seed=seed)
    return {
        "examples": len(rows),
        "value": result["value"],
        "ci95": result["ci95"],
        "metric": result["main_metric"],
    }


def group_report(model, tokenizer, config: EvalConfig, rows: list[dict], run_task) -> dict:
    """Slices and flip rates per attribute of the groups file; `run_task` evaluates a changed config."""
    groups = load_groups(config.groups)
    examples = read_examples(config)
    questions = [question_and_answer(e)[0] for e in examples]
    names = ["accuracy"] if config.task == "classification" else (config.metrics or ["exact_match"])
    report = {}
    for attribute, members in groups.items():
        hits = [mentions(q, members) for q in questions]
        slices = {
            group: _slice([r for r, h in zip(rows, hits, strict=True) if group in h], names, config.seed)
            for group in members
            if any(group in h for h in hits)
        }
        probe = _probe(model, tokenizer, config, examples, rows, swapper(members), run_task)
        report[attribute] = {"slices": slices, "counterfactual": probe}
    return report


def _probe(model, tokenizer, config: EvalConfig, examples, rows, swap, run_task) -> dict:
    """Re-evaluate every input whose text changes when group words are swapped; count changed answers."""
    changed, swapped = [], []
    for i, example in enumerate(examples):
        messages = chat_messages(example)
        new = [{**m, "content": swap(m["content"])} if m["role"] != "assistant" else m for m in messages]
        if new != messages:
            changed.append(i)
            swapped.append({"messages": new})
    if not changed:
        return {"examples": 0, "flip_rate": None}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "counterfactual.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in swapped))
        probe = dataclasses.replace(config, data=str(data), limit=None, groups=None, val=None)
        _, new_rows = run_task(model, tokenizer, probe)
    flips = [
        float(new["prediction"] != rows[i]["prediction"]) for i, new in zip(changed, new_rows, strict=True)
    ]
    samples = [
        {"line": examples[i].line, "swapped": swap(question_and_answer(examples[i])[0])[:200],
         "before": rows[i]["prediction"], "after": new_rows[k]["prediction"]}
        for k, i in enumerate(changed) if flips[k]
    ][:5]  # fmt: skip
    return {
        "examples": len(changed),
        "flip_rate": sum(flips) / len(flips),
        "ci95": list(metrics.bootstrap_ci(flips, seed=config.seed)),
        "samples": samples,
    }
