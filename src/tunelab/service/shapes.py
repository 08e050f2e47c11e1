"""The API's shapes in OpenAI's field names and order (its SDK sends and parses them): the generation
requests, with the fields this server refuses by name; the responses, each route's `response_model`, and
how a stored row becomes one. (The fine-tuning job request is `jobs.JobCreate`.) The fields and their
order here are what goes on the wire: `tests/test_service_openai.py` reads them with the official SDK."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .errors import ApiError
from .store import NOT_RUN_OPTIONS, CheckpointRow, EventRow, FileRow, JobRow
from .strict import StrictModel

# OpenAI's fields that this server does not honour: refused by name unless sent with a value that asks for
# nothing (some clients always send `tools: []` or `logprobs: false`). Any other field is unknown to
# OpenAI too, and refused as such.
DO_NOTHING = {
    "functions": (None, []),  # the legacy shape of `tools`
    "function_call": (None,),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None,),
    "user": (None,),
    "store": (None, True),  # answers are always kept here, for feedback
    "metadata": (None,),
    "service_tier": (None,),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "web_search_options": (None,),
    "moderation": (None,),
    "prompt_cache_key": (None,),
    "prompt_cache_options": (None,),
    "prompt_cache_retention": (None,),
    "safety_identifier": (None,),
}
# A message's: what an SDK sends back when it replays an answer's `message.model_dump()`, and `name`.
MESSAGE_DO_NOTHING = {
    "name": (None,),
    "refusal": (None,),
    "annotations": (None, []),
    "audio": (None,),
    "function_call": (None,),
}
STREAM_OPTIONS_DO_NOTHING = {"include_obfuscation": (None, False)}  # no obfuscation padding is added


def asks_nothing(value, nothing: tuple) -> bool:
    """Whether `value` is one of the values in `nothing`, of the same type (`false` is no 0 here)."""
    return any(type(value) is type(option) and value == option for option in nothing)


def refuse_unhonoured(extra: dict | None, do_nothing: dict[str, tuple], where: str = "") -> None:
    """A 400 naming the first field of `extra` (what a model did not declare) that asks for something."""
    for name, value in (extra or {}).items():
        param = where + name
        if name not in do_nothing:
            raise ApiError(
                400, f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter"
            )
        if not asks_nothing(value, do_nothing[name]):
            raise ApiError(
                400, f"'{param}' is not supported by this server", param=param, code="unsupported_parameter"
            )


class OpenEnded(StrictModel):
    """A model whose undeclared fields are kept, for `refuse_unhonoured` to name."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(OpenEnded):
    include_usage: bool = False


class GenerationRequest(OpenEnded):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=8)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # OpenAI's int64 (torch takes 64 bits)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: dict | None = None
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None  # token id -> bias; checked against the model's vocabulary

    @field_validator(
        "temperature", "top_p", "n", "stream", "frequency_penalty", "presence_penalty", mode="before"
    )
    @classmethod
    def null_is_the_default(cls, value, info: ValidationInfo):
        """The SDK sends `null` for these when a caller passes None: OpenAI takes it as the default."""
        return cls.model_fields[info.field_name].default if value is None else value


class ContentPart(OpenEnded):
    """A part of a message's content; only `{"type": "text", "text": "..."}` is understood here (other
    types' fields are refused by Message.text)."""

    type: str
    text: str | None = None


class FunctionCallIn(StrictModel):
    name: str
    arguments: str  # JSON, as OpenAI sends it


class ToolCallIn(StrictModel):
    """A call in an assistant message sent back in the conversation."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class Message(OpenEnded):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallIn] | None = None  # an assistant's
    tool_call_id: str | None = None  # a tool message's: the call it answers

    def text(self, index: int) -> str:
        """The turn's text; any field of it this server would not honour is refused by name."""
        refuse_unhonoured(self.model_extra, MESSAGE_DO_NOTHING, f"messages.{index}.")
        if not isinstance(self.content, list):
            return self.content or ""
        for p, part in enumerate(self.content):
            if part.type != "text" or part.text is None or part.model_extra:
                raise ApiError(
                    400,
                    "only text content parts ({'type': 'text', 'text': '...'}) are supported",
                    param=f"messages.{index}.content.{p}",
                    code="unsupported_parameter" if part.type != "text" else "invalid_value",
                )
        return "".join(part.text for part in self.content)

    def for_template(self, index: int) -> dict:
        """The message as a chat template takes it (data/tools.py): calls' arguments as objects."""
        role = "system" if self.role == "developer" else self.role
        message = {"role": role, "content": self.text(index)}
        if self.tool_calls and self.role != "assistant":
            raise ApiError(
                400, "only assistant messages make tool calls", param=f"messages.{index}.tool_calls"
            )
        if self.role == "tool":
            if not self.tool_call_id:
                raise ApiError(
                    400,
                    "a tool message needs the tool_call_id it answers",
                    param=f"messages.{index}.tool_call_id",
                )
            message["tool_call_id"] = self.tool_call_id
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": arguments(call.function, f"{index}.tool_calls.{c}"),
                }
                for c, call in enumerate(self.tool_calls)
            ]
        return message


def arguments(function: FunctionCallIn, where: str) -> dict:
    try:
        parsed = json.loads(function.arguments)
    except json.JSONDecodeError as err:
        parsed = err
    if not isinstance(parsed, dict):
        raise ApiError(
            400, "a tool call's arguments must be a JSON object", param=f"messages.{where}.function.arguments"
        )
    return {"name": function.name, "arguments": parsed}


