"""The `tunelab` command: a thin layer over the Python API. Every command calls one importable function."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import sys
import types
import typing
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .compare.config import CompareConfig
from .compress.config import DistillConfig, PruneConfig, QuantizeConfig, ReportConfig
from .data.config import CleanConfig, CleanFiles, DataReportConfig, SplitConfig, ValidateConfig
from .demo import DemoConfig
from .evaluation.config import EvalConfig
from .export.config import ExportConfig
from .graders.config import GradeConfig
from .inference.config import ChatConfig, GenerateConfig, PredictConfig
from .service.feedback import FeedbackConfig
from .service.settings import ServiceSettings, WorkerSettings
from .sweep.config import SweepConfig
from .training.config import TrainConfig

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


# Flags spelled otherwise than their field: a short form, or a singular for a repeated list.
FLAG_NAMES = {
    "model": ("--model", "-m"),
    "models": ("--model", "-m"),
    "api_keys": ("--api-key",),
    "trusted_proxies": ("--trusted-proxy",),
    "as_": ("--as",),  # `as` is a Python keyword
}


def config_flags(
    config_class, given_only: bool = False, skip: tuple[str, ...] = ()
) -> list[inspect.Parameter]:
    """One parameter per field of a config dataclass (but `skip`), with the field's help text, default and
    choices: a `--flag`, or a positional argument where the field's metadata says `argument`. With
    `given_only` every default is None (not given), so a YAML file and then the dataclass's own defaults
    fill in the rest."""
    hints = typing.get_type_hints(config_class)
    fields = [
        field
        for field in dataclasses.fields(config_class)
        if field.name not in skip and field.metadata.get("cli") is not False
    ]
    return [config_flag(field, hints[field.name], given_only) for field in fields]


def config_flag(field: dataclasses.Field, hint, given_only: bool) -> inspect.Parameter:
    help_text = field.metadata["help"]
    if field.metadata.get("argument"):
        param = typer.Argument(help=help_text, show_default=False)
    else:
        param = typer.Option(*FLAG_NAMES.get(field.name, ()), help=help_text)
    kind = flag_type(hint, field.metadata.get("choices"))
    default = field_default(field)
    if given_only or default is None:
        kind, default = kind | None, None
    keyword = inspect.Parameter.KEYWORD_ONLY
    return inspect.Parameter(field.name, keyword, default=default, annotation=Annotated[kind, param])


def field_default(field: dataclasses.Field):
    """The field's default; `inspect.Parameter.empty` (a required flag) where it has none."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default


def flag_type(hint, choices: tuple | None = None):
    """The field's type without None: a list field is a repeatable flag, a bool one `--x/--no-x`, a field
    with choices (metadata or a `Literal`) a click Choice, a number that may also be `auto` a text (the
    config turns it into a number)."""
    kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
    if choices:
        return typing.Literal[tuple(choices)]
    if any(typing.get_origin(kind) is typing.Literal for kind in kinds):
        return str
    return kinds[0] if isinstance(hint, types.UnionType) else hint


def command_signature(
    command, *config_classes, given_only: bool = False, skip: tuple[str, ...] = (), more_flags=()
):
    """`command`'s own parameters, then one per field of each config class, then `more_flags` (another
    config's, read otherwise): typer reads options from here."""
    signature = inspect.signature(command, eval_str=True)  # this module's annotations are strings
    own = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
    flags = [flag for config in config_classes for flag in config_flags(config, given_only, skip)]
    return signature.replace(parameters=[*own, *flags, *more_flags])


METHOD_OPTIONS = "method_options"  # where TrainingCommand leaves the method options' values in ctx.meta


class TrainingCommand(typer.core.TyperCommand):
    """A command that trains: its own flags, then one per option of every registered method (its help
    names the methods that take it). Made when the command runs or shows its help, so `tunelab --help`
    does not import the methods; their values reach the command in `ctx.meta`, not as arguments."""

    def get_params(self, ctx):
        return [*super().get_params(ctx), *method_option_params()]

    def invoke(self, ctx):
        given = {p.name: ctx.params.pop(p.name) for p in method_option_params() if p.name in ctx.params}
        ctx.meta[METHOD_OPTIONS] = {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in given.items()
            if value not in (None, ())
        }
        return super().invoke(ctx)


def method_option_params() -> tuple:
    from .methods import REGISTRY

    return option_params(tuple(REGISTRY))


