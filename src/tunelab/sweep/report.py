"""A sweep for machines (results.json), for `tunelab train` (best.yaml) and for people (report.md and a
self-contained report.html with the look of `compare`'s): the trials, the best options, the optimisation
history, which options mattered, and the objective against each searched option."""

from __future__ import annotations

import html
import json
from pathlib import Path

import yaml

from ..report_page import figure_png, figures_html, html_page, html_table, markdown_table


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(results: dict) -> tuple[list[str], list[list[str]]]:
    names = [param["name"] for param in results["space"]["params"]]
    headers = ["trial", "state", *names, results["objective"], "best val loss", "steps", "seconds", "note"]
    best = results["best_trial"]["number"] if results["best_trial"] else None
    rows = [
        [
            f"{row['number']}{' (best)' if row['number'] == best else ''}", row["state"],
            *(_number(row["params"].get(name)) for name in names), _number(row["value"]),
            _number(row["val_loss"]), _number(row["steps"]),
            "-" if row["seconds"] is None else f"{row['seconds']:.1f}", row["note"] or "",
        ]
        for row in results["trials"]
    ]  # fmt: skip
    return headers, rows


def summary_lines(results: dict) -> list[str]:
    config, trials = results["config"], results["trials"]
    states = {state: sum(row["state"] == state for row in trials) for state in ("complete", "pruned", "fail")}
    lines = [
        f"Data {config['data']}, val {config['val']}; method {config['method']}, model {config['model']}; "
        f"objective {results['objective']} ({results['direction']}); budget {config['budget'] or 'none'}; "
        f"study {results['key']}.",
        f"{len(trials)} trials: {states['complete']} complete, {states['pruned']} pruned, "
        f"{states['fail']} failed.",
    ]
    best = results["best_trial"]
    if best:
        chosen = ", ".join(f"{name}={_number(value)}" for name, value in best["params"].items())
        lines.append(
            f"Best: trial {best['number']}, {results['objective']} {_number(best['value'])}, with {chosen}. "
            "Its options are in best.yaml: `tunelab train --config best.yaml`."
        )
    if results["importances"]:
        shares = ", ".join(f"{name} {share:.2f}" for name, share in results["importances"].items())
        lines.append(f"Importance of each option (PED-ANOVA): {shares}.")
    return lines


def plots(results: dict) -> dict[str, str]:
    objective, trials = results["objective"], results["trials"]
    scored = [row for row in trials if row["value"] is not None]
    figures = {}
    if not scored:
        return figures
    pick = min if results["direction"] == "minimize" else max

    def history(ax):
        numbers = [row["number"] for row in scored]
        values = [row["value"] for row in scored]
        ax.plot(numbers, values, "o", label="trial")
        best = [pick(values[: i + 1]) for i in range(len(values))]
        ax.step(numbers, best, where="post", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel(objective)
        ax.legend(fontsize=7)

    figures["Optimisation history"] = figure_png(history)
    if results["importances"]:

        def bars(ax):
            names = list(results["importances"])[::-1]
            ax.barh(names, [results["importances"][name] for name in names])
            ax.set_xlabel("importance")

        figures["Parameter importances"] = figure_png(bars)
    for param in results["space"]["params"]:
        name = param["name"]

        def against(ax, name=name, kind=param["kind"]):
            xs = [row["params"].get(name) for row in scored]
            ax.plot(
                [str(x) for x in xs] if kind == "categorical" else xs, [row["value"] for row in scored], "o"
            )
            if kind in ("log_uniform", "int_log"):
                ax.set_xscale("log")
            ax.set_xlabel(name)
            ax.set_ylabel(objective)

        figures[f"{objective} vs {name}"] = figure_png(against)
    return figures


def write_reports(results: dict, out: Path) -> None:
    if results["best_trial"]:
        (out / "best.yaml").write_text(yaml.safe_dump(results["best_trial"]["config"], sort_keys=False))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = [f"# tunelab sweep: {results['config']['data']} ({results['objective']})", ""]
    lines += [*summary_lines(results), "", *markdown_table(*table(results)), ""]
    (out / "report.md").write_text("\n".join(lines))
    body = "".join(f"<p>{html.escape(line)}</p>" for line in summary_lines(results))
    body += html_table(*table(results)) + figures_html(plots(results))
    (out / "report.html").write_text(html_page("tunelab sweep", body))
