"""The one training loop every method shares.

It runs as a single process on a laptop and, unchanged, under `torchrun`/`accelerate launch` (DDP): the
Accelerator places the model and wraps it for DDP; each rank takes its slice of batches and the token
count that normalises the loss is summed over ranks and micro-batches (see steps.py). With `fsdp` the
model is sharded over the ranks instead (sharding.py); the rest of the loop is the same. Hooks are asked
on the main process alone, and what they decide every rank does.
"""

from __future__ import annotations

import copy
import hashlib
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from safetensors import safe_open

from ..data.batching import epoch_batches, split_by_tokens
from ..data.mixture import epoch_indices, mixing_weights
from ..errors import UserError
from ..methods import Method, get_method
from ..models import load_model
from ..models.blocks import BLOCK_INDEX
from ..objectives import Objective
from ..objectives.base import add_stats
from ..ops import pick_precision
from ..run_dir import RunDir, atomic_folder
from . import auto, sharding
from . import checkpoint as ckpt
from .config import ConfigError, TrainConfig
from .datasets import check_pairing, load_tasks, objective_for
from .memory import MemoryModel, Prediction, batch_tokens_for, measure, parse_bytes, peak_bytes
from .progress import TrainProgress
from .report import MetricsLog, save_final
from .schedule import LRPlan, TimeBudget, apply_plan, lr_scheduler
from .steps import evaluate_loss, train_step


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite; no final model is written."""


class RunPaused(Exception):
    """A hook asked the run to pause; its last checkpoint is where `--resume` continues, exactly."""


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint so `--resume` continues from exactly here."""

    step: int = 0
    epoch: int = 0
    group_in_epoch: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    baseline_s: float = 0.0  # of elapsed_s, the baseline evaluation: not training, not in a time budget
    best_val_loss: float | None = None
    best_val_measured: dict | None = None  # what the objective measured besides the loss (val_rewards/...)
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    last_eval_step: int | None = None
    last_loss: float | None = None
    baseline_val_loss: float | None = None
    planned_steps: int | None = None  # the schedule's total (re-planned under a time budget)
    max_lr_factor: float = 0.0  # the highest fraction of the peak learning rate any step used


@dataclass
class TrainResult:
    out_dir: Path
    summary: dict


class TrainHooks:
    """What a run tells whoever started it; the service's worker turns these into job events and
    checkpoints, and stops a cancelled job by raising from one of them. The defaults do nothing."""

    def on_step(self, step: int) -> None:
        """After each optimizer step."""

    def on_record(self, record: dict) -> None:
        """Every metrics record (kinds: run, train, eval, summary), as written to the metrics log."""

    def on_checkpoint(self, trainer: Trainer, model, step: int) -> None:
        """After a checkpoint of `step` is safely on disk; `model` is the model as trained, whole."""

    def pause_requested(self) -> bool:
        """Asked after each step: True pauses the run there (a checkpoint of it, then `RunPaused`)."""
        return False

    def checkpoint_every(self, steps_per_epoch: int) -> int | None:
        """Steps between checkpoints when the config sets no `save_every` (None: no checkpoints)."""
        return None


def train(
    config: TrainConfig, console=None, hooks: TrainHooks | None = None, objective: Objective | None = None
) -> TrainResult:
    """Train `config.method` on `config.data` and write the result to `config.out`.

    `objective` replaces the registered one `config.objective` names, for one that needs more than a
    config holds (distillation's teacher, compress/distill.py)."""
    return Trainer(config, console, hooks, objective).fit()


def check_out_dir(out: Path, config: TrainConfig) -> None:
    """Refuse to clobber a finished model or an unfinished run's checkpoints by accident."""
    if config.overwrite:
        shutil.rmtree(out, ignore_errors=True)
        return
    if RunDir(out).is_finished():
        raise ConfigError(f"{out} already holds a finished run; choose another --out or pass --overwrite")
    if ckpt.list_checkpoints(out) and not config.resume:
        raise ConfigError(
            f"{out} holds checkpoints of an unfinished run; pass --resume to continue it or --overwrite"
        )


def enable_checkpointing(model) -> None:
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - real / padded if padded else 0.0


