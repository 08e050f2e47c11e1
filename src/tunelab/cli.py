"""The `tunelab` command: a thin layer over the Python API. Every command calls one importable function."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="Adapt pretrained language models to your task.", no_args_is_help=True)
data_app = typer.Typer(help="Check, split and prepare training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)


def _quiet_libraries() -> None:
    # Library progress bars and deprecation chatter drown our own progress output.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def user_errors(fn):
    """Turn the errors a user can cause into one clear red line and exit code 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import UserError

        _quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except (UserError, FileNotFoundError) as err:
            err_console.print(f"[bold red]error:[/] {err}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="'default' (embedded SmolLM2-135M), folder, .gguf or hub id")
]
AdapterOpt = Annotated[str | None, typer.Option(help="adapter folder (LoRA, ...) to apply on the model")]


@app.command("train")
@user_errors
def train_cmd(
    data: Annotated[str | None, typer.Option(help="training file")] = None,
    out: Annotated[str | None, typer.Option(help="output folder")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="base model (default: embedded)")] = None,
    val: Annotated[str | None, typer.Option(help="validation file")] = None,
    method: Annotated[str | None, typer.Option(help="lora or full")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file with the same keys; flags override it")
    ] = None,
    format: Annotated[
        str | None, typer.Option(help="chat, prompt-completion, alpaca, classification")
    ] = None,
    epochs: Annotated[float | None, typer.Option()] = None,
    max_steps: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    grad_accum: Annotated[int | None, typer.Option()] = None,
    max_length: Annotated[int | None, typer.Option()] = None,
    warmup: Annotated[float | None, typer.Option(help="fraction of steps if < 1, else steps")] = None,
    scheduler: Annotated[str | None, typer.Option(help="cosine, linear or constant")] = None,
    weight_decay: Annotated[float | None, typer.Option()] = None,
    max_grad_norm: Annotated[float | None, typer.Option()] = None,
    dropout: Annotated[float | None, typer.Option()] = None,
    lora_r: Annotated[int | None, typer.Option()] = None,
    lora_alpha: Annotated[int | None, typer.Option()] = None,
    target_modules: Annotated[str | None, typer.Option(help="comma-separated module names")] = None,
    dora: Annotated[bool | None, typer.Option("--dora/--no-dora")] = None,
    rslora: Annotated[bool | None, typer.Option("--rslora/--no-rslora")] = None,
    train_on_inputs: Annotated[bool | None, typer.Option("--train-on-inputs/--no-train-on-inputs")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    eval_every: Annotated[int | None, typer.Option()] = None,
    patience: Annotated[int | None, typer.Option()] = None,
    save_every: Annotated[int | None, typer.Option()] = None,
    keep_checkpoints: Annotated[int | None, typer.Option()] = None,
    resume: Annotated[
        bool | None, typer.Option("--resume", help="continue from the last checkpoint in --out")
    ] = None,
    overwrite: Annotated[
        bool | None, typer.Option("--overwrite", help="replace a finished run in --out")
    ] = None,
    precision: Annotated[str | None, typer.Option(help="auto, fp32 or bf16")] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option("--gradient-checkpointing")] = None,
):
    """Fine-tune a model on a data file."""
    from .training import ConfigError, TrainConfig, train

    overrides = {
        k: v for k, v in locals().items() if k not in ("config", "TrainConfig", "train", "ConfigError")
    }
    cfg = TrainConfig.from_sources(config, **overrides)
    if not cfg.data or not cfg.out:
        raise ConfigError("--data and --out are required (as flags or in --config)")
    train(cfg, console=console)


@app.command()
@user_errors
def chat(
    prompt: Annotated[str | None, typer.Argument(help="one message; interactive when omitted")] = None,
    model: ModelOpt = "default",
    adapter: AdapterOpt = None,
    system: Annotated[str | None, typer.Option(help="system message")] = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
):
    """Chat with a model (streams the reply)."""
    from .inference import load_for_inference, stream_chat

    llm, tokenizer = load_for_inference(model, adapter)
    messages = [{"role": "system", "content": system}] if system else []
    while True:
        text = prompt if prompt is not None else _ask()
        if text is None:
            return
        messages.append({"role": "user", "content": text})
        reply = ""
        if prompt is None:
            console.print("[bold green]model>[/] ", end="")
        for piece in stream_chat(llm, tokenizer, messages, max_new_tokens, temperature):
            reply += piece
            console.print(piece, end="", highlight=False, markup=False)
        console.print()
        if prompt is not None:
            return
        messages.append({"role": "assistant", "content": reply})


def _ask() -> str | None:
    try:
        text = console.input("[bold cyan]you>[/] ")
    except EOFError:
        return None
    return None if text.strip() in ("/exit", "/quit") else text


@app.command("generate")
@user_errors
def generate_cmd(
    data: Annotated[
        str, typer.Option(help="examples to answer (their last assistant turn, if any, is the reference)")
    ],
    out: Annotated[str, typer.Option(help="predictions JSONL")],
    model: ModelOpt = "default",
    adapter: AdapterOpt = None,
    format: Annotated[str | None, typer.Option()] = None,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    seed: int = 0,
):
    """Generate a reply for every example in a file (batched, greedy by default)."""
    from .inference import generate_file, load_for_inference

    llm, tokenizer = load_for_inference(model, adapter)
    with console.status("generating"):
        n = generate_file(
            llm,
            tokenizer,
            data,
            out,
            format,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
        )
    console.print(f"Wrote {n} predictions to {out}")


@app.command()
@user_errors
def demo(
    out: Annotated[str, typer.Option(help="folder for the demo data and adapter")] = "runs/demo",
    steps: Annotated[int, typer.Option(help="LoRA optimizer steps")] = 30,
):
    """Fine-tune the embedded model on a generated task and show before/after."""
    from .demo import run_demo

    result = run_demo(out, steps=steps, console=console)
    if result.after <= result.before:
        raise typer.Exit(1)


@app.command()
def methods():
    """List the tuning methods."""
    from .methods import REGISTRY

    for name, method in sorted(REGISTRY.items()):
        console.print(f"[bold]{name}[/]: {method.summary} (default lr {method.default_lr})")


@data_app.command("validate")
@user_errors
def data_validate(
    file: Annotated[str, typer.Argument(help="training file")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="tokenizer for length checks; 'none' to skip")
    ] = "default",
    max_length: int = 1024,
    format: Annotated[str | None, typer.Option()] = None,
):
    """Report every problem in a training file with its line number; exit 1 if there is any."""
    from .data.validate import print_report, validate_file
    from .models import load_tokenizer

    tokenizer = None if model == "none" else load_tokenizer(model, log=err_console.print)
    report = validate_file(file, tokenizer=tokenizer, max_length=max_length, format=format)
    print_report(report, console)
    raise typer.Exit(0 if report.ok else 1)


@data_app.command("split")
@user_errors
def data_split(
    file: Annotated[str, typer.Argument(help="data file")],
    out: Annotated[str, typer.Option(help="folder for train/val/test files")],
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
):
    """Split a data file into train/val/test deterministically."""
    from .data.split import split_file

    for name, path in split_file(file, val=val, test=test, seed=seed, out_dir=out).items():
        rows = sum(1 for line in Path(path).read_text().splitlines() if line.strip()) - (
            path.suffix == ".csv"
        )
        console.print(f"{name}: {path} ({rows} rows)")


def main() -> None:  # pragma: no cover
    sys.exit(app())