class FunctionSpec(StrictModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    # Arguments are not constrained to the schema here: asking for that is refused (`check_tools`).
    strict: bool | None = None


class ToolSpec(StrictModel):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(StrictModel):
    name: str


class NamedToolChoice(StrictModel):
    type: Literal["function"]
    function: NamedFunction


class ChatRequest(GenerationRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionRequest(GenerationRequest):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=5)  # legacy: how many alternatives, not a switch


def check_supported(request: GenerationRequest) -> None:
    refuse_unhonoured(request.model_extra, DO_NOTHING)
    if request.stream_options is not None:
        refuse_unhonoured(request.stream_options.model_extra, STREAM_OPTIONS_DO_NOTHING, "stream_options.")
    if request.response_format is not None and request.response_format != {"type": "text"}:
        raise ApiError(
            400,
            "only response_format {'type': 'text'} is supported",
            param="response_format",
            code="unsupported_parameter",
        )


class FeedbackCreate(StrictModel):
    """`POST /v1/feedback`'s body, and the dashboard playground's feedback form."""

    completion_id: str = Field(description="the `id` of a chat.completion or text_completion")
    rating: int = Field(ge=-1, le=1, description="1 good, -1 bad, 0 neither")
    correction: str | None = Field(None, description="the answer the model should have given")


class GraderValidate(StrictModel):
    grader: dict


class GraderRun(StrictModel):
    grader: dict
    model_sample: str
    item: dict = Field(default_factory=dict)


class GraderValidated(BaseModel):
    grader: dict


class GraderRunResult(BaseModel):
    reward: float
    metadata: dict[str, Any]
    sub_rewards: dict[str, float]
    model_grader_token_usage_per_model: dict[str, Any]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    status_details: str | None = None
    expires_at: int | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class Deleted(BaseModel):
    id: str
    object: Literal["file", "model"]
    deleted: bool = True


class JobObject(BaseModel):
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    id: str
    model: str
    created_at: int
    finished_at: int | None
    fine_tuned_model: str | None
    organization_id: str
    result_files: list[str]
    status: str
    validation_file: str | None
    training_file: str
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    trained_tokens: int | None
    error: dict[str, Any] | None
    user_provided_suffix: str | None
    seed: int
    estimated_finish: int | None = None
    integrations: list[dict] = []
    metadata: dict[str, str] | None
    tunelab: dict[str, Any]  # the job's training options


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobObject]
    has_more: bool


class EventObject(BaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: str
    message: str
    data: dict[str, Any]
    type: str


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EventObject]
    has_more: bool


class CheckpointObject(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CheckpointObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class FeedbackObject(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    created_at: int
    completion_id: str
    rating: int
    correction: str | None


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    worker: bool  # whether this server's training workers are alive (False when it starts none)


class PromptTokensDetails(BaseModel):
    cached_tokens: int  # the prompt's leading tokens served from the prefix cache


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    """A chat choice's (and a chunk's) `logprobs`: a token of `content` after another."""

    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class TextLogprobs(BaseModel):
    """A legacy completion's `logprobs`: lists a token long; `top_logprobs` maps each alternative's text
    (the chosen token's too) to its log-probability; `text_offset` is where each token starts in `text`."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: TextLogprobs | None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[TextChoice]
    usage: Usage


def file_object(row: FileRow) -> FileObject:
    return FileObject(
        id=row.id, bytes=row.bytes, created_at=row.created_at, filename=row.filename, purpose=row.purpose
    )


def job_object(job: JobRow, estimated_finish: int | None = None) -> JobObject:
    return JobObject(
        estimated_finish=estimated_finish,
        id=job.id,
        model=job.model,
        created_at=job.created_at,
        finished_at=job.finished_at,
        fine_tuned_model=job.fine_tuned_model,
        organization_id=job.owner,
        result_files=job.result_files,
        status=job.status,
        validation_file=job.validation_file,
        training_file=job.training_file,
        hyperparameters=job.hyperparameters,
        method=method_object(job),
        trained_tokens=job.trained_tokens,
        error=job.error,
        user_provided_suffix=job.suffix,
        seed=job.seed,
        metadata=job.metadata,
        tunelab={name: value for name, value in job.options.items() if name not in NOT_RUN_OPTIONS},
    )


def method_object(job: JobRow) -> dict:
    """`method` as OpenAI reports it: the type and its hyperparameters, resolved as the run picked them
    (a dpo job's beta stays "auto" where the objective's default applies); a reinforcement job's grader."""
    if "objective" not in job.options:
        return {"type": "supervised", "supervised": {"hyperparameters": job.hyperparameters}}
    if "grader" in job.options:
        reinforcement = {"grader": job.options["grader"], "hyperparameters": job.hyperparameters}
        return {"type": "reinforcement", "reinforcement": reinforcement}
    beta = job.options.get("beta")
    hyper = job.hyperparameters | {"beta": "auto" if beta is None else beta}
    return {"type": "dpo", "dpo": {"hyperparameters": hyper}}


def event_object(event: EventRow) -> EventObject:
    return EventObject(
        id=event.id,
        created_at=event.created_at,
        level=event.level,
        message=event.message,
        data=event.data,
        type=event.type,
    )


def checkpoint_object(checkpoint: CheckpointRow) -> CheckpointObject:
    return CheckpointObject(
        id=checkpoint.id,
        created_at=checkpoint.created_at,
        fine_tuned_model_checkpoint=checkpoint.model_name,
        fine_tuning_job_id=checkpoint.job_id,
        metrics=checkpoint.metrics,
        step_number=checkpoint.step,
    )
