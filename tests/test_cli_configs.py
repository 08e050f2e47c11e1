"""Every CLI command is made from its config dataclasses: each field is one flag (or argument) with the
field's name, help text, default and choices, so the CLI and the Python API cannot drift apart. The
commands that train also have one flag per option of every registered method."""

import dataclasses
import typing

import pytest
import typer.main
from typer import Context
from typer.core import TyperArgument

from tunelab.cli import FLAG_NAMES, app
from tunelab.compare import CompareConfig
from tunelab.compress.config import DistillConfig, PruneConfig, QuantizeConfig, ReportConfig
from tunelab.data.config import CleanConfig, CleanFiles, DataReportConfig, SplitConfig, ValidateConfig
from tunelab.demo import DemoConfig
from tunelab.evaluation import EvalConfig
from tunelab.export import ExportConfig
from tunelab.graders import GradeConfig
from tunelab.inference import ChatConfig, GenerateConfig, PredictConfig
from tunelab.methods import REGISTRY
from tunelab.service.feedback import FeedbackConfig
from tunelab.service.settings import ServiceSettings, WorkerSettings
from tunelab.sweep import SweepConfig
from tunelab.training import TrainConfig


# command -> its config classes, those read as "given or not" (no defaults: a YAML file fills them in),
# the fields that are no flag, the command's own parameters (not a field of any config), and whether it
# trains (then each method's options are flags too).
class Case(typing.NamedTuple):
    configs: tuple
    given_only: tuple
    skip: tuple
    own: tuple
    trains: bool = False


COMMANDS = {
    "predict": Case((PredictConfig,), (), (), ()),
    "chat": Case((ChatConfig,), (), (), ()),
    "generate": Case((GenerateConfig,), (), (), ()),
    # Where the results go and which runner scores them: arguments of `evaluate`, not of its config.
    "eval": Case((EvalConfig,), (), (), ("out", "predictions", "forgetting")),
    "grade": Case((GradeConfig,), (), (), ()),
    "compare": Case((CompareConfig,), (), (), ()),
    # `train` is a dict of options: on the command line, the YAML file of --config.
    "sweep": Case((SweepConfig,), (), ("train",), ("config",)),
    "demo": Case((DemoConfig,), (), (), ()),
    "export": Case((ExportConfig,), (), (), ()),
    # TrainConfig.options is one flag per method option (below); --config is the YAML file of the rest.
    "train": Case((TrainConfig,), (TrainConfig,), ("options",), ("config", "dry_run_json"), trains=True),
    # The student is the training's --model; the training options are train's.
    "distill": Case(
        (DistillConfig, TrainConfig), (TrainConfig,), ("model", "options"), ("student", "config"), trains=True
    ),
    "prune": Case((PruneConfig,), (), (), ()),
    "quantize": Case((QuantizeConfig,), (), (), ()),
    "compress-report": Case((ReportConfig,), (), (), ()),
    "data validate": Case((ValidateConfig,), (), (), ()),
    "data split": Case((SplitConfig,), (), (), ()),
    "data clean": Case((CleanFiles, CleanConfig), (), (), ()),
    "data report": Case((DataReportConfig,), (), (), ()),
    "data from-feedback": Case((FeedbackConfig,), (), (), ()),
    "worker": Case((WorkerSettings,), (), (), ()),
    # Only a test or the service itself sets these; --base-model is NAME=SPEC; where uvicorn listens.
    "serve": Case(
        (ServiceSettings,),
        (),
        ("base_models", "metrics_keys", "start_worker"),
        ("host", "port", "base_model"),
    ),
}


def all_commands(group, prefix: str = "") -> dict:
    commands = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            commands |= all_commands(command, f"{prefix}{name} ")
        else:
            commands[f"{prefix}{name}"] = command
    return commands


COMMANDS_OF_APP = all_commands(typer.main.get_command(app))


def expected_default(field: dataclasses.Field, given_only: bool):
    if given_only:
        return None
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def choices_of(param) -> tuple | None:
    annotation = param.type_descriptor.annotation
    kinds = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union else (annotation,)
    literals = [kind for kind in kinds if typing.get_origin(kind) is typing.Literal]
    return typing.get_args(literals[0]) if literals else None


def field_choices(field: dataclasses.Field, hint) -> tuple | None:
    if "choices" in field.metadata:
        return tuple(field.metadata["choices"])
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None


def test_every_command_is_made_from_a_config():
    """A command added with hand-written options fails here until it is made from a config."""
    without_options = {name for name, command in COMMANDS_OF_APP.items() if not command.params}
    assert set(COMMANDS_OF_APP) - without_options == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_flags_match_the_config_fields(name):
    case = COMMANDS[name]
    command = COMMANDS_OF_APP[name]
    params = {param.name: param for param in command.get_params(Context(command)) if param.name != "help"}
    expected_names = set(case.own)
    if case.trains:
        expected_names |= check_method_option_flags(params)
    for config in case.configs:
        hints = typing.get_type_hints(config)
        for field in dataclasses.fields(config):
            if field.name in case.skip:
                continue
            expected_names.add(field.name)
            param = params.get(field.name)
            assert param is not None, f"{name}: no flag for {config.__name__}.{field.name}"
            where = f"{name} {field.name}"
            assert param.help == field.metadata["help"], where
            given_only = config in case.given_only
            default = param.default if not param.multiple or param.default is None else list(param.default)
            assert default == expected_default(field, given_only), where
            required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            assert param.required == (required and not given_only), where
            assert choices_of(param) == field_choices(field, hints[field.name]), where
            assert isinstance(param, TyperArgument) == bool(field.metadata.get("argument")), where
            if not isinstance(param, TyperArgument):
                flag = f"--{field.name.replace('_', '-')}"
                assert param.opts == list(FLAG_NAMES.get(field.name, (flag,))), where
    assert set(params) == expected_names, f"{name}: flags that are no field of its config"
    for own in case.own:
        assert params[own].help, f"{name} --{own}: no help text"


def check_method_option_flags(params: dict) -> set[str]:
    """Each registered method's options are flags, not given by default, whose help names the methods that
    take them; the names of those flags."""
    names = set()
    for method in REGISTRY.values():
        hints = typing.get_type_hints(method.options)
        for field in dataclasses.fields(method.options):
            param, where = params.get(field.name), f"{method.name} {field.name}"
            assert param is not None, f"no flag for {where}"
            users, _, help_text = param.help.partition(": ")
            assert help_text == field.metadata["help"] and method.name in users.split(", "), where
            assert param.default in (None, ()) and not param.required, where
            assert choices_of(param) == field_choices(field, hints[field.name]), where
            names.add(field.name)
    return names
