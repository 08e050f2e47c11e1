"""Entry points: `evaluate` (one model, one task), `forgetting` (base vs tuned on a benchmark) and the
files they write: results JSON for machines, a Markdown table for people, per-example JSONL."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import UserError
from ..inference import load_for_inference
from ..ops import autocast, pick_precision
from . import metrics
from .preference import eval_preference
from .runner import (
    EvalConfig,
    eval_classification,
    eval_generation,
    eval_multiple_choice,
    eval_perplexity,
    prompt_token_stats,
)


def run_task(model, tokenizer, config: EvalConfig, out_dir: Path | None = None) -> tuple[dict, list]:
    with autocast(model.device, pick_precision(config.precision)):
        return _run_task(model, tokenizer, config, out_dir)


def _run_task(model, tokenizer, config: EvalConfig, out_dir: Path | None) -> tuple[dict, list]:
    start = time.perf_counter()
    if config.task == "generation":
        summary, rows, prompts = eval_generation(model, tokenizer, config)
    elif config.task == "classification":
        summary, rows, prompts = eval_classification(model, tokenizer, config, out_dir)
    elif config.task == "multiple-choice":
        summary, rows, prompts = eval_multiple_choice(model, tokenizer, config)
    elif config.task == "preference":
        summary, rows, prompts = eval_preference(model, tokenizer, config)
    else:
        summary, rows, prompts = eval_perplexity(model, tokenizer, config)
    summary |= prompt_token_stats(tokenizer, prompts)
    summary |= {"examples": len(rows), "seconds": round(time.perf_counter() - start, 1)}
    return summary, rows


def evaluate(config: EvalConfig, out: str | None = None) -> dict:
    model, tokenizer = load_for_inference(config.model, config.adapter)
    out_path = Path(out) if out else None
    if out_path:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    summary, rows = run_task(model, tokenizer, config, out_path.parent if out_path else None)
    results = {"config": config.__dict__, "results": summary}
    if config.groups:
        if config.task not in ("classification", "generation"):
            raise UserError("--groups is for --task classification or generation")
        from .fairness import group_report

        results["groups"] = group_report(model, tokenizer, config, rows, run_task)
    if out_path:
        write_results(results, rows, out_path)
    return results


def forgetting(config: EvalConfig, out: str | None = None) -> dict:
    """The same benchmark with the adapter off and on: what tuning cost the model's general knowledge."""
    model, tokenizer = load_for_inference(config.model, config.adapter)
    if not hasattr(model, "disable_adapter"):
        raise UserError("--forgetting needs a PEFT adapter (--adapter DIR: lora, ia3, prompt-tuning, ...)")
    with model.disable_adapter():
        base, base_rows = run_task(model, tokenizer, config)
    tuned, tuned_rows = run_task(model, tokenizer, config)
    base_hits = [float(r["prediction"] == r["reference"]) for r in base_rows]
    tuned_hits = [float(r["prediction"] == r["reference"]) for r in tuned_rows]
    diff = [t - b for t, b in zip(tuned_hits, base_hits, strict=True)]
    results = {
        "config": config.__dict__,
        "results": {
            "main_metric": "accuracy_change",
            "value": sum(diff) / len(diff),
            "ci95": list(metrics.bootstrap_ci(diff, seed=config.seed)),  # paired: same questions
            "base": base,
            "tuned": tuned,
        },
    }
    if out:
        rows = [{**t, "base_prediction": b["prediction"]} for t, b in zip(tuned_rows, base_rows, strict=True)]
        write_results(results, rows, Path(out))
    return results


def score_predictions(path: str, names: str | None, out: str) -> dict:
    """Score predictions made elsewhere: JSONL rows with `prediction` and `reference` or `references`."""
    predictions, references = [], []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            predictions.append(str(row["prediction"]))
            references.append(row["references"] if "references" in row else str(row["reference"]))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(
                f"{path}:{line_no}: expected a JSON object with prediction and reference ({err})"
            ) from None
    chosen = [m.strip() for m in (names or "rouge,bleu,exact_match").split(",") if m.strip()]
    results = {
        "config": {"task": "predictions", "model": path},
        "results": metrics.score(chosen, predictions, references),
    }
    write_results(results, [], Path(out))
    return results


def write_results(results: dict, rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    out.with_suffix(".md").write_text(markdown_table(results))
    with out.with_suffix(".predictions.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def markdown_table(results: dict) -> str:
    config, summary = results["config"], results["results"]
    lines = [
        f"# {config['task']} evaluation of {config['model']}"
        + (f" + {config['adapter']}" if config.get("adapter") else ""),
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key, value in _flatten(summary):
        lines.append(f"| {key} | {_fmt(value)} |")
    for attribute, entry in results.get("groups", {}).items():
        lines += [
            "",
            f"## {attribute}",
            "",
            "| group | examples | metric | value | 95% CI |",
            "|---|---|---|---|---|",
        ]
        for group, s in entry["slices"].items():
            lines.append(
                f"| {group} | {s['examples']} | {s['metric']} | {_fmt(s['value'])} | {_fmt(s['ci95'])} |"
            )
        probe = entry["counterfactual"]
        if probe["flip_rate"] is not None:
            swapped = f"Counterfactual probe: {probe['examples']} inputs with {attribute} words swapped"
            lines += [
                "",
                f"{swapped}; the prediction changed for {probe['flip_rate']:.1%} {_fmt(probe['ci95'])}.",
            ]
    return "\n".join(lines) + "\n"


def _flatten(d: dict, prefix: str = ""):
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key not in ("report",):
            yield from _flatten(value, f"{name}.")
        elif not isinstance(value, list | dict) or key == "ci95":
            yield name, value


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)
