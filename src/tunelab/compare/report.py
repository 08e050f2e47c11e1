"""The comparison for machines (results.json) and people (report.md, and report.html: one self-contained
file with its plots inline), plus a recommendation computed from the numbers."""

from __future__ import annotations

import html
import json
from pathlib import Path

from ..report_page import cell_text, figure_png, figures_html, html_page, html_table, markdown_table
from .preference import NOTE as PREFERENCE_NOTE

COLUMNS = [
    ("method", "method"),
    ("value", "quality"),
    ("ci95", "95% CI"),
    ("reward_accuracy", "reward accuracy vs base [95% CI]"),
    ("margin", "margin vs base, nats [95% CI]"),
    ("trainable_params", "trainable params"),
    ("params", "model params"),
    ("steps", "steps (planned)"),
    ("epochs", "epochs"),
    ("max_lr_reached", "peak lr reached / set"),
    ("train_time_s", "train s"),
    ("eval_time_s", "eval s"),
    ("tokens_per_s", "train tokens/s"),
    ("peak_memory_mb", "peak MB"),
    ("artifact_mb", "artefact MB"),
    ("prompt_tokens_per_request", "prompt tokens/request"),
    ("forgetting", "forgetting (MMLU change)"),
    ("sweep", "swept: the best trial"),
]
# Columns shown only when a row has them: swept rows, and preference pairs' numbers against the base.
OPTIONAL = {
    "sweep": lambda rows: any(row.get("sweep") for row in rows),
    "reward_accuracy": lambda rows: any("reward_accuracy" in row for row in rows),
    "margin": lambda rows: any("margin" in row for row in rows),
}


def recommend(rows: list[dict]) -> dict:
    """Best quality; best quality per minute of training and evaluation; smallest artefact within one
    point (0.01) of the best."""
    best = max(rows, key=lambda r: r["value"])
    per_minute = max(rows, key=lambda r: r["value"] / ((r["train_time_s"] + r["eval_time_s"]) / 60 + 1e-9))
    close = [r for r in rows if r["value"] >= best["value"] - 0.01]
    smallest = min(close, key=lambda r: r["artifact_mb"])
    return {
        "best_quality": best["method"],
        "best_quality_per_minute": per_minute["method"],
        "smallest_within_one_point": smallest["method"],
        "text": (
            f"Best quality: {best['method']} ({best['value']:.3f}). Best quality per minute: "
            f"{per_minute['method']}. Smallest artefact within one point of the best: {smallest['method']} "
            f"({smallest['artifact_mb']} MB)."
        ),
    }


def cell(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if key == "method" and row.get("teacher"):
        return f"{value} (teacher: {row['teacher']})"
    if key == "steps":
        return f"{value:,} ({row.get('planned_steps', '-')})"
    if key == "max_lr_reached":
        return f"{value:.2g} / {row.get('peak_lr', 0):.2g}"
    if key == "sweep":
        chosen = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in value["params"].items()
        )
        return f"{chosen} (trial {value['best_trial']} of {value['trials']})"
    if key == "forgetting":
        return f"{value['change']:+.3f} [{value['ci95'][0]:+.3f}, {value['ci95'][1]:+.3f}]"
    if key == "reward_accuracy":
        return f"{value['value']:.3f} [{value['ci95'][0]:.3f}, {value['ci95'][1]:.3f}]"
    if key == "margin":
        return f"{value['value']:+.3f} [{value['ci95'][0]:+.3f}, {value['ci95'][1]:+.3f}]"
    return cell_text(row, key)


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    columns = [(key, title) for key, title in COLUMNS if key not in OPTIONAL or OPTIONAL[key](rows)]
    return [title for _, title in columns], [[cell(row, key) for key, _ in columns] for row in rows]


def scored_on(results: dict) -> str:
    config, rows = results["config"], results["methods"]
    test = config["test"] or f"10% split off {config['data']}"
    examples = rows[0].get("test_examples") if rows else None
    unit = "pairs" if config.get("task") == "preference" else "examples"
    swept = f"; each tuned method the best of {config['sweep']} trials" if config.get("sweep") else ""
    return f"{examples} test {unit} from {test}; budget {config['budget']}{swept}; model {config['model']}"


def starved(rows: list[dict]) -> list[str]:
    """Trained methods whose schedule never reached its peak learning rate: their rows measure the budget."""
    return [
        f"{row['method']} reached {row['max_lr_reached']:.2g} of its peak learning rate {row['peak_lr']:.2g} "
        f"in {row['steps']} steps: its budget ended during warmup, so it is not compared at its best."
        for row in rows
        if row.get("peak_lr") and row["max_lr_reached"] < 0.99 * row["peak_lr"]
    ]


def notes(results: dict) -> list[str]:
    """What the table's numbers mean, where a task's need saying."""
    return [PREFERENCE_NOTE] if results["config"].get("task") == "preference" else []


def markdown(results: dict) -> str:
    rows = results["methods"]
    metric = rows[0]["metric"] if rows else ""
    lines = [f"# tunelab compare: {results['config']['data']} ({metric})", "", scored_on(results) + ".", ""]
    lines += markdown_table(*table(rows))
    lines += ["", *notes(results), *(f"**Warning.** {text}" for text in starved(rows))]
    lines += ["", f"**Recommendation.** {results['recommendation']['text']}", ""]
    return "\n".join(lines)


def plots(rows: list[dict]) -> dict[str, str]:
    metric = rows[0]["metric"]

    def scatter(ax, key, xlabel, log=False):
        for row in rows:
            x = max(row[key], 1) if log else row[key]
            low, high = row["ci95"]
            error = [[row["value"] - low], [high - row["value"]]]
            ax.errorbar(x, row["value"], yerr=error, fmt="o", capsize=3)
            ax.annotate(row["method"], (x, row["value"]), textcoords="offset points", xytext=(5, 5))
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)

    def losses(ax):
        for row in rows:
            curve = row.get("loss_curve")
            if curve and curve["train"]:
                ax.plot(*zip(*curve["train"], strict=True), label=f"{row['method']} train", linewidth=1)
            if curve and curve["val"]:
                ax.plot(*zip(*curve["val"], strict=True), "o--", label=f"{row['method']} val")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)

    return {
        "Quality vs trainable parameters (log; prompting shown at 1)": figure_png(
            lambda ax: scatter(ax, "trainable_params", "trainable parameters", log=True)
        ),
        "Quality vs wall time (train + eval)": figure_png(
            lambda ax: scatter(ax, "total_time_s", "seconds", log=False)
        ),
        "Loss curves": figure_png(losses),
    }


def write_reports(results: dict, out: Path) -> None:
    for row in results["methods"]:
        row["total_time_s"] = row["train_time_s"] + row["eval_time_s"]
    (out / "results.json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    (out / "report.md").write_text(text)
    rows = results["methods"]
    paragraphs = [f"<p>{html.escape(text)}</p>" for text in notes(results)]
    paragraphs += [f"<p><b>Warning.</b> {html.escape(text)}</p>" for text in starved(rows)]
    body = f"""<p>Data: {html.escape(str(results["config"]["data"]))}; {html.escape(scored_on(results))}.</p>
{html_table(*table(rows))}{"".join(paragraphs)}
<p><b>Recommendation.</b> {html.escape(results["recommendation"]["text"])}</p>
{figures_html(plots(rows))}"""
    (out / "report.html").write_text(html_page("tunelab compare", body))
