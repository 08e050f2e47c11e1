"""The `tunelab` command: a thin layer over the Python API. Every command calls one importable function."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="Adapt pretrained language models to your task.", no_args_is_help=True)
data_app = typer.Typer(help="Check, split and prepare training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)


def user_errors(fn):
    """Turn the errors a user can cause into one clear red line and exit code 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import UserError
        from .quiet import quiet_libraries

        quiet_libraries()
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


def _help(name: str) -> str:
    from .training.config import TrainConfig

    return TrainConfig.__dataclass_fields__[name].metadata["help"]


def _opt(name: str, *flags: str):
    return typer.Option(*flags, help=_help(name))


@app.command("train")
@user_errors
def train_cmd(
    data: Annotated[list[str] | None, _opt("data")] = None,
    out: Annotated[str | None, _opt("out")] = None,
    model: Annotated[str | None, _opt("model", "--model", "-m")] = None,
    method: Annotated[str | None, _opt("method")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML file with the same keys; flags override it")
    ] = None,
    val: Annotated[list[str] | None, _opt("val")] = None,
    val_split: Annotated[float | None, _opt("val_split")] = None,
    format: Annotated[str | None, _opt("format")] = None,
    objective: Annotated[str | None, _opt("objective")] = None,
    mix: Annotated[str | None, _opt("mix")] = None,
    labels: Annotated[str | None, _opt("labels")] = None,
    epochs: Annotated[float | None, _opt("epochs")] = None,
    max_steps: Annotated[int | None, _opt("max_steps")] = None,
    max_minutes: Annotated[float | None, _opt("max_minutes")] = None,
    lr: Annotated[float | None, _opt("lr")] = None,
    batch_size: Annotated[int | None, _opt("batch_size")] = None,
    grad_accum: Annotated[int | None, _opt("grad_accum")] = None,
    max_length: Annotated[int | None, _opt("max_length")] = None,
    warmup: Annotated[float | None, _opt("warmup")] = None,
    scheduler: Annotated[str | None, _opt("scheduler")] = None,
    weight_decay: Annotated[float | None, _opt("weight_decay")] = None,
    max_grad_norm: Annotated[float | None, _opt("max_grad_norm")] = None,
    dropout: Annotated[float | None, _opt("dropout")] = None,
    layer_lr_decay: Annotated[float | None, _opt("layer_lr_decay")] = None,
    head_lr: Annotated[float | None, _opt("head_lr")] = None,
    lora_r: Annotated[int | None, _opt("lora_r")] = None,
    lora_alpha: Annotated[int | None, _opt("lora_alpha")] = None,
    target_modules: Annotated[str | None, _opt("target_modules")] = None,
    dora: Annotated[bool | None, _opt("dora", "--dora/--no-dora")] = None,
    rslora: Annotated[bool | None, _opt("rslora", "--rslora/--no-rslora")] = None,
    init_adapter: Annotated[str | None, _opt("init_adapter")] = None,
    train_layers: Annotated[str | None, _opt("train_layers")] = None,
    norms_only: Annotated[bool | None, _opt("norms_only", "--norms-only")] = None,
    bitfit: Annotated[bool | None, _opt("bitfit", "--bitfit")] = None,
    adapter_size: Annotated[int | None, _opt("adapter_size")] = None,
    adapter_placement: Annotated[str | None, _opt("adapter_placement")] = None,
    num_virtual_tokens: Annotated[int | None, _opt("num_virtual_tokens")] = None,
    prompt_init: Annotated[str | None, _opt("prompt_init")] = None,
    unfreeze_top: Annotated[int | None, _opt("unfreeze_top")] = None,
    train_on_inputs: Annotated[
        bool | None, _opt("train_on_inputs", "--train-on-inputs/--no-train-on-inputs")
    ] = None,
    seed: Annotated[int | None, _opt("seed")] = None,
    eval_every: Annotated[int | None, _opt("eval_every")] = None,
    patience: Annotated[int | None, _opt("patience")] = None,
    save_every: Annotated[int | None, _opt("save_every")] = None,
    keep_checkpoints: Annotated[int | None, _opt("keep_checkpoints")] = None,
    resume: Annotated[bool | None, _opt("resume", "--resume")] = None,
    overwrite: Annotated[bool | None, _opt("overwrite", "--overwrite")] = None,
    precision: Annotated[str | None, _opt("precision")] = None,
    gradient_checkpointing: Annotated[
        bool | None, _opt("gradient_checkpointing", "--gradient-checkpointing")
    ] = None,
    log_every: Annotated[int | None, _opt("log_every")] = None,
):
    """Fine-tune a model on a data file (or several, for multi-task)."""
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
def predict(
    data: Annotated[str, typer.Option(help="examples to classify (a final assistant turn is the reference)")],
    out: Annotated[str, typer.Option(help="predictions JSONL")],
    adapter: Annotated[str, typer.Option(help="a classification head folder (--method head)")],
    model: ModelOpt = "default",
    batch_size: int = 16,
):
    """Classify every example with a trained head; prints accuracy when the file has answers."""
    from .inference import classify_file, load_for_inference

    classifier, tokenizer = load_for_inference(model, adapter)
    if not hasattr(classifier, "labels"):
        from .errors import UserError

        raise UserError(f"{adapter} is not a classification head; use `tunelab generate` for other adapters")
    result = classify_file(classifier, tokenizer, data, out, batch_size=batch_size)
    accuracy = "" if result["accuracy"] is None else f"; accuracy {result['accuracy']:.1%}"
    console.print(f"Wrote {result['examples']} predictions to {out}{accuracy}")


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
    from .inference.generate import require_generative

    llm, tokenizer = load_for_inference(model, adapter)
    require_generative(llm, "chat")
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
    from .inference.generate import require_generative

    llm, tokenizer = load_for_inference(model, adapter)
    require_generative(llm, "generate")
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


