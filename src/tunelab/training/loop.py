"""The one training loop every method shares.

It runs as a single process on a laptop and, unchanged, under `torchrun`/`accelerate launch` (DDP): the
Accelerator places the model, wraps it for DDP and handles autocast; each rank takes its slice of batches
and the token count that normalises the loss is summed over ranks and micro-batches.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_scheduler

from ..data import load_examples
from ..data.batching import collate, count_label_tokens, epoch_batches
from ..data.tokenize import IGNORE_INDEX, EncodedExample, encode_examples
from ..methods import get_method
from ..models import display_name, load_model
from . import checkpoint as ckpt
from .config import ConfigError, TrainConfig
from .progress import TrainProgress
from .report import MetricsLog, plot_loss, write_model_card

SUMMARY_FILE = "summary.json"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; no final model is written."""


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint so `--resume` continues from exactly here."""

    step: int = 0
    epoch: int = 0
    group_in_epoch: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    last_eval_step: int | None = None
    last_loss: float | None = None


@dataclass
class TrainResult:
    out_dir: Path
    summary: dict


def pick_precision(choice: str) -> str:
    """'bf16' (autocast) or 'fp32'. bf16 autocast only where the hardware does bf16 natively (CUDA with
    bf16, or CPUs with AVX512-BF16/AMX): elsewhere it is emulated and about 10x slower than fp32."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "fp32"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


def autocast(device: torch.device, precision: str):
    # Our own autocast rather than Accelerator(mixed_precision=...): accelerate keeps that setting in a
    # process-wide singleton, so a second run with another precision in the same process would fail.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def check_out_dir(out: Path, config: TrainConfig) -> None:
    """Refuse to clobber a finished model or an unfinished run's checkpoints by accident."""
    if config.overwrite:
        shutil.rmtree(out, ignore_errors=True)
        return
    if (out / SUMMARY_FILE).exists():
        raise ConfigError(f"{out} already holds a finished run; choose another --out or pass --overwrite")
    if ckpt.list_checkpoints(out) and not config.resume:
        raise ConfigError(
            f"{out} holds checkpoints of an unfinished run; pass --resume to continue it or --overwrite"
        )


def encode_file(path: str, tokenizer, config: TrainConfig) -> tuple[list[EncodedExample], dict]:
    examples = load_examples(path, format=config.format)
    return encode_examples(examples, tokenizer, config.max_length, config.train_on_inputs)


def padding_fraction(items: list[EncodedExample], batches: list[list[int]]) -> float:
    real = sum(len(items[i].input_ids) for b in batches for i in b)
    padded = sum(len(b) * max(len(items[i].input_ids) for i in b) for b in batches)
    return 1 - real / padded if padded else 0.0


def causal_lm_loss(model, batch: dict, normaliser) -> torch.Tensor:
    """Summed next-token loss over labelled positions, divided by `normaliser`.

    Logits are computed only at positions that predict a label (`logits_to_keep`): the vocabulary
    projection and softmax over 49k tokens at every prompt position would cost about a third of the step.
    """
    labels = batch["labels"]
    positions = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (P,)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=positions
    ).logits  # (B, P, V)
    targets = labels[:, positions + 1]  # (B, P)
    loss = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss / normaliser


def evaluate_loss(
    model, items: list[EncodedExample], batch_size: int, pad_id: int, device, precision="fp32"
) -> float:
    """Mean loss per target token over all items (not a mean of batch means)."""
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = collate([items[i] for i in order[start : start + batch_size]], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device, precision):
                total += causal_lm_loss(model, batch, 1).item()
            count += count_label_tokens(batch["labels"])
    model.train()
    return total / max(count, 1)


