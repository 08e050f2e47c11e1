"""Grading files: `tunelab grade` (answers made elsewhere) and `tunelab eval --grader` (a model's answers,
generated here), with one report: the mean reward with a 95% bootstrap interval, the same per sub-grader,
the pass rate where the grader has one, and the rows that errored, with their line numbers.

Here rather than in evaluation/: graders sit above it, and it must not import them."""

from __future__ import annotations

import json
from pathlib import Path

from ..evaluation.config import EvalConfig
from .base import Grader, GraderError, GradeResult, GradingContext, Sample
from .config import GradeConfig
from .parsing import load_grader

ERRORS_SHOWN = 5


def read_jsonl(path: str) -> list[tuple[int, object]]:
    """(line number, value) of each non-blank line; an error names the file and line."""
    if not Path(path).is_file():
        raise GraderError(f"{path}: no such file")
    rows = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((line_no, json.loads(line)))
        except json.JSONDecodeError as err:
            raise GraderError(f"{path}:{line_no}: not JSON ({err.msg})") from None
    if not rows:
        raise GraderError(f"{path}: no rows")
    return rows


def read_items(path: str) -> list[tuple[int, dict]]:
    rows = read_jsonl(path)
    for line_no, row in rows:
        if not isinstance(row, dict):
            raise GraderError(f"{path}:{line_no}: expected a JSON object (the item graders see)")
    return rows  # type: ignore[return-value]


def read_answers(path: str) -> list[tuple[int, str]]:
    """Each line's answer: `tunelab generate`'s {"prediction": ...}, {"output_text": ...} or a JSON string."""
    answers = []
    for line_no, row in read_jsonl(path):
        answer = row.get("prediction", row.get("output_text")) if isinstance(row, dict) else row
        if not isinstance(answer, str):
            raise GraderError(
                f'{path}:{line_no}: expected {{"prediction": "..."}} (tunelab generate), '
                '{"output_text": "..."} or a JSON string'
            )
        answers.append((line_no, answer))
    return answers


def grade_files(config: GradeConfig, context: GradingContext | None = None) -> dict:
    """Grade each answer of `config.predictions` against the row on the same line of `config.data`.
    Python graders run (in the sandbox) unless the context says otherwise: the grader file is the user's."""
    context = context or GradingContext(python_graders=True, seed=config.seed)
    grader = load_grader(config.grader, context)
    items, answers = read_items(config.data), read_answers(config.predictions)
    if len(items) != len(answers):
        raise GraderError(
            f"{config.data} has {len(items)} rows but {config.predictions} has {len(answers)} answers; "
            "they go line for line"
        )
    texts = [answer for _, answer in answers]
    results = grader.grade_many([Sample.from_text(t) for t in texts], [item for _, item in items], context)
    lines = [line for line, _ in items]
    rows = result_rows(lines, texts, results)
    if config.out:
        write_jsonl(Path(config.out), rows)
    return {
        "config": {"grader": config.grader, "data": config.data},
        "results": summarise(grader, results, lines, config.seed),
    }


def evaluate_with_grader(
    config: EvalConfig, out: str | None = None, context: GradingContext | None = None
) -> dict:
    """Generate the model's answer to each row's messages (greedy; a final assistant message is the
    reference, not the prompt) and grade them; the report goes to `out`, a .md and .predictions.jsonl
    beside it."""
    from ..inference.generation import generate, load_for_inference, require_generative
    from ..ops import autocast, pick_precision

    context = context or GradingContext(python_graders=True, seed=config.seed)
    grader = load_grader(config.grader, context)  # before the model loads: a bad grader fails at once
    items = read_items(config.data)[: config.limit]
    prompts = [prompt_of(item, config.data, line) for line, item in items]
    require_generative(config.model, config.adapter, "eval --grader")
    model, tokenizer = load_for_inference(config.model, config.adapter)
    with autocast(model.device, pick_precision(config.precision)):
        texts = generate(
            model, tokenizer, prompts, config.max_new_tokens, batch_size=config.batch_size, seed=config.seed
        )
    results = grader.grade_many([Sample.from_text(t) for t in texts], [item for _, item in items], context)
    lines = [line for line, _ in items]
    report = {
        "config": dict(config.__dict__, task="grader"),
        "results": summarise(grader, results, lines, config.seed),
    }
    if out:
        write_report(report, result_rows(lines, texts, results), Path(out))
    return report


