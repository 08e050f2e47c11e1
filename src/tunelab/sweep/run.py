"""`tunelab sweep`: search training options with Optuna (TPE sampler, median pruner on the val loss).

The folder it fills:

    DIR/study.db                     the Optuna study (SQLite), one study per key
    DIR/trials/<key>-<NNN>/          trial NNN: an ordinary run folder (`tunelab train --out`)
    DIR/evals/<key>-<NNN>.json       its score on the val set, when the objective is an eval metric
    DIR/best.yaml                    the best trial's options, for `tunelab train --config`
    DIR/report.md, report.html, results.json

The key is a hash of everything that decides what a trial means (data, space, fixed options, objective,
budget, seed, tunelab's version): a rerun with the same key resumes the study, and finished trials are
never run again; a trial a killed sweep left running is run again with the same options. Other data or
another space start a new study beside the old one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import torch

from ..errors import UserError
from ..evaluation import EvalConfig, evaluate
from ..evaluation.metrics import METRICS
from ..methods import get_method
from ..run_dir import RunDir, file_hash
from ..training import TrainConfig, train
from ..training.loop import TrainHooks
from .config import SweepConfig
from .space import NOT_SEARCHED, Space, applies, default_space, load_space

CLASSIFICATION_METRICS = ("accuracy", "macro_f1")


def budget_seconds(budget: str | None) -> float | None:
    if budget is None:
        return None
    kind, _, value = budget.partition(":")
    try:
        minutes = float(value)
    except ValueError:
        minutes = 0
    if kind != "minutes" or minutes <= 0:
        raise UserError(f"--budget {budget}: a sweep's budget is minutes:M, shared by all its trials")
    return 60 * minutes


def check(config: SweepConfig) -> Space:
    if config.objective != "val_loss" and config.objective not in METRICS:
        raise UserError(f"--objective {config.objective}: choose val_loss or one of {', '.join(METRICS)}")
    given = sorted(set(config.train) & NOT_SEARCHED)
    if given:
        raise UserError(f"--config: {', '.join(given)} are the sweep's own (its flags); leave them out")
    if config.trials < 1:
        raise UserError(f"--trials must be at least 1 (got {config.trials})")
    budget_seconds(config.budget)
    if config.space:
        return load_space(config.space, sweep_method(config))
    return default_space(get_method(sweep_method(config)).default_lr)


def study_key(config: SweepConfig, space: Space) -> str:
    payload = {
        "tunelab": version("tunelab"), "space": asdict(space), "train": config.train,
        "method": config.method, "model": config.model, "objective": config.objective,
        "budget": config.budget, "seed": config.seed,
        "data_sha256": file_hash(config.data), "val_sha256": file_hash(config.val),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


class PruningHooks(TrainHooks):
    """Reports each val loss of a trial to Optuna and stops the trial when the pruner says so. The step is
    the evaluation's number in the run, so trials with other batch sizes compare at the same epoch."""

    def __init__(self, trial, sign: float):
        self.trial, self.sign, self.evals = trial, sign, 0

    def on_record(self, record: dict) -> None:
        import optuna

        if record["kind"] != "eval" or record.get("baseline"):
            return
        self.evals += 1
        self.trial.report(self.sign * record["val_loss"], self.evals)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"val loss {record['val_loss']:.4f} at evaluation {self.evals}")


def sweep_method(config: SweepConfig) -> str:
    """The method of the trials where the space neither searches nor fixes one: --config's, else --method."""
    return config.train.get("method", config.method)


def trial_config(config: SweepConfig, space: Space, params: dict, out: Path, seconds: float | None):
    method = params.get("method", space.fixed.get("method", sweep_method(config)))
    train = {name: value for name, value in config.train.items() if applies(name, method)}
    options = {"model": config.model, "seed": config.seed} | train | space.fixed_for(method) | params
    options["method"] = method
    if seconds is not None:
        options["max_minutes"] = seconds / 60
    return TrainConfig.from_sources(
        **options, data=[config.data], val=[config.val], out=str(out), overwrite=True
    )