def train(config: TrainConfig, console=None) -> TrainResult:
    """Train `config.method` on `config.data` and write the result to `config.out`."""
    out = Path(config.out)
    if not config.out:
        raise ConfigError("out: an output folder is required")
    check_out_dir(out, config)
    out.mkdir(parents=True, exist_ok=True)
    method = get_method(config.method)
    log = console.print if console else (lambda *a, **k: None)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # cpu=True enables DDP over gloo on CPUs
    precision = pick_precision(config.precision)
    main = accelerator.is_main_process
    set_seed(config.seed)

    model, tokenizer = load_model(config.model, log=log)
    model = method.prepare(model, config)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    train_items, data_stats = encode_file(config.data, tokenizer, config)
    val_items = encode_file(config.val, tokenizer, config)[0] if config.val else []
    if not train_items:
        raise ConfigError(f"{config.data}: no example has tokens to learn (check the assistant turns)")

    lengths = [len(item.input_ids) for item in train_items]
    world, rank = accelerator.num_processes, accelerator.process_index
    micro_per_epoch = len(epoch_batches(lengths, config.batch_size, config.seed, 0)) // world
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / config.grad_accum))
    total_steps = config.max_steps or math.ceil(steps_per_epoch * config.epochs)
    warmup = int(config.warmup * total_steps) if config.warmup < 1 else int(config.warmup)
    lr = config.lr or method.default_lr

    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    total_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases and norms are not decayed
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
    )
    scheduler = get_scheduler(
        config.scheduler if config.scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    state = TrainState()
    if config.resume and ckpt.list_checkpoints(out):
        latest = ckpt.list_checkpoints(out)[-1]
        state = TrainState(**ckpt.load_checkpoint(latest, unwrapped, optimizer, scheduler))
        log(f"Resuming from {latest} (step {state.step})")
    metrics = MetricsLog(out, resume_step=state.step if state.step else None) if main else None

    pad_id = tokenizer.pad_token_id
    pct = 100 * padding_fraction(train_items, epoch_batches(lengths, config.batch_size, config.seed, 0))
    header = {
        "kind": "run",
        "step": state.step,
        "method": method.name,
        "trainable_params": trainable,
        "total_params": total_params,
        "trainable_pct": 100 * trainable / total_params,
        "train_examples": len(train_items),
        "val_examples": len(val_items),
        "total_steps": total_steps,
        "padding_pct": round(pct, 2),
        "precision": precision,
        **data_stats,
    }
    if main:
        metrics.log(header, prefix="run")
        log(
            f"[bold]{method.name}[/]: {trainable:,} trainable of {total_params:,} parameters "
            f"({header['trainable_pct']:.3f}%); {len(train_items)} examples, {total_steps} steps, "
            f"padding {pct:.1f}%, precision {precision}"
        )
        if data_stats["truncated"]:
            log(
                f"[yellow]{data_stats['truncated']} examples were longer than max_length="
                f"{config.max_length} and were truncated"
            )

    def save_best() -> None:
        ckpt.write_atomically(
            out / "best",
            lambda folder: ckpt.save_file(ckpt.trainable_state(unwrapped), folder / "trainable.safetensors"),
        )

    def run_eval() -> bool:
        """Evaluate; returns True when early stopping should end the run."""
        val_loss = evaluate_loss(
            unwrapped, val_items, config.batch_size, pad_id, accelerator.device, precision
        )
        state.last_eval_step = state.step
        improved = state.best_val_loss is None or val_loss < state.best_val_loss
        if improved:
            state.best_val_loss, state.best_step, state.evals_without_improvement = val_loss, state.step, 0
            if main:
                save_best()
        else:
            state.evals_without_improvement += 1
        if main:
            metrics.log({"kind": "eval", "step": state.step, "val_loss": val_loss}, prefix="eval")
            progress.note(f"step {state.step}: val loss {val_loss:.4f}{' (best)' if improved else ''}")
        return bool(config.patience and state.evals_without_improvement >= config.patience)

    progress = TrainProgress(console if main else None, total_steps, state.step)
    started = time.perf_counter() - state.elapsed_s
    model.train()
    with progress:
        while state.step < total_steps and not state.stopped_early:
            batches = epoch_batches(lengths, config.batch_size, config.seed, state.epoch)
            batches = batches[rank : micro_per_epoch * world : world]
            groups = [batches[i : i + config.grad_accum] for i in range(0, len(batches), config.grad_accum)]
            for group_index in range(state.group_in_epoch, len(groups)):
                micro = [collate([train_items[i] for i in b], pad_id) for b in groups[group_index]]
                loss, grad_norm, tokens = train_step(
                    model, micro, optimizer, scheduler, accelerator, config, precision
                )
                if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                    raise TrainingDiverged(
                        f"loss became {loss} (grad norm {grad_norm}) at step {state.step + 1}; "
                        "no model was saved. "
                        "Lower --lr, check the data, or keep --max-grad-norm on."
                    )
                state.step += 1
                state.last_loss = loss
                state.group_in_epoch = group_index + 1
                state.tokens_seen += tokens
                state.elapsed_s = time.perf_counter() - started
                rate = state.tokens_seen / max(state.elapsed_s, 1e-9)
                progress.update(state.step, loss, rate)
                if main and state.step % config.log_every == 0:
                    metrics.log(
                        {
                            "kind": "train",
                            "step": state.step,
                            "epoch": state.epoch,
                            "loss": loss,
                            "lr": scheduler.get_last_lr()[0],
                            "grad_norm": grad_norm,
                            "tokens_per_s": rate,
                            "elapsed_s": state.elapsed_s,
                        }
                    )
                if val_items and config.eval_every and state.step % config.eval_every == 0:
                    state.stopped_early = run_eval()
                if config.save_every and state.step % config.save_every == 0 and main:
                    ckpt.save_checkpoint(
                        out,
                        state.step,
                        unwrapped,
                        optimizer,
                        scheduler,
                        state.__dict__,
                        config.keep_checkpoints,
                    )
                if state.step >= total_steps or state.stopped_early:
                    break
            else:
                state.epoch, state.group_in_epoch = state.epoch + 1, 0
                if val_items and not config.eval_every:
                    state.stopped_early = run_eval()
        if val_items and state.last_eval_step != state.step:
            run_eval()  # always end with a val loss for the final weights

    if not main:
        return TrainResult(out, {})
    if state.best_step is not None and state.best_step != state.step:
        log(f"Keeping the best weights: step {state.best_step} (val loss {state.best_val_loss:.4f})")
        ckpt.load_trainable_state(unwrapped, ckpt.load_file(out / "best" / "trainable.safetensors"))
    peak_mb = (
        torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    summary = {
        "method": method.name,
        "steps": state.step,
        "epochs_completed": round(state.step / steps_per_epoch, 3),
        "final_train_loss": state.last_loss,
        "best_val_loss": state.best_val_loss,
        "best_step": state.best_step,
        "stopped_early": state.stopped_early,
        "trainable_params": trainable,
        "total_params": total_params,
        "trainable_pct": round(100 * trainable / total_params, 4),
        "wall_time_s": round(state.elapsed_s, 1),
        "tokens_per_s": round(state.tokens_seen / max(state.elapsed_s, 1e-9), 1),
        "peak_memory_mb": round(peak_mb, 1),
        "padding_pct": round(pct, 2),
    }
    summary["artifact_mb"] = save_final(out, unwrapped, tokenizer, method, config, summary)
    metrics.log({"kind": "summary", "step": state.step, **summary}, prefix="summary")
    metrics.close()
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))  # written last: marks the run finished
    log(
        f"Saved {method.name} model to {out} ({summary['artifact_mb']} MB); "
        f"{summary['wall_time_s']} s, {summary['tokens_per_s']} tokens/s, "
        f"peak memory {summary['peak_memory_mb']} MB"
    )
    return TrainResult(out, summary)