class Trainer:
    """Sets a run up (model, method, objective, data, optimizer), runs it, and writes its artefacts."""

    def __init__(
        self, config: TrainConfig, console=None, hooks: TrainHooks | None = None,
        objective: Objective | None = None,
    ):  # fmt: skip
        if not config.out:
            raise ConfigError("out: an output folder is required")
        self.method = get_method(config.method)
        if objective:
            check_pairing(self.method, objective)
            objective = objective.configure(config)
        else:
            objective = objective_for(config, self.method)
            config = replace(config, objective=objective.name)  # saved as it ran: the default is named
        self.objective = objective
        self.config, self.out = config, Path(config.out)
        self.hooks = hooks or TrainHooks()
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())  # cpu=True: DDP over gloo on CPUs
        self.main = self.accelerator.is_main_process
        self.console = console if self.main else None
        self.log = self.console.print if self.console else (lambda *a, **k: None)
        if self.main and not config.dry_run:
            check_out_dir(self.out, config)
            self.out.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        self.precision = pick_precision(config.precision)
        set_seed(config.seed)  # before the method wraps the model: adapter initialisation is seeded too

        model, self.tokenizer = load_model(config.model, log=self.log)
        # The config settled by the objective: classification runs now know their labels.
        config, self.tasks, self.val_sets, self.data_stats = load_tasks(
            config, self.tokenizer, self.objective
        )
        model = self.method.prepare(model, config)
        self.objective.check_model(model)
        if self.accelerator.num_processes > 1:  # initialised alike (DDP syncs it); then each rank draws its
            set_seed(config.seed, device_specific=True)  # own dropout masks and samples, as TRL's ranks do
        if self.objective.disables_dropout:
            self.log(f"{self.objective.name}: dropout off (the log-probs it compares are all taken without)")
            disable_dropout(model)
        if config.gradient_checkpointing:
            enable_checkpointing(model)
        self.train_items = [item for task in self.tasks for item in task.train]
        self.lengths = [self.objective.length(item) for item in self.train_items]
        self.memory = None
        if config.memory_budget or config.dry_run or config.batch_size == auto.AUTO:
            self.memory = self._measure(model)
        config, self.auto = auto.resolve(config, self.lengths, self.method.default_lr, self.memory)
        if self.auto:
            picked = ", ".join(f"{name} {value:g}" for name, value in self.auto.items())
            self.log(f"auto settings for {len(self.lengths)} examples: {picked} (rule: README, Training)")
        # The batch cut the run uses; the config keeps the user's value (a GPU rerun takes whole batches).
        self.micro_tokens = auto.micro_batch_tokens(config, self.accelerator.device.type)
        self.config = config  # auto settings now have their values
        if config.memory_budget:
            self._fit_memory(model)
        if not config.dry_run:
            self._references(model)
        self.task_sizes = [len(task.train) for task in self.tasks]
        self.mix = mixing_weights(self.tasks, config.mix)

        world = self.accelerator.num_processes
        self.micro_per_epoch = len(self._epoch_batches(0)) // world
        self.steps_per_epoch = max(1, math.ceil(self.micro_per_epoch / config.grad_accum))
        total_steps = config.max_steps or math.ceil(self.steps_per_epoch * config.epochs)
        self.save_every = config.save_every or self.hooks.checkpoint_every(self.steps_per_epoch)
        self.budget = None
        if config.max_minutes and not config.max_steps:
            self.budget = TimeBudget(60 * config.max_minutes, cap=total_steps)
        self.plan = LRPlan(config.scheduler, config.warmup, total_steps, min_warmup=1 if self.budget else 0)
        self.trainable = sum(p.numel() for _, p in self.method.optimizer_params(model))
        self.total_params = sum(p.numel() for p in model.parameters())
        self.whole_copy = None
        if config.fsdp:
            self._shard(model)
        optimizer, self.scheduler = self._optimizer(model)
        if config.fsdp:  # sharded in place, not wrapped: the model is its own unwrapped self
            self.model, self.optimizer = model, optimizer
        else:
            self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.unwrapped = self.accelerator.unwrap_model(self.model)
        self.state = TrainState()
        self.pausing = False  # what the hooks said after the last step

    def _shard(self, model) -> None:
        if self.accelerator.num_processes < 2:
            raise ConfigError("fsdp: shards over several processes; launch with torchrun --nproc_per_node N")
        if self.objective.samples:  # each rank would generate its own number of tokens: the shards' gathers
            raise ConfigError(f"fsdp: {self.objective.name} samples while it trains; train it without fsdp")
        # What is saved whole comes from a plain copy on the main process (host memory, as FSDP's
        # full state dict would be), not from the shards.
        self.whole_copy = copy.deepcopy(model) if self.main else None
        sharding.shard(model)  # which moves each unit's part to this rank's device

    def _references(self, model) -> None:
        """The start's log-probs of every train and val item, for the objectives scored against the start
        (DPO, IPO, KTO): scored once, by the main process, and kept in the run folder with a fingerprint of
        the items, so that every rank and a resumed run read the same numbers."""
        if not self.objective.uses_reference:
            return
        sets = {"train": self.train_items} | {f"val/{name}": items for name, items in self.val_sets.items()}
        start = f"{self.config.model} {self.config.init_adapter}"  # what the model was as training began
        path, fingerprint = RunDir(self.out).reference_logps, items_fingerprint(sets, start)
        if self.main and not (self.config.resume and path.exists()):
            scores = self._score_start(model, sets)
            with atomic_folder(path.parent) as folder:
                ckpt.save_file(scores, folder / path.name, metadata={"fingerprint": fingerprint})
        self.accelerator.wait_for_everyone()
        with safe_open(path, "pt") as saved:
            if (saved.metadata() or {}).get("fingerprint") != fingerprint:
                raise ConfigError(
                    f"{path} holds the start's log-probs of other examples: the data, max_length or model "
                    "changed since this run started; start again with --overwrite"
                )
            for name, items in sets.items():
                self.objective.attach_reference(items, saved.get_tensor(name))

    def _score_start(self, model, sets: dict) -> dict[str, torch.Tensor]:
        device, pad_id, batch = self.accelerator.device, self.tokenizer.pad_token_id, self.config.batch_size
        total = sum(len(items) for items in sets.values())
        self.log(f"{self.objective.name}: scoring the {total} examples by the model as it starts (once)")
        model.to(device)
        score, precision = self.objective.prepare_reference, self.precision
        return {name: score(model, items, pad_id, batch, device, precision) for name, items in sets.items()}

    def _measure(self, model) -> MemoryModel:
        """What the run will cost (memory.py), measured on the model as it will train."""
        trainable = sum(p.numel() for _, p in self.method.optimizer_params(model))
        vocab = model.config.vocab_size  # a classifier has no output embeddings
        device = next(model.parameters()).device
        return measure(model, self.objective, trainable, vocab, device, self.precision, max(self.lengths))

    def _fit_memory(self, model) -> None:
        """Under `memory_budget`, cut batches to fit (checkpointing the activations when even one example
        would not)."""
        config, longest, memory = self.config, max(self.lengths), self.memory
        budget = parse_bytes(config.memory_budget)
        tokens = self._budget_tokens(memory, budget, longest)
        if tokens is None and not config.gradient_checkpointing:
            enable_checkpointing(model)
            config.gradient_checkpointing = True
            memory = self.memory = self._measure(model)
            tokens = self._budget_tokens(memory, budget, longest)
        if tokens is None:
            need = memory.peak(1, longest) / 2**30
            raise ConfigError(
                f"memory_budget {config.memory_budget} is below what one {longest}-token example needs even "
                f"with gradient checkpointing (about {need:.1f} GiB); raise it or lower max_length"
            )
        self.micro_tokens = tokens
        self.log(
            f"memory budget {config.memory_budget}: micro-batches of at most {tokens} tokens"
            f"{', gradient checkpointing' if config.gradient_checkpointing else ''}"
        )

    def _budget_tokens(self, memory: MemoryModel, budget: float, longest: int) -> int | None:
        """Micro-batch tokens within `budget`; never more than the run would use without one."""
        tokens = batch_tokens_for(memory, budget, longest, self.config.batch_size)
        return min(tokens, self.micro_tokens or tokens) if tokens else None

    def predicted(self) -> Prediction:
        """Peak memory and speed this run should reach, from `self.memory` and its first epoch's batches;
        a step's time is its padded tokens at the speed the probes measured."""
        steps = [[m for batch in group for m in self._micro(batch)] for group in self._epoch_groups(0)]
        micro = [m for step in steps for m in step]
        worst = max(micro, key=lambda m: self.memory.activations(len(m), max(self.lengths[i] for i in m)))
        rows, length = len(worst), max(self.lengths[i] for i in worst)
        padded = sum(len(m) * max(self.lengths[i] for i in m) for m in micro)
        step_s = padded / len(steps) * self.memory.seconds_per_token
        total_s = step_s * self.plan.total_steps
        if self.budget:  # the run stops when its time is spent
            total_s = min(total_s, 60 * self.config.max_minutes)
        return Prediction(
            predicted_peak_mb=round(self.memory.peak(rows, length) / 2**20, 1),
            fixed_mb=round(self.memory.fixed / 2**20, 1),
            activation_mb_per_token=round(self.memory.activations(1, length) / length / 2**20, 4),
            largest_micro_batch=f"{rows} x {length} tokens",
            micro_batch_tokens=self.micro_tokens,
            predicted_tokens_per_s=round(1 / self.memory.seconds_per_token, 1),
            predicted_s_per_step=round(step_s, 3),
            total_steps=self.plan.total_steps,
            predicted_total_s=round(total_s, 1),
        )

    def _micro(self, batch: list[int]) -> list[list[int]]:
        if not self.micro_tokens:
            return [batch]
        return split_by_tokens(batch, self.lengths, self.micro_tokens)

    def _optimizer(self, model):
        config = self.config
        self.peak_lr = config.lr or self.method.default_lr
        groups = param_groups(self.method.optimizer_params(model), config, self.peak_lr, self.method)
        optimizer = torch.optim.AdamW(groups, lr=self.peak_lr)
        return optimizer, lr_scheduler(optimizer, self.plan)

    def fit(self) -> TrainResult:
        config, state = self.config, self.state
        if config.dry_run:  # nothing is written
            prediction = asdict(self.predicted())
            self.log(", ".join(f"{key.replace('_', ' ')}: {value}" for key, value in prediction.items()))
            return TrainResult(self.out, prediction)
        checkpoints = ckpt.list_checkpoints(self.out)
        if config.resume and checkpoints:
            rank = self.accelerator.process_index
            loaded = ckpt.load_checkpoint(
                checkpoints[-1], self.unwrapped, self.optimizer, self.scheduler, rank
            )
            state = self.state = TrainState(**loaded)
            self.plan.total_steps = state.planned_steps or self.plan.total_steps
            self.log(f"Resuming from {checkpoints[-1]} (step {state.step})")
        self.metrics = None
        if self.main:
            self.metrics = MetricsLog(self.out, state.step or None, on_record=self.hooks.on_record)
        try:
            self._announce()
            self._run()
            whole = self._whole_model()
            return self._finish(whole) if self.main else TrainResult(self.out, {})
        finally:
            if self.metrics:  # also when a hook stopped the run: no TensorBoard thread is left behind
                self.metrics.close()

    def _run(self) -> None:
        config, state = self.config, self.state
        self.progress = TrainProgress(self.console, self.plan.total_steps, state.step)
        started = time.perf_counter() - state.elapsed_s
        with self.progress:
            if self.val_sets and state.step == 0:
                self._evaluate(baseline=True)
                state.baseline_s = self._main_value(time.perf_counter() - started)
            self.model.train()
            while state.step < self.plan.total_steps and not state.stopped_early:
                groups = self._epoch_groups(state.epoch)
                for index in range(state.group_in_epoch, len(groups)):
                    self._step(groups[index], started)
                    state.group_in_epoch = index + 1
                    self._after_step()
                    if self.pausing:
                        self._pause()
                    if self.config.max_minutes and self._train_s() >= 60 * self.config.max_minutes:
                        state.stopped_early = True  # the time budget is spent
                    if state.step >= self.plan.total_steps or state.stopped_early:
                        break
                else:
                    state.epoch, state.group_in_epoch = state.epoch + 1, 0
                    if self.val_sets and not config.eval_every:
                        self._evaluate()
            if self.val_sets and state.last_eval_step != state.step:
                self._evaluate()  # always end with a val loss for the final weights

    def _train_s(self) -> float:
        """Seconds spent training so far: steps and periodic evaluations, not the baseline evaluation."""
        return self.state.elapsed_s - self.state.baseline_s

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        indices = epoch_indices(self.task_sizes, self.mix, self.config.seed, epoch)
        return epoch_batches(self.lengths, self.config.batch_size, self.config.seed, epoch, indices=indices)

    def _epoch_groups(self, epoch: int) -> list[list[list[int]]]:
        """This rank's micro-batches for an epoch, grouped into optimizer steps."""
        config, world = self.config, self.accelerator.num_processes
        batches = self._epoch_batches(epoch)
        batches = batches[self.accelerator.process_index : self.micro_per_epoch * world : world]
        return [batches[i : i + config.grad_accum] for i in range(0, len(batches), config.grad_accum)]

    def _step(self, group: list[list[int]], started: float) -> None:
        state, pad_id = self.state, self.tokenizer.pad_token_id
        self.method.on_step(self.unwrapped, state.step, self.plan.total_steps)
        lr_factor = self.plan.factor(state.step)  # what the scheduler set for this step
        item_batches = [[self.train_items[i] for i in m] for batch in group for m in self._micro(batch)]
        micro = self.objective.step_batches(
            self.unwrapped, item_batches, pad_id, self.micro_tokens, self.precision
        )
        result = train_step(
            self.model, micro, self.optimizer, self.scheduler, self.accelerator, self.config, self.precision,
            self.objective,
        )  # fmt: skip
        loss, grad_norm = result.loss, result.grad_norm
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise TrainingDiverged(
                f"loss became {loss} (grad norm {grad_norm}) at step {state.step + 1}; no model was saved. "
                "Lower --lr, check the data, or keep --max-grad-norm on."
            )
        state.step += 1
        self.pausing = self._ask_hooks()
        state.last_loss = loss
        state.tokens_seen += result.tokens
        state.elapsed_s = self._main_value(time.perf_counter() - started)
        state.max_lr_factor = max(state.max_lr_factor, lr_factor)
        if self.budget:
            self.plan.total_steps = self.budget.plan(state.step, self._train_s())
            apply_plan(self.scheduler)
        state.planned_steps = self.plan.total_steps
        rate = state.tokens_seen / max(self._train_s(), 1e-9)
        self.progress.update(state.step, loss, rate, total=self.plan.total_steps)
        if self.main and state.step % self.config.log_every == 0:
            record = {"kind": "train", "step": state.step, "epoch": state.epoch, "loss": loss}
            record |= {"lr": self.peak_lr * lr_factor, "grad_norm": grad_norm}
            record |= {"tokens_per_s": rate, "elapsed_s": state.elapsed_s} | result.measured
            self.metrics.log(record)

    def _ask_hooks(self) -> bool:
        """Whether to pause after this step. The main process's hooks decide (they stop the run by raising)
        and every rank does the same, so no rank is left waiting for another in a collective."""
        verdict: list = [None, False]
        if self.main:
            try:
                self.hooks.on_step(self.state.step)
                verdict = [None, self.hooks.pause_requested()]
            except Exception as stop:
                verdict = [stop, False]
        stop, pause = self._main_value(verdict)
        if stop is not None:
            raise stop
        return pause

    def _main_value(self, value):
        """The main process's `value` on every rank: what a decision depends on (a hook's verdict, a clock
        reading under a time budget) must be the same everywhere, or the ranks part ways."""
        if self.accelerator.num_processes == 1:
            return value
        box = [value]
        broadcast_object_list(box)
        return box[0]

    def _after_step(self) -> None:
        config, state = self.config, self.state
        if self.val_sets and config.eval_every and state.step % config.eval_every == 0:
            self._evaluate()
        if self.save_every and state.step % self.save_every == 0:
            self._save_checkpoint()

    def _save_checkpoint(self) -> None:
        # Every rank's RNG state (dropout differs per rank), so a resumed DDP run continues exactly.
        rng_states = gather_object([ckpt.rng_state()])
        shards = None
        if sharding.is_sharded(self.model):  # every rank writes its part; the main process the rest
            shards = ckpt.shards_folder(self.out, self.state.step)
            if self.main:
                shutil.rmtree(shards, ignore_errors=True)  # a killed run's parts
            self.accelerator.wait_for_everyone()
            sharding.save_sharded(shards, self.model, self.optimizer)
        whole = self._whole_model()
        if self.main:
            ckpt.save_checkpoint(
                self.out, self.state.step, whole, self.optimizer, self.scheduler, asdict(self.state),
                self.config.keep_checkpoints, rng_states, shards,
            )  # fmt: skip
            self.hooks.on_checkpoint(self, whole, self.state.step)

    def _pause(self) -> None:
        """A checkpoint of this step (unless one was just saved), then `RunPaused`."""
        saved = ckpt.list_checkpoints(self.out)
        if not saved or saved[-1].name != ckpt.checkpoint_name(self.state.step):
            self._save_checkpoint()
        raise RunPaused(f"paused after step {self.state.step}")

    def _evaluate(self, baseline: bool = False) -> None:
        """Val loss (overall and per task); keeps the best weights and decides early stopping.

        The baseline (before any step) is only recorded: the untrained weights are not a candidate."""
        state, config = self.state, self.config
        by_task = {
            name: evaluate_loss(
                self.unwrapped, items, config.batch_size, self.tokenizer.pad_token_id,
                self.accelerator.device, self.precision, self.objective,
            )
            for name, items in self.val_sets.items()
        }  # fmt: skip
        targets = sum(result.targets for result in by_task.values())
        val_loss = sum(result.loss * result.targets for result in by_task.values()) / max(targets, 1)
        totals: dict = {}
        for result in by_task.values():
            add_stats(totals, result.totals)
        measured = {f"val_{name}": value for name, value in self.objective.means(totals).items()}
        if baseline:
            state.baseline_val_loss = val_loss
            if self.main:
                record = {"kind": "eval", "step": 0, "val_loss": val_loss, "baseline": True} | measured
                self.metrics.log(record, prefix="eval")
                self.progress.note(f"before training: val loss {val_loss:.4f}")
            return
        state.last_eval_step = state.step
        improved = state.best_val_loss is None or val_loss < state.best_val_loss
        if improved:
            state.best_val_loss, state.best_step, state.evals_without_improvement = val_loss, state.step, 0
            state.best_val_measured = measured
            whole = self._whole_model()
            if self.main:
                weights = ckpt.trainable_state(whole)
                with atomic_folder(RunDir(self.out).best) as folder:
                    ckpt.save_file(weights, folder / ckpt.WEIGHTS)
        else:
            state.evals_without_improvement += 1
        state.stopped_early = bool(config.patience and state.evals_without_improvement >= config.patience)
        if self.main:
            record = {"kind": "eval", "step": state.step, "val_loss": val_loss} | measured
            if len(by_task) > 1:
                record |= {f"val_loss/{name}": result.loss for name, result in by_task.items()}
            self.metrics.log(record, prefix="eval")
            self.progress.note(f"step {state.step}: val loss {val_loss:.4f}{' (best)' if improved else ''}")

    def _announce(self) -> None:
        pct = 100 * padding_fraction(self.lengths, self._epoch_batches(0))
        self.header = {
            "kind": "run", "step": self.state.step, "method": self.method.name,
            "trainable_params": self.trainable, "total_params": self.total_params,
            "trainable_pct": 100 * self.trainable / self.total_params,
            "train_examples": len(self.train_items),
            "val_examples": sum(len(items) for items in self.val_sets.values()),
            "tasks": {task.name: len(task.train) for task in self.tasks},
            "total_steps": self.plan.total_steps, "time_budget_s": self.budget and self.budget.seconds,
            "padding_pct": round(pct, 2), "precision": self.precision, "auto": self.auto,
            **self.data_stats,
        }  # fmt: skip
        if not self.main:
            return
        self.metrics.log(self.header, prefix="run")
        length = f"{self.plan.total_steps} steps"
        if self.budget:
            length = f"a {self.config.max_minutes:g}-minute budget (steps planned as they are timed)"
        self.log(
            f"[bold]{self.method.name}[/]: {self.trainable:,} trainable of {self.total_params:,} "
            f"parameters ({self.header['trainable_pct']:.3f}%); {len(self.train_items)} examples, "
            f"{length}, padding {pct:.1f}%, precision {self.precision}"
        )
        if self.data_stats["truncated"]:
            self.log(
                f"[yellow]{self.data_stats['truncated']} examples were longer than max_length="
                f"{self.config.max_length} and were truncated"
            )

    def _whole_model(self):
        """Every rank together: the model as trained so far, whole, on the main process (a sharded run's
        plain copy, its trained weights gathered into it now); None on the other ranks of a sharded run."""
        if not sharding.is_sharded(self.model):
            return self.unwrapped
        names = [name for name, _ in self.method.optimizer_params(self.model)]
        sharding.gather(self.model, names, self.whole_copy)
        return self.whole_copy

    def _finish(self, model) -> TrainResult:
        """On the main process: the final model (`model`: whole) and the run's summary."""
        state = self.state
        if state.best_step is not None and state.best_step != state.step:
            self.log(f"Keeping the best weights: step {state.best_step} (val loss {state.best_val_loss:.4f})")
            ckpt.load_trainable_state(model, ckpt.load_file(RunDir(self.out).best / ckpt.WEIGHTS))
        summary = {
            "method": self.method.name,
            "steps": state.step,
            "planned_steps": self.plan.total_steps,
            "epochs_completed": round(state.step / self.steps_per_epoch, 3),
            "peak_lr": self.peak_lr,
            "max_lr_reached": self.peak_lr * state.max_lr_factor,
            "final_train_loss": state.last_loss,
            "baseline_val_loss": state.baseline_val_loss,
            "best_val_loss": state.best_val_loss,
            "best_step": state.best_step,
            **(state.best_val_measured or {}),
            "stopped_early": state.stopped_early,
            "trainable_params": self.trainable,
            "total_params": self.total_params,
            "trainable_pct": round(100 * self.trainable / self.total_params, 4),
            "trained_tokens": state.tokens_seen,
            "wall_time_s": round(state.elapsed_s, 1),
            "tokens_per_s": round(state.tokens_seen / max(self._train_s(), 1e-9), 1),
            "peak_memory_mb": round(peak_bytes("cuda" if torch.cuda.is_available() else None) / 2**20, 1),
            "padding_pct": self.header["padding_pct"],
        }
        summary["artifact_mb"], summary["weights_mb"] = save_final(
            self.out, model, self.tokenizer, self.method, self.config, summary
        )
        self.metrics.log({"kind": "summary", "step": state.step, **summary}, prefix="summary")
        RunDir(self.out).write_summary(summary)  # last: marks the run finished
        self.log(
            f"Saved {self.method.name} model to {self.out} ({summary['artifact_mb']} MB, weights "
            f"{summary['weights_mb']} MB); "
            f"{summary['wall_time_s']} s, {summary['tokens_per_s']} tokens/s, "
            f"peak memory {summary['peak_memory_mb']} MB"
        )
        return TrainResult(self.out, summary)


