"""`tunelab data report`: what is in a training file before training on it, as JSON and one HTML page.

Sizes, token lengths with the model's chat template and the share `--max-length` would truncate, role and
turn structure, labels (for a preference file also lengths per answer, duplicate records and personal data
found); leakage (exact and near copies of train prompts in val/test, and 13-gram overlap
with a benchmark folder, as in the GPT-3 contamination study); and, with a groups file, how often each
group is mentioned and the label distribution per group, with a permutation chi-square test.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path

import numpy as np

from ..report_page import figure_png, figures_html, html_page, html_table
from . import dedup
from .examples import Example
from .formats import PREFERENCE_FORMATS, UNPAIRED_FORMATS, detect_format, load_examples
from .groups import Groups, load_groups, mentions
from .pii import scan_texts
from .preference import answers, load_preferences
from .validate import SIDES, ValidationReport, count_tokens, sequence_tokens

SAMPLES = 5
BENCHMARK_FILES = (".csv", ".jsonl", ".json", ".txt", ".tsv")


def prompt_text(example: Example) -> str:
    return "\n".join(m["content"] for m in example.messages if m["role"] != "assistant")


def full_text(example: Example) -> str:
    return "\n".join(m["content"] for m in example.messages)


def label_of(example: Example, format: str) -> str | None:
    return (
        str(example.meta.get("label", example.messages[-1]["content"]))
        if format == "classification"
        else None
    )


def describe(path: str, tokenizer=None, max_length: int = 2048) -> tuple[dict, list[Example], str]:
    format = detect_format(path)
    if format in PREFERENCE_FORMATS:
        return describe_preferences(path, format, tokenizer, max_length)
    examples = load_examples(path, format, for_training=False)
    stats = _shapes(path, format, [e.messages for e in examples])
    if tokenizer is not None:
        stats["tokens"] = token_stats([count_tokens(tokenizer, e.messages) for e in examples], max_length)
    if format == "classification":
        stats["labels"] = dict(Counter(label_of(e, format) for e in examples).most_common())
    return stats, examples, format


def describe_preferences(
    path: str, format: str, tokenizer, max_length: int
) -> tuple[dict, list[Example], str]:
    """A preference file's stats; its records come back as examples holding the prompt and every answer,
    so leakage (on the prompts) and benchmark overlap read them as they read chat examples."""
    records = load_preferences(path, unpaired=format in UNPAIRED_FORMATS, format=format)
    stats = _shapes(path, format, [[*r.prompt, answers(r)[0]] for r in records])
    keys = [
        json.dumps([r.prompt, answers(r), getattr(r, "desirable", None)], sort_keys=True) for r in records
    ]
    stats["duplicates"] = len(keys) - len(set(keys))
    stats["pii"] = dict(
        scan_texts(m["content"] for r in records for m in [*r.prompt, *answers(r)]).most_common()
    )
    if format in UNPAIRED_FORMATS:
        stats["labels"] = dict(Counter("good" if r.desirable else "bad" for r in records).most_common())
    if tokenizer is not None:
        sides = {
            side: [sequence_tokens(tokenizer, r.prompt, answers(r)[i], r.text) for r in records]
            for i, side in enumerate(SIDES[format])
        }
        stats["tokens"] = token_stats(
            [max(counts) for counts in zip(*sides.values(), strict=True)], max_length
        )
        stats["tokens"]["sides"] = {side: _side_stats(counts, max_length) for side, counts in sides.items()}
    examples = [Example([*r.prompt, *answers(r)], r.line, r.source, r.meta) for r in records]
    return stats, examples, format


def _shapes(path: str, format: str, conversations: list[list[dict]]) -> dict:
    turns = Counter(sum(m["role"] == "user" for m in messages) for messages in conversations)
    shapes = Counter(">".join(m["role"] for m in messages) for messages in conversations)
    return {
        "path": path,
        "format": format,
        "examples": len(conversations),
        "user_turns": {str(k): v for k, v in sorted(turns.items())},
        "role_sequences": dict(shapes.most_common(5)),
    }


def token_stats(counts: list[int], max_length: int) -> dict:
    """Lengths in tokens: a summary, the histogram and every count (those only in the JSON)."""
    histogram = ValidationReport("", "chat", token_counts=counts).length_histogram(12)
    return {
        "total": sum(counts),
        **_side_stats(counts, max_length),
        "p50": int(np.percentile(counts, 50)),
        "max_length": max_length,
        "histogram": histogram,
        "counts": counts,
    }


def _side_stats(counts: list[int], max_length: int) -> dict:
    return {
        "mean": round(sum(counts) / len(counts), 1),
        "p95": int(np.percentile(counts, 95)),
        "max": max(counts),
        "truncated_share": sum(n > max_length for n in counts) / len(counts),
    }


def leakage(train: list[Example], other: list[Example], threshold: float) -> dict:
    """Val/test examples whose prompt copies a train prompt exactly or nearly (Jaccard >= threshold)."""
    matches = dedup.overlap([prompt_text(e) for e in train], [prompt_text(e) for e in other], threshold)
    found = {
        "compared": len(other),
        "exact": sum(m.kind == "exact" for m in matches),
        "near": sum(m.kind == "near" for m in matches),
        "share": len(matches) / len(other) if other else 0.0,
        "threshold": threshold,
    }
    found["samples"] = [
        {"line": other[m.index].line, "train_line": train[m.of].line, "kind": m.kind,
         "similarity": m.similarity, "text": prompt_text(other[m.index])[:200]}
        for m in matches[:SAMPLES]
    ]  # fmt: skip
    found["lines"] = [other[m.index].line for m in matches]
    return found


def benchmark_overlap(folder: str, splits: dict[str, list[Example]], n: int = 13) -> dict:
    """Examples sharing at least one word n-gram with any file of the benchmark folder."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in BENCHMARK_FILES)
    grams: set[int] = set()
    for file in files:
        for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
            grams |= dedup.ngrams(line, n)
    result = {"folder": folder, "files": len(files), "n": n, "splits": {}}
    for name, examples in splits.items():
        hits = [e for e in examples if dedup.ngrams(full_text(e), n) & grams]
        result["splits"][name] = {
            "examples": len(examples),
            "contaminated": len(hits),
            "share": len(hits) / len(examples) if examples else 0.0,
            "samples": [{"line": e.line, "text": full_text(e)[:200]} for e in hits[:SAMPLES]],
        }
    return result