@functools.cache
def option_params(method_names: tuple[str, ...]) -> tuple:
    """Click parameters for the options of these registered methods, made by typer from a signature as
    for any command (a shared name, e.g. dropout, is one flag)."""
    from .methods import REGISTRY
    from .methods.base import methods_with_option

    first: dict[str, tuple] = {}  # name -> (field, type) of the first method that declares it
    for method in map(REGISTRY.get, method_names):
        hints = typing.get_type_hints(method.options)
        for field in dataclasses.fields(method.options):
            first.setdefault(field.name, (field, hints[field.name]))
    flags = {
        name: method_flag(field, hint, methods_with_option(name)) for name, (field, hint) in first.items()
    }

    def method_options(**values): ...

    method_options.__signature__ = inspect.Signature(list(flags.values()))
    scratch = typer.Typer()
    scratch.command()(method_options)
    return tuple(p for p in typer.main.get_command(scratch).params if p.name in flags)  # not --help


def method_flag(field, hint, users: list[str]) -> inspect.Parameter:
    help_text = f"{', '.join(users)}: {field.metadata['help']}"
    option = typer.Option(help=help_text, rich_help_panel="Options of the methods")
    annotation = Annotated[flag_type(hint, field.metadata.get("choices")) | None, option]
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


@app.command("train", cls=TrainingCommand)
@user_errors
def train_cmd(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option(help="YAML file with the same keys; flags override it")
    ] = None,
    dry_run_json: Annotated[
        Path | None,
        typer.Option(help="a dry run (--dry-run) that also writes its predicted figures to this JSON file"),
    ] = None,
    **options,
):
    """Fine-tune a model on a data file (or several, for multi-task)."""
    import json

    from .graders.reinforcement import objective_with_grader
    from .training import ConfigError, train

    if dry_run_json:
        options["dry_run"] = True
    cfg = TrainConfig.from_sources(config, **options, **ctx.meta[METHOD_OPTIONS])
    if not cfg.data or not cfg.out:
        raise ConfigError("--data and --out are required (as flags or in --config)")
    objective = objective_with_grader(cfg, report=lambda message: console.print(f"[yellow]{message}"))
    result = train(cfg, console=console, objective=objective)  # grpo's, with its grader; else None
    if dry_run_json:  # the dry run's summary is its `Prediction`'s fields, for programs to read
        dry_run_json.write_text(json.dumps(result.summary, indent=2) + "\n")


train_cmd.__signature__ = command_signature(train_cmd, TrainConfig, given_only=True)


@app.command()
@user_errors
def predict(**options):
    """Classify every example with a trained head; prints accuracy when the file has answers."""
    from .inference import classify_file, load_for_inference
    from .inference.generation import classifies

    config = PredictConfig(**options)
    if not classifies(config.model, config.adapter):
        from .errors import UserError

        raise UserError(
            f"{config.adapter} is not a classification head; use `tunelab generate` for other adapters"
        )
    classifier, tokenizer = load_for_inference(config.model, config.adapter)
    result = classify_file(classifier, tokenizer, config.data, config.out, batch_size=config.batch_size)
    accuracy = "" if result["accuracy"] is None else f"; accuracy {result['accuracy']:.1%}"
    console.print(f"Wrote {result['examples']} predictions to {config.out}{accuracy}")


predict.__signature__ = command_signature(predict, PredictConfig)


@app.command()
@user_errors
def chat(**options):
    """Chat with a model (streams the reply); with --tools, its calls are shown and you answer them."""
    import json

    from .data.tools import read_tools_file, tool_template, writes_tool_call_tags
    from .inference import load_for_inference
    from .inference.generation import require_generative

    config = ChatConfig(**options)
    tools = read_tools_file(config.tools) if config.tools else None  # a bad file fails before the model loads
    require_generative(config.model, config.adapter, "chat")
    llm, tokenizer = load_for_inference(config.model, config.adapter)
    if tools and not writes_tool_call_tags(tool_template(tokenizer.chat_template)):
        err_console.print("[yellow]This model's template writes tool calls its own way: they show as text")
    messages = [{"role": "system", "content": config.system}] if config.system else []
    one_shot = config.prompt is not None
    while True:
        text = config.prompt if one_shot else _ask("[bold cyan]you>[/] ")
        if text is None:
            return
        messages.append({"role": "user", "content": text})
        while True:  # the model's turn, again after each round of tool results
            reply = _reply(llm, tokenizer, messages, tools, config)
            messages.append(reply)
            calls = reply.get("tool_calls", [])
            if one_shot:
                for call in calls:  # for scripts: one JSON object a line
                    function = call["function"]
                    line = {"name": function["name"], "arguments": json.loads(function["arguments"])}
                    console.print(json.dumps(line, ensure_ascii=False), highlight=False, markup=False)
                return
            if not calls:
                break
            for call in calls:
                result = _ask(f"[bold magenta]tool[/] {escape(_call_text(call))}> ")
                if result is None:
                    return
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})