def score_on_val(config: SweepConfig, train_config: TrainConfig, out: Path) -> float:
    task = "classification" if config.objective in CLASSIFICATION_METRICS else "generation"
    eval_config = EvalConfig(model=train_config.model, adapter=train_config.out, data=config.val, task=task,
                             metrics=[config.objective], labels=train_config.labels, seed=config.seed,
                             instruction="" if task == "classification" else None)  # fmt: skip
    return evaluate(eval_config, str(out))["results"]["value"]


def run_trial(study, trial, params: dict, config: SweepConfig, space: Space, key: str, seconds, console):
    """Train one trial (and score it on val for a metric objective); tell the study how it went."""
    import optuna

    out = Path(config.out) / "trials" / f"{key}-{trial.number:03d}"
    trial.set_user_attr("run", str(out))
    if seconds is not None:
        trial.set_user_attr("training_budget_s", seconds)
    started = time.perf_counter()
    sign = 1.0 if config.objective == "val_loss" else -1.0
    try:
        train_config = trial_config(config, space, params, out, seconds)
        summary = train(train_config, console=console, hooks=PruningHooks(trial, sign)).summary
        value = summary["best_val_loss"]
        if config.objective != "val_loss":
            value = score_on_val(config, train_config, Path(config.out) / "evals" / f"{out.name}.json")
    except optuna.TrialPruned as pruned:
        trial.set_user_attr("note", str(pruned))
        trial.set_user_attr("seconds", time.perf_counter() - started)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return "pruned: " + str(pruned)
    except (UserError, MemoryError, torch.cuda.OutOfMemoryError) as err:
        # A diverged run, options that do not go together, a batch too big: a result, not a crash.
        trial.set_user_attr("note", str(err))
        trial.set_user_attr("seconds", time.perf_counter() - started)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return f"failed: {err}"
    trial.set_user_attr("seconds", time.perf_counter() - started)
    study.tell(trial, value)
    return f"{config.objective} {value:.4f}"


def training_share(study, budget: float, remaining: int) -> float:
    """Training seconds for the next trial: an equal share of what is left, less what a trial costs
    besides training (loading, val evaluations, scoring) as the completed trials measured it."""
    spent = sum(t.user_attrs.get("seconds", 0) for t in study.trials if done(t))
    overheads = [
        t.user_attrs["seconds"] - t.user_attrs["training_budget_s"]
        for t in study.trials
        if t.state.name == "COMPLETE" and "training_budget_s" in t.user_attrs
    ]
    overhead = max(0.0, sum(overheads) / len(overheads)) if overheads else 0.0
    return (budget - spent) / remaining - overhead


