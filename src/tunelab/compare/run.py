"""`tunelab compare`: prompting vs fine-tuning vs PEFT vs distillation on the user's own data, same splits,
same budget.

Every method runs in its own process (so peak memory is its own, and a crash loses only that method) and
leaves `DIR/runs/<method>-<key>/result.json`, where the key is a hash of everything that determines that
method's row. A rerun reuses a finished run with the same key (so an interrupted compare resumes) and runs
anew whatever another budget, other data or other options change; older runs stay beside, never mixed in.
A distilled row (distilled.py) learns from a tuned row of the same compare, its key holding its teacher's.
On preference pairs the rows are prompting, SFT on the preferred answers and preference objectives
(preference.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, replace
from importlib.metadata import version
from pathlib import Path

from ..data import load_examples, name_labels, split_file
from ..errors import UserError
from ..evaluation import EvalConfig, evaluate, forgetting
from ..evaluation.config import CALIBRATIONS
from ..graders.evaluate import evaluate_with_grader
from ..methods import REGISTRY, get_method
from ..processes import as_caller, caller, die_with, fresh_processes
from ..run_dir import RunDir, file_hash
from ..training.memory import peak_bytes
from . import preference
from .config import CompareConfig
from .distilled import DISTILLED, check_distilled, hidden_weight_of, teacher_of, train_student

PROMPTING = ("zero-shot", "few-shot")
DEFAULT_ROWS = ["zero-shot", "few-shot", "lora", "head"]
GRADED_ROWS = ["zero-shot", "lora"]  # by --grader: generated answers, each row's model prompted alike


def budget_fields(budget: str) -> dict:
    kind, _, value = budget.partition(":")
    try:
        number = float(value)
    except ValueError:
        number = 0
    if kind not in ("steps", "epochs", "minutes") or number <= 0:
        raise UserError(f"--budget {budget}: expected steps:N, epochs:N or minutes:N")
    if kind == "steps":
        return {"max_steps": int(number)}
    if kind == "epochs":
        return {"epochs": number}
    # The run plans its steps to end at the budget, warmup and decay included; the epochs only cap it.
    return {"epochs": 100, "max_minutes": number}


def split_sources(config: CompareConfig, data_dir: Path) -> dict[str, str]:
    """The train/val/test files: the user's where given, the rest split off `--data` (10% each)."""
    given = {"val": config.val, "test": config.test}
    missing = {name: 0.1 for name, path in given.items() if not path}
    sources = {"train": config.data, **{name: path for name, path in given.items() if path}}
    if missing:
        split = split_file(config.data, **{"val": 0, "test": 0} | missing, seed=config.seed,
                           out_dir=data_dir / "raw")  # fmt: skip
        sources |= {name: str(path) for name, path in split.items()}
    return sources


def settle(config: CompareConfig) -> CompareConfig:
    """The config with what `--data` decides filled in: the task (preference for pairs) and the rows."""
    pairs = preference.holds_pairs(config.data)
    task = config.task or ("preference" if pairs else "generation" if config.grader else "classification")
    if config.grader and task != "generation":
        raise UserError(f"--grader grades generated answers: it takes --task generation, not {task}")
    if (task == "preference") != pairs:
        found = "preference pairs" if pairs else "supervised examples"
        raise UserError(f"--task {task}: {config.data} holds {found}; leave --task out to score them as such")
    methods = config.methods or (
        preference.DEFAULT_ROWS if pairs else GRADED_ROWS if config.grader else DEFAULT_ROWS
    )
    return replace(config, task=task, methods=list(methods))