chat.__signature__ = command_signature(chat, ChatConfig)


def _reply(llm, tokenizer, messages: list[dict], tools: list[dict] | None, config: ChatConfig) -> dict:
    """The model's turn, streamed, as OpenAI's assistant message. With tools its `<tool_call>` blocks are
    held back and read as the service reads a streamed reply (`StreamedReply`), then shown as calls."""
    from .data.tools import StreamedReply, ToolCall
    from .inference import stream_chat

    interactive = config.prompt is None
    if interactive:
        console.print("[bold green]model>[/] ", end="")
    reading = StreamedReply({t["function"]["name"] for t in tools}) if tools else None
    content, calls = "", []
    pieces = stream_chat(llm, tokenizer, messages, config.max_new_tokens, config.temperature, tools=tools)
    for piece in itertools.chain(pieces, [None]):  # None: the end, where held-back text is decided
        if reading is None:
            parts = [piece or ""]
        else:
            parts = reading.end() if piece is None else reading.feed(piece)
        for part in parts:
            if isinstance(part, ToolCall):
                function = {"name": part.name, "arguments": part.arguments}
                calls.append({"id": f"call_{len(calls)}", "type": "function", "function": function})
            else:
                content += part
                console.print(part, end="", highlight=False, markup=False)
    if calls and interactive:  # after the text, if any, on the model's line
        shown = "\n".join(_call_text(call) for call in calls)
        ending = "\n" if content and not content.endswith("\n") else ""
        console.print(ending + shown, highlight=False, markup=False)
    elif content or not calls:
        console.print()
    if not calls:
        return {"role": "assistant", "content": content}
    return {"role": "assistant", "content": content.rstrip() or None, "tool_calls": calls}


def _call_text(call: dict) -> str:
    """A call as the user reads it: `get_weather({"city": "Oslo"})`."""
    return f"{call['function']['name']}({call['function']['arguments']})"


def _ask(prompt: str) -> str | None:
    try:
        text = console.input(prompt)
    except EOFError:
        return None
    return None if text.strip() in ("/exit", "/quit") else text


@app.command("generate")
@user_errors
def generate_cmd(**options):
    """Generate a reply for every example in a file (batched, greedy by default)."""
    from .inference import generate_file, load_for_inference
    from .inference.generation import require_generative

    config = GenerateConfig(**options)
    require_generative(config.model, config.adapter, "generate")
    llm, tokenizer = load_for_inference(config.model, config.adapter)
    with console.status("generating"):
        n = generate_file(
            llm,
            tokenizer,
            config.data,
            config.out,
            config.format,
            batch_size=config.batch_size,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            seed=config.seed,
        )
    console.print(f"Wrote {n} predictions to {config.out}")


generate_cmd.__signature__ = command_signature(generate_cmd, GenerateConfig)


@app.command("eval")
@user_errors
def eval_cmd(
    out: Annotated[str, typer.Option(help="results JSON; a .md table and .predictions.jsonl go beside it")],
    predictions: Annotated[
        str | None, typer.Option(help="score this predictions JSONL instead of running a model")
    ] = None,
    forgetting: Annotated[
        bool, typer.Option("--forgetting", help="base vs --adapter on --benchmark")
    ] = False,
    **options,
):
    """Evaluate a model: metrics, prompting baselines, benchmarks, forgetting, calibration, graders."""
    from .errors import UserError
    from .evaluation import evaluate, score_predictions
    from .evaluation import forgetting as forgetting_report

    if options["grader"] and (predictions or forgetting):
        raise UserError("--grader scores a model's answers: to grade a predictions file use `tunelab grade`")
    if predictions:
        score_predictions(predictions, ",".join(options["metrics"]) or None, out)
    elif options["grader"]:
        from .graders.evaluate import evaluate_with_grader

        config = EvalConfig(**options)
        with console.status(f"generating and grading ({config.grader})"):
            evaluate_with_grader(config, out)
    else:
        if forgetting:
            options["task"] = "multiple-choice"
        config = EvalConfig(**options)
        with console.status(f"evaluating ({config.task})"):
            (forgetting_report if forgetting else evaluate)(config, out)
    console.print(Path(out).with_suffix(".md").read_text())