def train_step(
    model, micro, optimizer, scheduler, accelerator, config, precision
) -> tuple[float, float, int]:
    """One optimizer step over a group of micro-batches; the loss is a mean over all their target tokens."""
    n_targets = torch.tensor(sum(count_label_tokens(b["labels"]) for b in micro), device=accelerator.device)
    n_targets = accelerator.reduce(n_targets, "sum")
    world = accelerator.num_processes  # DDP averages gradients over ranks; the token mean wants their sum
    total_loss, tokens = 0.0, 0
    for k, batch in enumerate(micro):
        batch = {key: value.to(accelerator.device) for key, value in batch.items()}
        tokens += int(batch["attention_mask"].sum())
        sync = k == len(micro) - 1
        with nullcontext() if sync else accelerator.no_sync(model), autocast(accelerator.device, precision):
            loss = causal_lm_loss(model, batch, n_targets) * world
        accelerator.backward(loss)
        total_loss += loss.item() / world
    # Each rank holds its share of the mean; the logged loss and token count are the whole step's.
    totals = accelerator.reduce(
        torch.tensor([total_loss, tokens], dtype=torch.float64, device=accelerator.device), "sum"
    )
    total_loss, tokens = totals[0].item(), int(totals[1].item())
    if not math.isfinite(total_loss):
        return total_loss, float("nan"), tokens
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = float(accelerator.clip_grad_norm_(params, config.max_grad_norm or float("inf")))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total_loss, grad_norm, tokens


def save_final(out: Path, model, tokenizer, method, config: TrainConfig, summary: dict) -> float:
    """Write the artefact into a temporary folder, then move its files into `out`; returns its size in MB."""
    tmp = out / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    method.save(model, tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "tunelab.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    size_mb = round(sum(f.stat().st_size for f in tmp.iterdir()) / 2**20, 2)
    write_model_card(
        tmp, out, config.to_dict(), {**summary, "artifact_mb": size_mb}, display_name(config.model)
    )
    for item in tmp.iterdir():
        item.replace(out / item.name)
    tmp.rmdir()
    plot_loss(out)
    return size_mb