@app.command("eval")
@user_errors
def eval_cmd(
    out: Annotated[str, typer.Option(help="results JSON; a .md table and .predictions.jsonl go beside it")],
    model: ModelOpt = "default",
    adapter: AdapterOpt = None,
    data: Annotated[str | None, typer.Option(help="examples to evaluate on")] = None,
    task: Annotated[
        str, typer.Option(help="generation, classification, multiple-choice or perplexity")
    ] = "generation",
    metrics: Annotated[
        str | None, typer.Option(help="comma-separated: rouge,bleu,exact_match,token_f1,accuracy,macro_f1")
    ] = None,
    shots: Annotated[int, typer.Option(help="k exemplars as earlier chat turns (k-shot prompting)")] = 0,
    shots_from: Annotated[
        str | None,
        typer.Option(help="file to draw exemplars from (default: the data, never the same example)"),
    ] = None,
    cot: Annotated[
        bool, typer.Option("--cot", help="chain-of-thought: ask for reasoning, then '#### answer'")
    ] = False,
    instruction: Annotated[str | None, typer.Option(help="text put before every question")] = None,
    labels: Annotated[
        str | None, typer.Option(help="class names in order (turns 0,1,.. labels into words)")
    ] = None,
    answer: Annotated[
        str | None, typer.Option(help="extract before scoring: number (maths) or label")
    ] = None,
    benchmark: Annotated[
        str | None, typer.Option(help="mmlu:PATH for multiple-choice and --forgetting")
    ] = None,
    val: Annotated[
        str | None, typer.Option(help="classification: fit temperature scaling on this file")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="evaluate on N examples (stratified by subject for MMLU)")
    ] = None,
    seed: int = 0,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    predictions: Annotated[
        str | None, typer.Option(help="score this predictions JSONL instead of running a model")
    ] = None,
    forgetting: Annotated[
        bool, typer.Option("--forgetting", help="base vs --adapter on --benchmark")
    ] = False,
    precision: Annotated[str, typer.Option(help="auto (bf16 where native) or fp32")] = "auto",
):
    """Evaluate a model: metrics, prompting baselines, benchmarks, forgetting, calibration."""
    from .evaluation.evaluate import evaluate, score_predictions
    from .evaluation.evaluate import forgetting as forgetting_report
    from .evaluation.runner import EvalConfig

    if predictions:
        score_predictions(predictions, metrics, out)
    else:
        if forgetting:
            task = "multiple-choice"
        config = EvalConfig(
            model=model, adapter=adapter, data=data, task=task, metrics=metrics or [], shots=shots,
            shots_from=shots_from, cot=cot, instruction=instruction, labels=labels, answer=answer,
            benchmark=benchmark, val=val, limit=limit, seed=seed, batch_size=batch_size,
            max_new_tokens=max_new_tokens, precision=precision,
        )  # fmt: skip
        with console.status(f"evaluating ({task})"):
            (forgetting_report if forgetting else evaluate)(config, out)
    console.print(Path(out).with_suffix(".md").read_text())