def prepare_splits(config: CompareConfig) -> dict[str, Path]:
    """Chat-format train/val/test files under DIR/data (preference pairs: preference.py), the instruction
    baked into every question so that prompting and tuned models see exactly the same prompts. Rewritten on
    every run (the same inputs give the same files), so a rerun with other data never scores on the old
    test set."""
    data_dir = Path(config.out) / "data"
    sources = split_sources(config, data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if config.task == "preference":
        return preference.write_pair_splits(config, sources, data_dir)
    paths = {}
    for name, source in sources.items():
        examples = load_examples(source)
        if config.labels:
            examples = name_labels(examples, config.labels)
        if name == "test" and config.limit:
            examples = examples[: config.limit]
        paths[name] = data_dir / f"{name}.jsonl"
        with paths[name].open("w") as f:
            for example in examples:
                messages = [dict(m) for m in example.messages]
                if config.instruction:
                    user = next(m for m in reversed(messages) if m["role"] == "user")
                    user["content"] = f"{config.instruction}\n\n{user['content']}"
                fields = example.meta if config.grader else {}  # what the grader reads as {{item.*}}
                f.write(json.dumps({**fields, "messages": messages}) + "\n")
    return paths


def eval_config(config: CompareConfig, splits: dict, tuned: Path | None = None, shots: int = 0) -> EvalConfig:
    """The test split scored on `--model`, or on `tuned`: a trained row's adapter on it or whole model."""
    adapter = str(tuned) if tuned and RunDir(tuned).is_adapter() else None
    return EvalConfig(
        model=str(tuned) if tuned and not adapter else config.model, adapter=adapter,
        data=str(splits["test"]), task=config.task, labels=config.labels,
        shots=shots, shots_from=str(splits["train"]) if shots else None, seed=config.seed,
        calibrate=None if tuned else config.calibrate,
        batch_size=config.batch_size, instruction=None if config.task != "classification" else "",
    )  # fmt: skip


def run_key(config: CompareConfig, method: str, splits: dict) -> str:
    """A hash of what determines one method's row: the split files it reads (which carry the data, the
    instruction, the labels and the test limit), the settings it uses, and tunelab's version. Prompting rows
    ignore the training budget, so changing the budget retrains the tuned methods only. A distilled row's
    holds its teacher's key, so retraining the teacher redistils it."""
    used = {"test"}
    settings = {"model", "task", "labels", "seed", "batch_size"}
    if method in PROMPTING:
        settings.add("calibrate")
    if method == "few-shot":
        used.add("train")
        settings.add("shots")
    elif method not in PROMPTING:
        used |= {"train", "val"}
        settings |= {"budget", "forgetting", "forgetting_limit"} | ({"sweep"} if config.sweep else set())
    payload = {"method": method, "tunelab": version("tunelab")}
    if method in DISTILLED:
        teacher = teacher_of(config.methods, method)
        payload["teacher"] = f"{teacher}-{run_key(config, teacher, splits)}"
        payload["hidden_weight"] = hidden_weight_of(method)  # the recipe: a change retrains the row
        settings |= {"student"} if method == "distill" else set()
    payload |= {name: getattr(config, name) for name in sorted(settings)}
    if config.grader:  # a changed grader rescores every row
        payload["grader_sha256"] = file_hash(config.grader)
    payload |= {f"{name}_sha256": file_hash(splits[name]) for name in sorted(used)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def run_dir_of(config: CompareConfig, method: str, splits: dict) -> Path:
    return Path(config.out) / "runs" / f"{method}-{run_key(config, method, splits)}"


def run_method(config: CompareConfig, method: str, splits: dict) -> dict:
    """Train (unless prompting) and evaluate one method; the numbers for one row of the comparison."""
    run_dir = run_dir_of(config, method, splits)
    run_dir.mkdir(parents=True, exist_ok=True)
    row: dict = {"method": method, "key": run_dir.name.rpartition("-")[2]}
    if method in PROMPTING:
        shots = config.shots if method == "few-shot" else 0
        row |= {"trainable_params": 0, "train_time_s": 0.0, "tokens_per_s": None, "artifact_mb": 0.0}
        results = score(config, eval_config(config, splits, shots=shots), run_dir)
    else:
        if method in DISTILLED:
            row["teacher"], teacher_dir = teacher_model(config, method, splits)
            model_dir, summary, row["prune_time_s"] = train_student(
                method, train_options(config, splits), config.student, teacher_dir, run_dir
            )
        else:
            model_dir, summary, row["sweep"] = train_method(config, method, splits, run_dir)
        row |= {
            "model_dir": os.path.relpath(model_dir, run_dir), "params": summary["total_params"],
            "trainable_params": summary["trainable_params"],
            "train_time_s": summary["wall_time_s"] + row.get("prune_time_s", 0),
            "tokens_per_s": summary["tokens_per_s"], "artifact_mb": summary["artifact_mb"],
            "weights_mb": summary["weights_mb"], "steps": summary["steps"],
            "planned_steps": summary["planned_steps"], "epochs": summary["epochs_completed"],
            "peak_lr": summary["peak_lr"], "max_lr_reached": summary["max_lr_reached"],
            "loss_curve": loss_curve(RunDir(model_dir)),
        }  # fmt: skip
        results = score(config, eval_config(config, splits, model_dir), run_dir)
        # Forgetting compares the base with the tuned model: only an adapter that can be switched off.
        tuning = tuning_of(config, method, splits)[0]
        if config.forgetting and tuning in REGISTRY and get_method(tuning).artifact == "peft":
            report = forgetting(
                EvalConfig(model=config.model, adapter=str(model_dir), task="multiple-choice",
                           benchmark=config.forgetting, limit=config.forgetting_limit, seed=config.seed),
                str(run_dir / "forgetting.json"),
            )["results"]  # fmt: skip
            row["forgetting"] = {"change": report["value"], "ci95": report["ci95"]}
    row |= {
        "metric": results["main_metric"], "value": results["value"], "ci95": results["ci95"],
        "eval_time_s": results["seconds"], "prompt_tokens_per_request": results.get("prompt_tokens_mean"),
        "test_examples": results["examples"],
        "peak_memory_mb": round(peak_bytes() / 2**20, 1),
    }  # fmt: skip
    if config.task == "preference":
        row |= preference.row_numbers(results)
    (run_dir / "result.json").write_text(json.dumps(row, indent=2))
    return row


def score(config: CompareConfig, evaluation: EvalConfig, run_dir: Path) -> dict:
    """The row's test results: the task's main metric, or with `--grader` its mean reward."""
    if not config.grader:
        return evaluate(evaluation, str(run_dir / "eval.json"))["results"]
    started = time.perf_counter()
    evaluation = replace(evaluation, grader=config.grader, task="generation")
    graded = evaluate_with_grader(evaluation, str(run_dir / "eval.json"))["results"]
    reward = graded["reward"]
    return {
        "main_metric": f"reward ({graded['grader']})", "value": reward["mean"], "ci95": reward["ci95"],
        "seconds": time.perf_counter() - started, "examples": graded["rows"],
    }  # fmt: skip


def train_method(
    config: CompareConfig, method: str, splits: dict, run_dir: Path
) -> tuple[Path, dict, dict | None]:
    """The trained model's folder and summary; with `sweep`, those of the best of its trials (a minutes
    budget is shared by the trials, a steps or epochs budget is each trial's), and what the sweep chose."""
    tuning, row_options = tuning_of(config, method, splits)
    options = train_options(config, splits) | row_options
    if not config.sweep:
        from ..training import TrainConfig, train

        train_config = TrainConfig(**options, method=tuning, out=str(run_dir / "model"), overwrite=True)
        return run_dir / "model", train(train_config).summary, None
    from ..sweep import SweepConfig, sweep

    # The sweep's own flags take the splits, model and seed; the rest are its trials' fixed options.
    own = {name: options.pop(name) for name in ("model", "seed")}
    (data,), (val,) = options.pop("data"), options.pop("val")
    minutes = options.pop("max_minutes", None)
    results = sweep(SweepConfig(data=data, val=val, **own, out=str(run_dir / "sweep"), method=tuning,
                                trials=config.sweep, budget=config.budget if minutes else None,
                                train=options))  # fmt: skip
    best = results["best_trial"]
    if not best:
        raise UserError(f"compare: no trial of {method} completed; see {run_dir / 'sweep' / 'report.md'}")
    chosen = {"trials": len(results["trials"]), "best_trial": best["number"], "params": best["params"]}
    return Path(best["run"]), RunDir(best["run"]).read_summary(), chosen


def train_options(config: CompareConfig, splits: dict) -> dict:
    """The TrainConfig fields every trained row shares: model, seed, batch, labels, budget and splits."""
    return {
        "model": config.model, "seed": config.seed, "batch_size": config.batch_size, "labels": config.labels,
        **budget_fields(config.budget), "data": [str(splits["train"])], "val": [str(splits["val"])],
    }  # fmt: skip


def tuning_of(config: CompareConfig, method: str, splits: dict) -> tuple[str, dict]:
    """A tuned row's `--method` and the TrainConfig fields it sets beyond `train_options`: on preference
    pairs, LoRA and the row's objective and files; otherwise the row is the method."""
    return preference.training_of(method, splits) if config.task == "preference" else (method, {})


def teacher_model(config: CompareConfig, method: str, splits: dict) -> tuple[str, Path]:
    """A distilled row's teacher: its method and trained model folder (run before it in this compare)."""
    teacher = teacher_of(config.methods, method)
    teacher_run = run_dir_of(config, teacher, splits)
    row = json.loads((teacher_run / "result.json").read_text())
    return teacher, teacher_run / row.get("model_dir", "model")


def loss_curve(run: RunDir) -> dict:
    records = run.read_metrics()
    return {
        "train": [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"],
        "val": [(r["step"], r["val_loss"]) for r in records if r.get("kind") == "eval"],
    }


def _child(config_dict: dict, method: str, splits: dict, parent_pid: int) -> None:
    from ..quiet import quiet_libraries

    die_with(parent_pid)
    quiet_libraries()
    run_method(CompareConfig(**config_dict), method, splits)


def check_rows(config: CompareConfig) -> None:
    """Fail before anything runs on a row that does not exist for the data."""
    if config.task == "preference":
        return preference.check_rows(config)
    known = [*PROMPTING, *sorted(REGISTRY), *DISTILLED]
    unknown = [m for m in config.methods if m not in known]
    if unknown:
        raise UserError(f"--methods: unknown {unknown}; choose from {', '.join(known)}")
    if config.grader:
        ungraded = [
            m
            for m in config.methods
            if m == "few-shot" or (m in REGISTRY and get_method(m).task != "causal-lm")
        ]
        if ungraded:
            raise UserError(
                f"--methods: {', '.join(ungraded)} cannot be graded (the grader reads answers generated from "
                "each row's own messages); leave them out"
            )


def compare(config: CompareConfig, console=None) -> dict:
    from .report import recommend, write_reports

    config = settle(config)
    check_rows(config)
    budget_fields(config.budget)  # fail on a bad budget before anything runs
    if config.calibrate not in (None, *CALIBRATIONS):
        raise UserError(f"--calibrate {config.calibrate}: choose one of {', '.join(CALIBRATIONS)}")
    log = console.print if console else print
    check_distilled(config.methods, config.model, config.student, log)
    out = Path(config.out)
    splits = prepare_splits(config)
    results_of = {method: run_dir_of(config, method, splits) / "result.json" for method in config.methods}
    rows, started, fresh_done = [], time.perf_counter(), 0
    for i, method in enumerate(config.methods, start=1):
        result_path = results_of[method]
        if result_path.exists():
            log(f"[{i}/{len(config.methods)}] {method}: a finished run with the same data and settings, "
                f"reusing {result_path}")  # fmt: skip
        else:
            elapsed = time.perf_counter() - started
            remaining = len([m for m in config.methods[i - 1 :] if not results_of[m].exists()])
            eta = f", ETA ~{elapsed / fresh_done * remaining / 60:.0f} min" if fresh_done else ""
            log(f"[{i}/{len(config.methods)}] {method}: running{eta}")
            # A fresh process per method: its own peak memory, and a crash costs only this method.
            process = fresh_processes(__name__).Process(
                target=as_caller,
                args=(caller(), _child, asdict(config), method, {k: str(v) for k, v in splits.items()},
                      os.getpid()),
            )  # fmt: skip
            process.start()
            try:
                process.join()
            finally:  # interrupted (Ctrl-C, kill): take the method's process down too
                if process.is_alive():
                    process.terminate()
                    process.join()
            if process.exitcode != 0 or not result_path.exists():
                raise UserError(
                    f"compare: {method} failed (exit code {process.exitcode}); see the messages above"
                )
            fresh_done += 1
        rows.append(json.loads(result_path.read_text()))
    results = {"config": asdict(config), "methods": rows, "recommendation": recommend(rows)}
    write_reports(results, out)
    return results