eval_cmd.__signature__ = command_signature(eval_cmd, EvalConfig)


@app.command("grade")
@user_errors
def grade_cmd(**options):
    """Grade answers against their rows with an OpenAI-shaped grader: mean reward, 95% interval, errors."""
    from .graders.evaluate import grade_files, markdown

    config = GradeConfig(**options)
    with console.status(f"grading ({config.grader})"):
        report = grade_files(config)
    console.print(markdown(report), markup=False, highlight=False)
    if config.out:
        console.print(f"Each row's result: {config.out}")


grade_cmd.__signature__ = command_signature(grade_cmd, GradeConfig)


@app.command("compare")
@user_errors
def compare_cmd(**options):
    """Compare prompting and tuning methods on the same data and budget; writes report.html."""
    from .compare import compare

    config = CompareConfig(**options)
    results = compare(config, console=console)
    console.print(Path(config.out, "report.md").read_text())
    best = results["recommendation"]["best_quality"]
    console.print(f"Report: {Path(config.out, 'report.html')}  ({best} is best)")


compare_cmd.__signature__ = command_signature(compare_cmd, CompareConfig)


@app.command("sweep")
@user_errors
def sweep_cmd(
    config: Annotated[
        Path | None, typer.Option(help="YAML of fixed training options (train's keys) under the space")
    ] = None,
    **options,
):
    """Search training options (Optuna: TPE, pruning on val loss); the best ones go to best.yaml."""
    from .sweep import sweep
    from .training.config import load_yaml

    results = sweep(SweepConfig(**options, train=load_yaml(config) if config else {}), console=console)
    out = Path(options["out"])
    console.print(Path(out, "report.md").read_text())
    if results["best_trial"]:
        console.print(f"Best options: {out / 'best.yaml'}  (tunelab train --config {out / 'best.yaml'})")


sweep_cmd.__signature__ = command_signature(sweep_cmd, SweepConfig, skip=("train",))


@app.command()
@user_errors
def demo(**options):
    """Fine-tune the embedded model on a generated task and show before/after."""
    from .demo import run_demo

    result = run_demo(DemoConfig(**options), console=console)
    if result.after <= result.before:
        raise typer.Exit(1)


demo.__signature__ = command_signature(demo, DemoConfig)


@app.command("export")
@user_errors
def export_cmd(**options):
    """Ship a tuned model: merged Hugging Face weights, GGUF, a llama.cpp LoRA or an Ollama Modelfile."""
    from .export import export

    config = ExportConfig(**options)
    with console.status(f"exporting ({config.format})"):
        result = export(config, log=err_console.print)
    for name, size in result.files.items():
        console.print(f"  {name}  {size} MB")
    console.print(
        f"Exported {result.method} as {result.format} ({result.quant}) in {result.seconds} s to {config.out}"
    )
    console.print(f"  {result.command}")


export_cmd.__signature__ = command_signature(export_cmd, ExportConfig)


@app.command("distill", cls=TrainingCommand)
@user_errors
def distill_cmd(
    ctx: typer.Context,
    student: Annotated[str, typer.Option(help="the student (same tokenizer), e.g. a `tunelab prune` folder")],
    config: Annotated[Path | None, typer.Option(help="YAML file of training options")] = None,
    **options,
):
    """Train a smaller student to imitate a teacher (its logits, or its answers); any --method."""
    from .compress.distill import distill
    from .training import ConfigError

    names = {field.name for field in dataclasses.fields(DistillConfig)}
    distill_config = DistillConfig(**{name: options.pop(name) for name in names})
    train_config = TrainConfig.from_sources(config, **options, **ctx.meta[METHOD_OPTIONS], model=student)
    if not train_config.data or not train_config.out:
        raise ConfigError("--data and --out are required (as flags or in --config)")
    distill(train_config, distill_config, console=console)