def chi_square(table: np.ndarray) -> float:
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    mask = expected > 0
    return float(((table - expected)[mask] ** 2 / expected[mask]).sum())


def permutation_p(groups: list[str], labels: list[str], permutations: int = 2000, seed: int = 0) -> float:
    """P-value of the chi-square statistic of group x label by shuffling labels (exact for small counts,
    where the chi-square approximation is not, and no scipy needed)."""
    g_index = {g: i for i, g in enumerate(sorted(set(groups)))}
    l_index = {lab: i for i, lab in enumerate(sorted(set(labels)))}
    g = np.array([g_index[x] for x in groups])
    lab = np.array([l_index[x] for x in labels])

    def statistic(lab_codes):
        table = np.zeros((len(g_index), len(l_index)))
        np.add.at(table, (g, lab_codes), 1)
        return chi_square(table)

    observed = statistic(lab)
    rng = np.random.default_rng(seed)
    as_large = sum(statistic(rng.permutation(lab)) >= observed - 1e-9 for _ in range(permutations))
    return (as_large + 1) / (permutations + 1)


def bias(examples: list[Example], format: str, groups: Groups) -> dict:
    result = {}
    for attribute, members in groups.items():
        hits = [mentions(full_text(e), members) for e in examples]
        entry: dict = {
            "groups": {
                group: {
                    "examples": sum(group in h for h in hits),
                    "share": sum(group in h for h in hits) / len(examples),
                }
                for group in members
            },
            "none": sum(not h for h in hits),
            "several": sum(len(h) > 1 for h in hits),
        }
        if format == "classification":
            only = [(h[0], label_of(e, format)) for e, h in zip(examples, hits, strict=True) if len(h) == 1]
            for group in members:
                entry["groups"][group]["labels"] = dict(
                    Counter(lab for g, lab in only if g == group).most_common()
                )
            if len({g for g, _ in only}) > 1 and len({lab for _, lab in only}) > 1:
                entry["test"] = {
                    "name": "chi-square, permutation p-value (examples mentioning exactly one group)",
                    "examples": len(only),
                    "p_value": permutation_p([g for g, _ in only], [lab for _, lab in only]),
                }
        result[attribute] = entry
    return result