@app.command("compare")
@user_errors
def compare_cmd(
    data: Annotated[
        str, typer.Option(help="the user's data; val and test are split off it (10% each) unless given")
    ],
    out: Annotated[str, typer.Option(help="folder for runs/, results.json, report.md and report.html")],
    model: ModelOpt = "default",
    val: Annotated[str | None, typer.Option(help="validation file")] = None,
    test: Annotated[str | None, typer.Option(help="test file (where quality is measured)")] = None,
    task: Annotated[str, typer.Option(help="classification or generation")] = "classification",
    methods: Annotated[str, typer.Option(help="comma-separated: zero-shot,few-shot and any --method")] = (
        "zero-shot,few-shot,lora,prompt-tuning,head"
    ),
    budget: Annotated[
        str, typer.Option(help="steps:N, epochs:N or minutes:N for every trained method")
    ] = "epochs:1",
    labels: Annotated[str | None, typer.Option(help="class names in order (for integer labels)")] = None,
    instruction: Annotated[
        str | None, typer.Option(help="put before every question, for every method")
    ] = None,
    shots: Annotated[int, typer.Option(help="exemplars for few-shot")] = 5,
    forgetting: Annotated[str | None, typer.Option(help="mmlu:PATH: also measure forgetting")] = None,
    limit: Annotated[int | None, typer.Option(help="use the first N test examples")] = None,
    seed: int = 0,
    batch_size: int = 8,
):
    """Compare prompting and tuning methods on the same data and budget; writes report.html."""
    from .compare import CompareConfig, compare

    config = CompareConfig(
        data=data, out=out, model=model, val=val, test=test, task=task, methods=methods.split(","),
        budget=budget, labels=labels.split(",") if labels else None, instruction=instruction, shots=shots,
        forgetting=forgetting, limit=limit, seed=seed, batch_size=batch_size,
    )  # fmt: skip
    results = compare(config, console=console)
    console.print(Path(out, "report.md").read_text())
    console.print(
        f"Report: {Path(out, 'report.html')}  ({results['recommendation']['best_quality']} is best)"
    )


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


@app.command("export")
@user_errors
def export_cmd(
    out: Annotated[str, typer.Option(help="folder to create (written in full, or not at all)")],
    model: ModelOpt = "default",
    adapter: AdapterOpt = None,
    format: Annotated[str, typer.Option(help="hf, gguf, gguf-lora or ollama")] = "hf",
    quant: Annotated[
        str | None, typer.Option(help="f32, f16, bf16, q8_0 or a k-quant (q4_k_m, ...: needs llama-quantize)")
    ] = None,
    system: Annotated[str | None, typer.Option(help="ollama: the Modelfile's SYSTEM prompt")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing --out")] = False,
):
    """Ship a tuned model: merged Hugging Face weights, GGUF, a llama.cpp LoRA or an Ollama Modelfile."""
    from .export import ExportConfig, export

    config = ExportConfig(out=out, model=model, adapter=adapter, format=format, quant=quant, system=system,
                          overwrite=overwrite)  # fmt: skip
    with console.status(f"exporting ({format})"):
        result = export(config, log=err_console.print)
    for name, size in result.files.items():
        console.print(f"  {name}  {size} MB")
    console.print(
        f"Exported {result.method} as {result.format} ({result.quant}) in {result.seconds} s to {out}"
    )
    console.print(f"  {result.command}")


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


@data_app.command("from-feedback")
@user_errors
def data_from_feedback(
    data_dir: Annotated[str, typer.Option(help="the data dir of `tunelab serve`")],
    out: Annotated[str, typer.Option(help="chat JSONL to write, ready for the next job")],
):
    """Turn feedback collected by the service (corrections, good ratings) into training data."""
    from .service.feedback import export_feedback

    result = export_feedback(data_dir, out)
    console.print(
        f"Wrote {result.written} example(s) to {out}; skipped {result.skipped} without a usable answer"
    )


@app.command()
@user_errors
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    data_dir: Annotated[
        str, typer.Option(help="where files, jobs, models and the database live")
    ] = "tunelab-data",
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            help="accepted API key (repeatable); default: $TUNELAB_API_KEY or one kept in the data dir"
        ),
    ] = None,
    base_model: Annotated[
        list[str] | None,
        typer.Option(help="NAME=SPEC: serve and fine-tune this model as NAME (default: the embedded model)"),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="largest file an upload may be")] = 512.0,
    max_loaded_adapters: Annotated[int, typer.Option(help="fine-tuned adapters kept loaded at once")] = 4,
):
    """Run the OpenAI-compatible fine-tuning service (files, jobs, models, chat) and its dashboard."""
    import uvicorn

    from .errors import UserError
    from .models import resolve
    from .service import ServiceSettings, create_app
    from .service.settings import resolve_api_keys

    options = {"data_dir": data_dir, "api_keys": api_key or [], "max_upload_mb": max_upload_mb}
    options["max_loaded_adapters"] = max_loaded_adapters
    if base_model:
        pairs = [item.partition("=") for item in base_model]
        if any(not name or not spec for name, _, spec in pairs):
            raise UserError("--base-model takes NAME=SPEC, e.g. smollm2=default or mine=./my-model")
        options["base_models"] = {name: spec for name, _, spec in pairs}
    settings = ServiceSettings(**options)
    for spec in settings.base_models.values():
        resolve(spec)  # a missing folder or file is said now, not at the first request
    keys, generated = resolve_api_keys(settings)
    settings.api_keys = keys
    if generated:
        console.print(f"API key (kept in {Path(data_dir) / 'api_key'}): [bold]{keys[0]}[/]")
    elif not api_key:
        console.print(f"API key: the one in {Path(data_dir) / 'api_key'} (or $TUNELAB_API_KEY)")
    console.print(f"Dashboard and API on http://{host}:{port}  (OpenAI base_url http://{host}:{port}/v1)")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")


def main() -> None:  # pragma: no cover
    sys.exit(app())
