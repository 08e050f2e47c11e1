"""`tunelab compress-report`: models side by side (a teacher, its pruned or distilled student, an int8
copy): parameters, weight files, peak memory, generation speed (one prompt at a time and batched) and
quality on the user's test set, in the same files and look as `tunelab compare`'s report.

Each model is measured in its own process, so its peak memory is its own. Speed is greedy generation of
exactly `new_tokens` tokens per prompt (end-of-turn ignored), so every model does the same work.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

from ..processes import as_caller, caller, fresh_processes
from ..report_page import cell_text, figure_png, figures_html, html_page, html_table, markdown_table
from ..run_dir import RunDir
from .config import ReportConfig

COLUMNS = [
    ("name", "model"),
    ("params", "parameters"),
    ("weights_mb", "weights MB"),
    ("size_pct", "size vs first"),
    ("peak_memory_mb", "peak MB"),
    ("tokens_per_s_single", "tokens/s, 1 prompt"),
    ("tokens_per_s_batched", "tokens/s, batched"),
    ("speedup", "speed-up (1 prompt)"),
    ("value", "quality"),
    ("ci95", "95% CI"),
    ("change", "quality change"),
    ("eval_time_s", "eval s"),
]


def load_any(spec: str):
    """(model, tokenizer) for a spec, an adapter folder or a `tunelab quantize` folder."""
    if RunDir(spec).is_quantized():
        from .quantize import load_quantized

        return load_quantized(spec)
    from ..inference import load_for_inference

    return load_for_inference(spec)


def weights_on_disk_mb(spec: str) -> float:
    """What it takes to run it: the weight files, and for an adapter its base's as well."""
    from ..inference.generation import base_of_adapter
    from ..models import materialize, resolve
    from .source import weights_mb

    if RunDir(spec).is_quantized():
        return weights_mb(spec)
    if RunDir(spec).is_adapter():
        return weights_mb(materialize(resolve(base_of_adapter(spec)))) + weights_mb(spec)
    return weights_mb(materialize(resolve(spec)))


def generation_speed(model, tokenizer, prompts: list[list[dict]], new_tokens: int) -> tuple[float, float]:
    """Tokens/s generating `new_tokens` for each prompt: one prompt at a time, then all in one batch."""
    import torch

    from ..inference.generation import chat_prompt

    texts = [chat_prompt(tokenizer, p) for p in prompts]
    tokenizer.padding_side = "left"
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
              "pad_token_id": tokenizer.pad_token_id}  # fmt: skip

    def timed(batch: list[str]) -> float:
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(**enc, **kwargs)
        return time.perf_counter() - start

    timed(texts[:1])  # warm-up: first-call allocations are not the model's speed
    single = sum(timed([text]) for text in texts)
    batched = timed(texts)
    return len(texts) * new_tokens / single, len(texts) * new_tokens / batched


def measure(spec: str, config: ReportConfig) -> dict:
    """One row of the report; runs in its own process."""
    from ..data import load_examples
    from ..evaluation import EvalConfig
    from ..evaluation.api import run_task
    from ..inference.generation import prompt_messages
    from ..quiet import quiet_libraries
    from ..training.memory import peak_bytes
    from .source import parameter_count

    quiet_libraries()
    model, tokenizer = load_any(spec)
    eval_config = EvalConfig(
        model=spec, data=config.test, task=config.task, labels=config.labels, instruction=config.instruction,
        metrics=config.metrics, limit=config.limit, batch_size=config.batch_size, precision="fp32",
    )  # fmt: skip
    results, _ = run_task(model, tokenizer, eval_config)
    examples = load_examples(config.test, for_training=False)[: config.speed_prompts]
    single, batched = generation_speed(
        model, tokenizer, [prompt_messages(e.messages) for e in examples], config.new_tokens
    )
    return {
        "name": Path(spec).name or spec, "model": spec, "params": parameter_count(model),
        "weights_mb": round(weights_on_disk_mb(spec), 2),
        "tokens_per_s_single": round(single, 1), "tokens_per_s_batched": round(batched, 1),
        "metric": results["main_metric"], "value": results["value"], "ci95": results["ci95"],
        "eval_time_s": results["seconds"], "test_examples": results["examples"],
        "peak_memory_mb": round(peak_bytes() / 2**20, 1),
    }  # fmt: skip


def compress_report(config: ReportConfig, log=print) -> dict:
    """Measure every model (each in a fresh process), then write results.json, report.md, report.html."""
    import torch

    rows = []
    for spec in config.models:
        log(f"measuring {spec}")
        with ProcessPoolExecutor(1, mp_context=fresh_processes("tunelab.evaluation.api")) as pool:
            rows.append(pool.submit(as_caller, caller(), measure, spec, config).result())
    first = rows[0]
    for row in rows:
        row["size_pct"] = 100 * row["weights_mb"] / first["weights_mb"]
        row["speedup"] = row["tokens_per_s_single"] / first["tokens_per_s_single"]
        row["change"] = row["value"] - first["value"]
    results = {"config": asdict(config), "threads": torch.get_num_threads(), "models": rows}
    write_reports(results, Path(config.out))
    return results


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    return [title for _, title in COLUMNS], [[cell(row, key) for key, _ in COLUMNS] for row in rows]


def cell(row: dict, key: str) -> str:
    value = row.get(key)
    if key == "size_pct":
        return f"{value:.0f}%"
    if key == "speedup":
        return f"{value:.2f}x"
    if key == "change":
        return f"{value:+.3f}"
    return cell_text(row, key)


def measured_on(results: dict) -> str:
    config, rows = results["config"], results["models"]
    return (
        f"Quality: {rows[0]['metric']} on {rows[0]['test_examples']} examples of {config['test']}. Speed: "
        f"{config['speed_prompts']} prompts x {config['new_tokens']} new tokens, greedy, "
        f"{results['threads']} threads. Size and speed are relative to the first row."
    )


def write_reports(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = results["models"]
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = ["# tunelab compress-report", "", measured_on(results), "", *markdown_table(*table(rows))]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)

    def size_vs_quality(ax):
        for row in rows:
            low, high = row["ci95"]
            error = [[row["value"] - low], [high - row["value"]]]
            ax.errorbar(row["weights_mb"], row["value"], yerr=error, fmt="o", capsize=3)
            ax.annotate(row["name"], (row["weights_mb"], row["value"]), textcoords="offset points",
                        xytext=(5, 5))  # fmt: skip
        ax.set_xlabel("weights MB")
        ax.set_ylabel(rows[0]["metric"])

    body = f"<p>{measured_on(results)}</p>\n{html_table(*table(rows))}\n"
    body += figures_html({"Quality vs size": figure_png(size_vs_quality)})
    (out / "report.html").write_text(html_page("tunelab compress-report", body))