def data_report(
    path: str,
    val: str | None = None,
    test: str | None = None,
    groups: str | None = None,
    benchmark: str | None = None,
    tokenizer=None,
    max_length: int = 2048,
    near_threshold: float = 0.8,
) -> dict:
    splits, examples, formats = {}, {}, {}
    for name, file in (("train", path), ("val", val), ("test", test)):
        if file:
            splits[name], examples[name], formats[name] = describe(file, tokenizer, max_length)
    report: dict = {"splits": splits, "leakage": {}}
    for name in ("val", "test"):
        if name in examples:
            report["leakage"][name] = leakage(examples["train"], examples[name], near_threshold)
    if benchmark:
        report["benchmark"] = benchmark_overlap(benchmark, examples)
    if groups:
        report["bias"] = bias(examples["train"], formats["train"], load_groups(groups))
        report["groups_file"] = groups
    return report


def write_report(report: dict, out: str | Path) -> Path:
    """`out` (.html) and the same name with .json; the per-example token counts go only in the JSON."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".html").write_text(html_page("tunelab data report", _body(report)))
    return out.with_suffix(".html")


def _body(report: dict) -> str:
    splits = report["splits"]
    rows = []
    for name, s in splits.items():
        t = s.get("tokens", {})
        rows.append(
            [
                name,
                s["path"],
                s["format"],
                s["examples"],
                t.get("mean", "-"),
                t.get("p95", "-"),
                t.get("max", "-"),
                f"{t['truncated_share']:.1%} > {t['max_length']}" if t else "-",
                ", ".join(f"{k}: {v}" for k, v in s["role_sequences"].items()),
            ]
        )
    header = [
        "split",
        "file",
        "format",
        "examples",
        "mean tokens",
        "p95",
        "max",
        "truncated",
        "role sequences",
    ]
    parts = ["<h2>Sizes and lengths</h2>", html_table(header, rows)]
    figures = []
    if any("tokens" in s for s in splits.values()):

        def lengths(ax):
            for name, s in splits.items():
                ax.hist(s["tokens"]["counts"], bins=30, alpha=0.5, label=name)
            limit = next(iter(splits.values()))["tokens"]["max_length"]
            if limit < 2 * max(s["tokens"]["max"] for s in splits.values()):  # else it squeezes the bars
                ax.axvline(limit, color="red", linestyle="--")
            ax.set_xlabel("tokens with the chat template")
            ax.set_ylabel("examples")
            ax.legend()

        figures.append(figures_html({"Token lengths (red: --max-length)": figure_png(lengths)}))
    preference = {name: s for name, s in splits.items() if "duplicates" in s}
    if preference:
        parts.append("<h2>Preference data: answers, duplicates, personal data</h2>")
        rows = [
            [name, side, x["mean"], x["p95"], x["max"], f"{x['truncated_share']:.1%}"]
            for name, s in preference.items()
            for side, x in s.get("tokens", {}).get("sides", {}).items()
        ]
        if rows:
            parts.append(
                html_table(["split", "prompt + answer", "mean tokens", "p95", "max", "truncated"], rows)
            )
        rows = [[name, s["duplicates"], json.dumps(s["pii"])] for name, s in preference.items()]
        parts.append(html_table(["split", "duplicate records", "personal data found"], rows))
    labelled = {name: s["labels"] for name, s in splits.items() if "labels" in s}
    if labelled:
        parts += [
            "<h2>Labels</h2>",
            html_table(["split", "labels"], [[n, json.dumps(v)] for n, v in labelled.items()]),
        ]
    if report["leakage"]:
        parts.append("<h2>Leakage: train prompts copied in val/test</h2>")
        header = ["split", "compared", "exact copies", "near copies", "share", "Jaccard threshold"]
        rows = [
            [n, x["compared"], x["exact"], x["near"], f"{x['share']:.2%}", x["threshold"]]
            for n, x in report["leakage"].items()
        ]
        parts.append(html_table(header, rows))
        samples = [
            [n, s["line"], s["train_line"], s["kind"], s["similarity"], s["text"]]
            for n, x in report["leakage"].items()
            for s in x["samples"]
        ]
        if samples:
            parts.append(html_table(["split", "line", "train line", "kind", "similarity", "text"], samples))
    if "benchmark" in report:
        b = report["benchmark"]
        parts.append(
            f"<h2>Benchmark contamination: {b['n']}-gram overlap with {html.escape(b['folder'])}</h2>"
        )
        parts.append(html_table(["split", "examples", "sharing a 13-gram", "share"],
                                [[n, x["examples"], x["contaminated"], f"{x['share']:.2%}"]
                                 for n, x in b["splits"].items()]))  # fmt: skip
    if "bias" in report:
        parts.append(f"<h2>Groups ({html.escape(report['groups_file'])})</h2>")
        for attribute, entry in report["bias"].items():
            rows = [[g, x["examples"], f"{x['share']:.1%}", json.dumps(x.get("labels", {}))]
                    for g, x in entry["groups"].items()]  # fmt: skip
            parts.append(f"<h3>{html.escape(attribute)}</h3>")
            parts.append(
                html_table(["group", "examples mentioning it", "share", "labels (exactly this group)"], rows)
            )
            if "test" in entry:
                test = entry["test"]
                verdict = " (label depends on the group)" if test["p_value"] < 0.05 else ""
                text = f"{test['name']}: p = {test['p_value']:.4f} over {test['examples']} examples{verdict}."
                parts.append(f"<p>{html.escape(text)}</p>")
    return "".join(parts) + "".join(figures)


def print_summary(report: dict, console) -> None:
    from rich.text import Text

    for name, s in report["splits"].items():
        t = s.get("tokens")
        lengths = (
            f"; tokens mean {t['mean']}, max {t['max']}, {t['truncated_share']:.1%} over {t['max_length']}"
            if t
            else ""
        )
        console.print(Text(f"{name}: {s['examples']} examples ({s['format']}){lengths}"))
        if "labels" in s:
            console.print(Text(f"  labels: {s['labels']}"))
        for side, x in (t or {}).get("sides", {}).items():
            console.print(Text(f"  prompt + {side}: tokens mean {x['mean']}, max {x['max']}, "
                               f"{x['truncated_share']:.1%} over {t['max_length']}"))  # fmt: skip
        if "duplicates" in s:
            console.print(Text(f"  duplicates: {s['duplicates']}; personal data found: {s['pii'] or 'none'}"))
    for name, x in report["leakage"].items():
        console.print(Text(f"leakage train -> {name}: {x['exact']} exact and {x['near']} near copies of "
                           f"{x['compared']} ({x['share']:.2%})"))  # fmt: skip
    if "benchmark" in report:
        for name, x in report["benchmark"]["splits"].items():
            console.print(Text(f"benchmark 13-gram overlap, {name}: {x['contaminated']} of {x['examples']}"))
    for attribute, entry in report.get("bias", {}).items():
        shares = ", ".join(f"{g} {x['share']:.1%}" for g, x in entry["groups"].items())
        p = f"; label vs group p = {entry['test']['p_value']:.4f}" if "test" in entry else ""
        console.print(Text(f"{attribute}: mentioned {shares}{p}"))