def disable_dropout(model) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def items_fingerprint(sets: dict[str, list], start: str) -> str:
    """A hash of the encoded items (before their reference is attached) and of what the model started as."""
    digest = hashlib.sha256(start.encode())
    for name, items in sets.items():
        digest.update(name.encode())
        for item in items:
            digest.update(repr(asdict(item)).encode())
    return digest.hexdigest()


def param_groups(named_params: list, config: TrainConfig, lr: float, method: Method) -> list[dict]:
    """AdamW groups: no weight decay on biases and norms; with `layer_lr_decay`, block i of L gets
    lr * decay**(L - 1 - i) and the embeddings lr * decay**L; the method may give a parameter its own lr
    (e.g. a new head's)."""
    blocks = [int(m.group(1)) for name, _ in named_params if (m := BLOCK_INDEX.search(name))]
    n_blocks = max(blocks) + 1 if blocks else 0
    groups: dict[tuple[float, float], list] = {}
    for name, param in named_params:
        scale = 1.0
        if config.layer_lr_decay:
            match = BLOCK_INDEX.search(name)
            if match:
                scale = config.layer_lr_decay ** (n_blocks - 1 - int(match.group(1)))
            elif "embed" in name:
                scale = config.layer_lr_decay**n_blocks
        group_lr = method.parameter_lr(name, config.options) or lr * scale
        decay = config.weight_decay if param.ndim >= 2 else 0.0
        groups.setdefault((group_lr, decay), []).append(param)
    return [{"params": ps, "lr": glr, "weight_decay": wd} for (glr, wd), ps in groups.items()]