# The training options as `train` takes them, but --model: the student is the training's model.
training_flags = config_flags(TrainConfig, given_only=True, skip=("model",))
distill_cmd.__signature__ = command_signature(distill_cmd, DistillConfig, more_flags=training_flags)


@app.command("prune")
@user_errors
def prune_cmd(**options):
    """Cut decoder blocks and MLP channels by measured importance: a smaller Hugging Face model."""
    from .compress.prune import prune

    config = PruneConfig(**options)
    with console.status("pruning"):
        record = prune(config, log=err_console.print)
    out = config.out
    console.print(
        f"{record['params_before']:,} -> {record['params_after']:,} parameters, weights "
        f"{record['weights_mb']} MB, in {out}. Recover it with `tunelab distill --student {out}`."
    )


prune_cmd.__signature__ = command_signature(prune_cmd, PruneConfig)


@app.command("quantize")
@user_errors
def quantize_cmd(**options):
    """int8 weights for CPU inference (PyTorch dynamic quantization of the linear layers)."""
    from .compress.quantize import quantize

    config = QuantizeConfig(**options)
    with console.status("quantizing"):
        record = quantize(config, log=err_console.print)
    console.print(
        f"Quantized ({config.scheme}): weights {record['weights_mb']} MB in {config.out} (loads with tunelab)"
    )


quantize_cmd.__signature__ = command_signature(quantize_cmd, QuantizeConfig)


@app.command("compress-report")
@user_errors
def compress_report_cmd(**options):
    """Size, memory, speed and quality of models side by side (e.g. teacher, pruned student, int8)."""
    from .compress.report import compress_report

    config = ReportConfig(**options)
    compress_report(config, log=err_console.print)
    console.print(Path(config.out, "report.md").read_text())


compress_report_cmd.__signature__ = command_signature(compress_report_cmd, ReportConfig)


@app.command()
def methods():
    """List the tuning methods."""
    from .methods import REGISTRY

    for name, method in sorted(REGISTRY.items()):
        console.print(f"[bold]{name}[/]: {method.summary} (default lr {method.default_lr})")


def _tokenizer(model: str):
    """The model's tokenizer for lengths with its chat template; None for `--model none`."""
    if model == "none":
        return None
    from .models import load_tokenizer  # only then torch and transformers are needed

    return load_tokenizer(model, log=err_console.print)


@data_app.command("validate")
@user_errors
def data_validate(**options):
    """Report every problem in a training file with its line number; exit 1 if there is any."""
    from .data import validate
    from .errors import UserError

    config = ValidateConfig(**options)
    folder = Path(config.file).is_dir()
    if folder and config.format != "openai":
        raise UserError(f"{config.file} is a folder: `--format openai` checks a folder of OpenAI files")
    check = dict(tokenizer=_tokenizer(config.model), max_length=config.max_length,
                 min_examples=config.min_examples)  # fmt: skip
    if config.format == "openai":
        if folder:
            reports = validate.validate_folder(config.file, **check)
        else:
            reports = [validate.validate_openai(config.file, **check)]
        validate.print_openai_reports(reports, console)
        raise typer.Exit(0 if all(report.ok for report in reports) else 1)
    report = validate.validate_file(config.file, format=config.format, expect=config.expect, **check)
    validate.print_report(report, console)
    raise typer.Exit(0 if report.ok else 1)


data_validate.__signature__ = command_signature(data_validate, ValidateConfig)


@data_app.command("split")
@user_errors
def data_split(**options):
    """Split a data file into train/val/test deterministically."""
    from .data.split import split_file

    config = SplitConfig(**options)
    split = split_file(config.file, val=config.val, test=config.test, seed=config.seed, out_dir=config.out)
    for name, path in split.items():
        rows = sum(1 for line in Path(path).read_text().splitlines() if line.strip()) - (
            path.suffix == ".csv"
        )
        console.print(f"{name}: {path} ({rows} rows)")


data_split.__signature__ = command_signature(data_split, SplitConfig)


@data_app.command("clean")
@user_errors
def data_clean(**options):
    """Repair text, drop empty/short/long examples and duplicates, mask personal data; log every change."""
    from .data.clean import clean_file, print_summary, write_html

    files = CleanFiles(**{field.name: options.pop(field.name) for field in dataclasses.fields(CleanFiles)})
    config = CleanConfig(**options)
    tokenizer = _tokenizer(files.model) if config.lengths else None
    result = clean_file(files.file, files.out, config, tokenizer=tokenizer)
    print_summary(result, console)
    if files.report:
        console.print(f"Report: {write_html(result, files.report)}")