def prompt_of(item: dict, path: str, line: int) -> list[dict]:
    messages = item.get("messages")
    if not (
        isinstance(messages, list)
        and messages
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        raise GraderError(f'{path}:{line}: expected "messages": a list of {{"role", "content"}} (the prompt)')
    return messages


def summarise(grader: Grader, results: list[GradeResult], lines: list[int], seed: int) -> dict:
    from ..evaluation.metrics import bootstrap_ci

    def mean_and_interval(values: list[float]) -> dict:
        return {"mean": sum(values) / len(values), "ci95": list(bootstrap_ci(values, seed=seed))}

    summary: dict = {"grader": grader.name, "type": grader.type, "rows": len(results)}
    summary["reward"] = mean_and_interval([result.reward for result in results])
    if results[0].sub_rewards:
        keys = results[0].sub_rewards
        summary["sub_rewards"] = {
            key: mean_and_interval([r.sub_rewards[key] for r in results]) for key in keys
        }
    if passed := [result.passed for result in results if result.passed is not None]:
        summary["pass_rate"] = sum(passed) / len(passed)
    failed = [(line, result) for line, result in zip(lines, results, strict=True) if result.errors]
    summary["rows_with_errors"] = len(failed)
    summary["errors"] = [
        {"line": line, "error": "; ".join(result.errors)} for line, result in failed[:ERRORS_SHOWN]
    ]
    return summary


def result_rows(lines: list[int], texts: list[str], results: list[GradeResult]) -> list[dict]:
    rows = []
    for line, text, result in zip(lines, texts, results, strict=True):
        row = {"line": line, "reward": result.reward, "output_text": text, "errors": result.errors}
        if result.sub_rewards:
            row["sub_rewards"] = result.sub_rewards
        if result.passed is not None:
            row["passed"] = result.passed
        if result.scores:
            row["scores"] = result.scores
        rows.append(row)
    return rows


def markdown(report: dict) -> str:
    """The report for people: a table of the numbers, then the first errors with their lines."""
    summary, config = report["results"], report["config"]
    of = f" of {config['model']}" if "model" in config else ""  # eval --grader's model (and adapter)
    of += f" + {config['adapter']}" if config.get("adapter") else ""
    reward = summary["reward"]
    lines = [
        f"# grader {summary['grader']} ({summary['type']}){of} on {config['data']}",
        "",
        "| metric | value | 95% CI |",
        "|---|---|---|",
        f"| rows | {summary['rows']} | |",
        f"| reward | {reward['mean']:.4f} | {interval(reward)} |",
    ]
    for key, entry in summary.get("sub_rewards", {}).items():
        lines.append(f"| reward of {key} | {entry['mean']:.4f} | {interval(entry)} |")
    if "pass_rate" in summary:
        lines.append(f"| pass rate | {summary['pass_rate']:.4f} | |")
    lines.append(f"| rows with errors | {summary['rows_with_errors']} | |")
    if summary["errors"]:
        lines += ["", f"First errors ({len(summary['errors'])} of {summary['rows_with_errors']}):"]
        lines += [f"- line {entry['line']}: {entry['error']}" for entry in summary["errors"]]
    return "\n".join(lines) + "\n"


def interval(entry: dict) -> str:
    low, high = entry["ci95"]
    return f"[{low:.4f}, {high:.4f}]"


def write_report(report: dict, rows: list[dict], out: Path) -> None:
    """As `tunelab eval` writes its results: JSON at `out`, a .md table and .predictions.jsonl beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    out.with_suffix(".md").write_text(markdown(report))
    write_jsonl(out.with_suffix(".predictions.jsonl"), rows)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