def open_study(config: SweepConfig, key: str, pruner=None):
    """The study of this key, with what a killed sweep left running marked failed and queued again."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{Path(config.out).resolve() / 'study.db'}"
    direction = "minimize" if config.objective == "val_loss" else "maximize"
    # Median pruning: a trial whose val loss is worse than the median of earlier trials' at the same
    # evaluation stops there, once two trials have finished.
    pruner = pruner or optuna.pruners.MedianPruner(n_startup_trials=2)
    study = optuna.create_study(study_name=f"sweep-{key}", storage=storage, direction=direction,
                                pruner=pruner, load_if_exists=True)  # fmt: skip
    for stale in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING]):
        study.tell(stale.number, state=optuna.trial.TrialState.FAIL)  # with no note: interrupted
        study.enqueue_trial(stale.params, user_attrs={"retry_of": stale.number})
        if "run" in stale.user_attrs:  # its half-trained folder: the retry gets a folder of its own
            shutil.rmtree(stale.user_attrs["run"], ignore_errors=True)
    return study


def done(trial) -> bool:
    """Finished for good: complete, pruned, or failed on its own (a failure run_trial noted, not a trial
    a killed sweep left behind)."""
    import optuna

    states = optuna.trial.TrialState
    return trial.state in (states.COMPLETE, states.PRUNED) or (
        trial.state == states.FAIL and "note" in trial.user_attrs
    )


def sweep(config: SweepConfig, console=None, pruner=None) -> dict:
    """Run the trials the study still lacks within the budget; write best.yaml and the reports. `pruner`:
    another Optuna pruner than the median one."""
    import optuna

    from .report import write_reports

    space = check(config)
    log = console.print if console else print
    Path(config.out).mkdir(parents=True, exist_ok=True)
    key = study_key(config, space)
    study = open_study(config, key, pruner)
    budget = budget_seconds(config.budget)
    finished = [t for t in study.trials if done(t)]
    if finished:
        log(f"Resuming study {key}: {len(finished)} of {config.trials} trials already done")
    while (count := len([t for t in study.trials if done(t)])) < config.trials:
        seconds = None
        if budget is not None:  # an equal share of what is left, so every trial gets its turn
            seconds = training_share(study, budget, config.trials - count)
            if seconds < 1:
                log(f"The budget {config.budget} is spent after {count} trials")
                break
        # A sampler seeded per trial: a resumed sweep draws what an uninterrupted one would.
        startup = min(10, max(2, config.trials // 3))
        study.sampler = optuna.samplers.TPESampler(
            seed=config.seed + len(study.trials), n_startup_trials=startup
        )
        trial = study.ask()
        params = space.suggest(trial, sweep_method(config))
        log(f"[trial {count + 1}/{config.trials}] {params_text(params)}")
        outcome = run_trial(study, trial, params, config, space, key, seconds, console)
        log(f"[trial {count + 1}/{config.trials}] {outcome}")
    results = collect(study, config, space, key)
    write_reports(results, Path(config.out))
    return results


def params_text(params: dict) -> str:
    return ", ".join(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"
                     for name, value in params.items())  # fmt: skip


def collect(study, config: SweepConfig, space: Space, key: str) -> dict:
    """Every trial of this study as a row, the best one and its options."""
    rows = []
    for trial in study.trials:
        # Optuna keeps a pruned trial's last reported (signed) val loss as its value: not an objective.
        value = trial.value if trial.state.name == "COMPLETE" else None
        run = RunDir(trial.user_attrs.get("run", Path(config.out) / "trials" / "not-started"))
        summary = run.read_summary() if run.is_finished() else {}
        records = run.read_metrics()
        losses = [r["val_loss"] for r in records if r.get("kind") == "eval" and not r.get("baseline")]
        rows.append({
            "number": trial.number, "state": trial.state.name.lower(), "params": trial.params,
            "value": value, "val_loss": summary.get("best_val_loss", min(losses, default=None)),
            "steps": summary.get("steps"), "seconds": trial.user_attrs.get("seconds"),
            "note": trial.user_attrs.get("note") or interrupted(trial), "run": str(run.root),
        })  # fmt: skip
    complete = [row for row in rows if row["state"] == "complete"]
    best = None
    if complete:
        best_trial = study.best_trial
        best = next(row for row in rows if row["number"] == best_trial.number)
        best = {**best, "config": best_options(RunDir(best["run"]), Path(config.out) / "best-model")}
    return {"config": asdict(config), "key": key, "space": asdict(space), "objective": config.objective,
            "direction": study.direction.name.lower(), "trials": rows, "best_trial": best,
            "importances": importances(study)}  # fmt: skip


def interrupted(trial) -> str | None:
    """The note of a trial a killed sweep left running (open_study marked it failed, with no note)."""
    return "interrupted; its options ran again" if trial.state.name == "FAIL" else None


def best_options(run: RunDir, out: Path) -> dict:
    """The best trial's resolved options as `tunelab train --config` takes them, training into `out`. A
    trial under a time budget is pinned to the steps it ran, which makes its length exact, not timed."""
    options = run.read_config() | {"out": str(out)}
    for name in ("resume", "overwrite"):
        options.pop(name, None)
    if options.get("max_minutes") is not None:
        options["max_minutes"] = None
        options["max_steps"] = run.read_summary()["steps"]
    return options


def importances(study) -> dict:
    """Each searched option's share of the objective's variation (Optuna's PED-ANOVA); empty until a few
    trials are complete."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    if len(complete) < 3:
        return {}
    # Its docs advise at least 5 trials inside the target quantile; at most the better half.
    quantile = max(0.1, min(0.5, 5 / len(complete)))
    try:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (RuntimeError, ValueError):  # too few distinct values to tell
        return {}