data_clean.__signature__ = command_signature(data_clean, CleanFiles, CleanConfig)


@data_app.command("report")
@user_errors
def data_report_cmd(**options):
    """Sizes, lengths, labels, train/val/test leakage, benchmark overlap and group bias of a data file."""
    from .data.report import data_report, print_summary, write_report

    config = DataReportConfig(**options)
    result = data_report(
        config.file,
        val=config.val,
        test=config.test,
        groups=config.groups,
        benchmark=config.benchmark,
        tokenizer=_tokenizer(config.model),
        max_length=config.max_length,
        near_threshold=config.near_threshold,
    )
    print_summary(result, console)
    console.print(f"Report: {write_report(result, config.out)} (and .json)")


data_report_cmd.__signature__ = command_signature(data_report_cmd, DataReportConfig)


@data_app.command("from-feedback")
@user_errors
def data_from_feedback(**options):
    """Turn feedback collected by the service into training data: chat examples, DPO pairs or KTO answers."""
    from .service.feedback import export_feedback

    config = FeedbackConfig(**options)
    result = export_feedback(config.data_dir, config.out, config.as_, config.database)
    what = {"sft": "example(s)", "dpo": "preference pair(s)", "kto": "rated answer(s)"}[config.as_]
    console.print(
        f"Wrote {result.written} {what} to {config.out}; skipped {result.skipped} without a usable answer"
    )


data_from_feedback.__signature__ = command_signature(data_from_feedback, FeedbackConfig)


@app.command()
@user_errors
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    base_model: Annotated[
        list[str] | None,
        typer.Option(help="NAME=SPEC: serve and fine-tune this model as NAME (default: the embedded model)"),
    ] = None,
    **options,
):
    """Run the OpenAI-compatible fine-tuning service (files, jobs, models, chat) and its dashboard."""
    import os

    import uvicorn

    from .errors import UserError
    from .models import resolve
    from .service import create_app
    from .service.app import server_options
    from .service.settings import resolve_api_keys

    os.umask(0o077)  # the data dir holds every key's prompts and data: nobody else reads what we write
    if base_model:
        pairs = [item.partition("=") for item in base_model]
        if any(not name or not spec for name, _, spec in pairs):
            raise UserError("--base-model takes NAME=SPEC, e.g. smollm2=default or mine=./my-model")
        options["base_models"] = {name: spec for name, _, spec in pairs}
    settings = ServiceSettings(**options)
    for spec in settings.base_models.values():
        resolve(spec)  # a missing folder or file is said now, not at the first request
    keys, generated = resolve_api_keys(settings)
    api_key_file, data_dir = settings.api_key_file, settings.data_dir
    settings.api_keys, settings.api_key_file = keys, None
    settings.metrics_keys, settings.metrics_key_file = settings.operator_keys(keys), None
    if generated:
        console.print(f"API key (kept in {Path(data_dir) / 'api_key'}): [bold]{keys[0]}[/]")
    elif api_key_file:
        console.print(f"API keys: {len(keys)} from {api_key_file}")
    elif not options["api_keys"]:
        console.print(f"API key: the one in {Path(data_dir) / 'api_key'} (or $TUNELAB_API_KEY)")
    console.print(f"Dashboard and API on http://{host}:{port}  (OpenAI base_url http://{host}:{port}/v1)")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", **server_options(settings))


@app.command()
@user_errors
def worker(**options):
    """Train the jobs of a `tunelab serve` on this host too: claims one at a time from the server's store.

    For a team: the server with --database postgresql://... and its data dir on a filesystem every host
    mounts at the same path; one `tunelab worker` per host (or per GPU, each with its own --name)."""
    from .service.worker import run_worker, worker_id

    settings = WorkerSettings(**options)
    console.print(f"Worker {worker_id(settings.name)} takes jobs from {settings.data_dir}")
    run_worker(settings)


worker.__signature__ = command_signature(worker, WorkerSettings)


# The service's settings, but those only a test or the service itself sets; --base-model is NAME=SPEC.
SERVE_SKIPS = ("base_models", "metrics_keys", "start_worker")
serve.__signature__ = command_signature(serve, ServiceSettings, skip=SERVE_SKIPS)


def main() -> None:  # pragma: no cover
    sys.exit(app())
