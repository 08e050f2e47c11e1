"""Graders in OpenAI's shapes: a table of (grader, answer, row) -> hand-computed reward per type, the errors
a row can meet (reward 0 and an entry naming what), the refusals when a grader is read (naming the field
path), judges (a stub that answers fixed text; the label choice on a tiny real model), OpenAI's graders/run
response checked with the SDK's own type, and `tunelab grade` / `eval --grader` end to end."""

import importlib.util
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from conftest import write_jsonl
from tunelab.cli import app
from tunelab.graders import GraderError, GradeResult, GradingContext, Sample, load_grader, parse_grader
from tunelab.graders.score_model import parse_score
from tunelab.graders.text_similarity import wordnet_problem

HAS_SANDBOX = importlib.util.find_spec("tunelab.graders.sandbox") is not None


def grade(spec: dict, answer: str, item: dict, context: GradingContext | None = None) -> GradeResult:
    grader = parse_grader(spec)
    return grader.grade_many([Sample.from_text(answer)], [item], context or GradingContext())[0]


def check(operation: str, input: str = "{{sample.output_text}}", reference: str = "{{item.answer}}") -> dict:
    return {
        "type": "string_check",
        "name": "s",
        "input": input,
        "reference": reference,
        "operation": operation,
    }


def similarity(metric: str, **extra) -> dict:
    return {
        "type": "text_similarity",
        "name": "t",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "evaluation_metric": metric,
        **extra,
    }


def multi(formula: str, **graders) -> dict:
    return {"type": "multi", "name": "m", "graders": graders, "calculate_output": formula}


# --- rewards, one or more rows per type ----------------------------------------------------------------

CAPITAL = {"answer": "Paris", "city": {"name": "Paris", "aliases": ["Lutetia", "City of Light"]}, "n": 3}

REWARDS = [
    # string_check: eq/ne case-sensitive; like = contains; ilike = contains ignoring case
    (check("eq"), "Paris", CAPITAL, 1.0),
    (check("eq"), "paris", CAPITAL, 0.0),
    (check("ne"), "paris", CAPITAL, 1.0),
    (check("ne"), "Paris", CAPITAL, 0.0),
    (check("like"), "It is Paris.", CAPITAL, 1.0),
    (check("like"), "It is PARIS.", CAPITAL, 0.0),
    (check("ilike"), "It is PARIS.", CAPITAL, 1.0),
    (check("ilike"), "It is Rome.", CAPITAL, 0.0),
    # templates: nested item fields, list elements both ways, output_json, a number rendered as JSON
    (check("eq", reference="{{ item.city.name }}"), "Paris", CAPITAL, 1.0),
    (check("eq", reference="{{item.city.aliases[1]}}"), "City of Light", CAPITAL, 1.0),
    (check("eq", reference="{{item.city.aliases.0}}"), "Lutetia", CAPITAL, 1.0),
    (check("eq", input="{{sample.output_json.city}}"), '{"city": "Paris"}', CAPITAL, 1.0),
    (check("eq", input="{{sample.output_json.n}}", reference="{{item.n}}"), '{"n": 3}', CAPITAL, 1.0),
    (check("eq", input="{{sample.output_json}}", reference='["a", 1]'), '["a",1]', CAPITAL, 1.0),
    (
        check(
            "eq",
            input="{{item.city}}",
            reference='{"name": "Paris", "aliases": ["Lutetia", "City of Light"]}',
        ),
        "",
        CAPITAL,
        1.0,
    ),
    # text_similarity: fuzzy_match is difflib's ratio, 2 * 4 matched / (6 + 7) for kitten/sitting
    (similarity("fuzzy_match"), "kitten", {"answer": "sitting"}, 8 / 13),
    (similarity("rouge_1"), "the cat sat", {"answer": "the cat sat on the mat"}, 2 * 1 * 0.5 / 1.5),
    (similarity("bleu", pass_threshold=0.5), "the same words here", {"answer": "the same words here"}, 1.0),
    # multi: the formula over named rewards, with OpenAI's ^ and its functions
    (multi("(a + b) / 2", a=check("eq"), b=check("ilike")), "paris", CAPITAL, 0.5),
    (multi("a ^ 2 * 3 - b", a=check("ilike"), b=check("eq")), "paris", CAPITAL, 3.0),  # ^ binds before *
    (multi("max(a, b, 0.25) + min(a, b) + abs(-2)", a=check("eq"), b=check("ne")), "x", CAPITAL, 3.0),
    (multi("floor(2.7) + ceil(0.2) + sqrt(4) + exp(0) + log(e_)", e_=check("ne")), "x", CAPITAL, 6.0),
    (multi("log(8, 2) - a ** 2", a=check("ne")), "x", CAPITAL, 2.0),
]


@pytest.mark.parametrize("spec, answer, item, expected", REWARDS)
def test_reward(spec, answer, item, expected):
    result = grade(spec, answer, item)
    assert result.errors == []
    assert result.reward == pytest.approx(expected)
    assert result.execution_time > 0


@pytest.mark.parametrize(
    "metric", ["bleu", "gleu", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l", "meteor"]
)
def test_text_similarity_is_the_library_value(metric):
    answer, reference = (
        "the quick brown fox jumps over a dog",
        "the quick brown fox jumps over the lazy dog",
    )
    if metric == "meteor" and wordnet_problem():
        with pytest.raises(GraderError, match="grader.evaluation_metric: meteor needs nltk's WordNet"):
            parse_grader(similarity(metric))
        return
    result = grade(similarity(metric), answer, {"answer": reference})
    assert result.reward == pytest.approx(library_value(metric, answer, reference))
    assert 0 < result.reward < 1


def library_value(metric: str, answer: str, reference: str) -> float:
    import sacrebleu
    from nltk.translate.gleu_score import sentence_gleu
    from nltk.translate.meteor_score import meteor_score
    from rouge_score import rouge_scorer

    tokens = sacrebleu.tokenizers.tokenizer_13a.Tokenizer13a()
    if metric == "bleu":
        return sacrebleu.sentence_bleu(answer, [reference]).score / 100
    if metric == "gleu":
        return sentence_gleu([tokens(reference).split()], tokens(answer).split())
    if metric == "meteor":
        return meteor_score([tokens(reference).split()], tokens(answer).split())
    kind = "rougeL" if metric == "rouge_l" else metric.replace("_", "")
    return rouge_scorer.RougeScorer([kind]).score(reference, answer)[kind].fmeasure


def test_pass_threshold_and_passed():
    assert (
        grade(similarity("fuzzy_match", pass_threshold=0.6), "kitten", {"answer": "sitting"}).passed is True
    )
    assert (
        grade(similarity("fuzzy_match", pass_threshold=0.7), "kitten", {"answer": "sitting"}).passed is False
    )
    assert grade(check("eq"), "Paris", CAPITAL).passed is True
    assert grade(multi("a", a=check("eq")), "Paris", CAPITAL).passed is None  # OpenAI's multi has none


def test_sample_from_text():
    assert Sample.from_text('{"a": [1, 2]}').output_json == {"a": [1, 2]}
    assert Sample.from_text("not json").output_json is None
    assert Sample.from_text("x").as_dict() == {"output_text": "x", "output_json": None, "output_tools": []}


# --- rows that fail: reward 0 and an error entry, never an exception ---------------------------------

ROW_ERRORS = [
    (
        check("eq", reference="{{item.answr}}"),
        "Paris",
        CAPITAL,
        "invalid_variable_error",
        "item.answr: item has no field 'answr' (its fields: answer, city, n)",
    ),
    (
        check("eq", reference="{{item.city.country}}"),
        "Paris",
        CAPITAL,
        "invalid_variable_error",
        "item.city.country: item.city has no field 'country'",
    ),
    (
        check("eq", reference="{{item.city.aliases[5]}}"),
        "Paris",
        CAPITAL,
        "invalid_variable_error",
        "item.city.aliases[5]: item.city.aliases has 2 elements, no [5]",
    ),
    (
        check("eq", reference="{{item.answer.x}}"),
        "Paris",
        CAPITAL,
        "invalid_variable_error",
        "item.answer.x: item.answer is str, it has no field 'x'",
    ),
    (
        check("eq", input="{{sample.output_json.city}}"),
        "Paris",
        CAPITAL,
        "sample_parse_error",
        "sample.output_json.city: the answer is not JSON",
    ),
    (multi("a / b", a=check("eq"), b=check("ne")), "Paris", CAPITAL, "other_error", "division by zero"),
    (multi("sqrt(a - 2)", a=check("eq")), "Paris", CAPITAL, "other_error", "math domain error"),
]


@pytest.mark.parametrize("spec, answer, item, flag, message", ROW_ERRORS)
def test_a_row_that_fails_gets_reward_0_and_an_error(spec, answer, item, flag, message):
    result = grade(spec, answer, item)
    assert result.reward == 0.0
    assert len(result.errors) == 1 and message in result.errors[0]
    assert result.to_openai()["metadata"]["errors"][flag] is True


def test_a_failing_sub_grader_counts_0_in_the_formula_and_names_its_error():
    result = grade(multi("a + b", a=check("eq"), b=check("eq", reference="{{item.nope}}")), "Paris", CAPITAL)
    assert result.reward == 1.0 and result.sub_rewards == {"a": 1.0, "b": 0.0}
    assert result.errors[0].startswith("b: item.nope: ")


def test_only_the_failing_rows_fail_in_a_batch():
    grader = parse_grader(check("eq", reference="{{item.answer}}"))
    results = grader.grade_many(
        [Sample.from_text("Paris")] * 3, [CAPITAL, {"other": 1}, CAPITAL], GradingContext()
    )
    assert [r.reward for r in results] == [1.0, 0.0, 1.0]
    assert [bool(r.errors) for r in results] == [False, True, False]


def test_a_grader_that_crashes_does_not_raise(monkeypatch):
    grader = parse_grader(check("eq"))
    monkeypatch.setattr(type(grader), "grade_one", lambda self, sample, item: 1 / 0)
    result = grader.grade_many([Sample.from_text("x")], [CAPITAL], GradingContext())[0]
    assert result.reward == 0.0 and result.errors == ["ZeroDivisionError: division by zero"]


# --- refusals when a grader is read, naming the field path --------------------------------------------

JUDGE_INPUT = [{"role": "user", "content": "Grade {{sample.output_text}}"}]
SCORE = {"type": "score_model", "name": "j", "model": "judge", "input": JUDGE_INPUT}
LABEL = {
    "type": "label_model",
    "name": "l",
    "model": "judge",
    "input": JUDGE_INPUT,
    "labels": ["good", "bad"],
    "passing_labels": ["good"],
}

REFUSALS = [
    ({"type": "string_checks"}, "grader.type: 'string_checks' is not a grader type; choose one of "),
    ([1], "grader: expected a JSON object, got a list"),
    ({"name": "x"}, "grader.type: missing"),
    (check("equals"), "grader.operation: 'equals' is not one of eq, ne, like, ilike"),
    (
        multi("accuracy", accuracy=check("equals")),
        "grader.graders.accuracy.operation: 'equals' is not one of eq, ne, like, ilike",
    ),
    (
        {**check("eq"), "pass_threshold": 0.5},
        "grader.pass_threshold: unknown field; a string_check grader takes",
    ),
    ({**check("eq"), "input": 3}, "grader.input: expected a string, got the number 3"),
    ({**check("eq"), "name": None}, "grader.name: missing (a string_check grader needs it)"),
    (check("eq", input="{{output_text}}"), "grader.input: {{output_text}} is not a variable"),
    (check("eq", input="{{ items.a }}"), "grader.input: {{items.a}}: the namespaces are item and sample"),
    (check("eq", input="{{sample.choices}}"), "grader.input: {{sample.choices}}: sample has output_text, "),
    (check("eq", input="{{sample.output_text.x}}"), "sample.output_text is text, it has no fields"),
    (similarity("cosine"), "grader.evaluation_metric: cosine similarity needs an embeddings model"),
    (similarity("jaccard"), "grader.evaluation_metric: 'jaccard' is not one of fuzzy_match, bleu,"),
    (multi("a + b", a=check("eq")), "grader.calculate_output: 'b' is no grader here; the graders are a"),
    (multi("a +", a=check("eq")), "grader.calculate_output: 'a +' is not a formula"),
    (multi("a.real", a=check("eq")), "grader.calculate_output: 'a.real' is not allowed"),
    (multi("round(a)", a=check("eq")), "grader.calculate_output: 'round(a)' is not allowed"),
    (multi("min(a)", a=check("eq")), "grader.calculate_output: min() takes 2 or more arguments, not 1"),
    (
        multi("a", a=multi("b", b=check("eq"))),
        "grader.graders.a.type: a multi grader's graders cannot be multi",
    ),
    (multi("1", **{"my-grader": check("eq")}), "grader.graders.my-grader: 'my-grader' cannot be named"),
    ({**multi("a", a=check("eq")), "graders": {}}, "grader.graders: no graders"),
    ({**SCORE, "range": [1]}, "grader.range: expected two numbers [lowest, highest], got [1]"),
    ({**SCORE, "range": [5, 1]}, "grader.range: the lowest score must be below the highest"),
    (
        {**SCORE, "sampling_params": {"reasoning_effort": "high"}},
        "grader.sampling_params.reasoning_effort: not supported here: the judges here are not reasoning",
    ),
    ({**SCORE, "sampling_params": {"temperatur": 1}}, "grader.sampling_params.temperatur: unknown field"),
    ({**SCORE, "sampling_params": {"top_p": 0}}, "grader.sampling_params.top_p: 0 is out of range"),
    ({**SCORE, "input": []}, "grader.input: no messages"),
    (
        {**SCORE, "input": [{"role": "bot", "content": "x"}]},
        "grader.input[0].role: 'bot' is not one of user,",
    ),
    (
        {**SCORE, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
        "grader.input[0].content[0].type: judges here read text only; images are not supported",
    ),
    (
        {**SCORE, "input": [{"role": "user", "content": {"type": "input_text", "text": "{{item}}"}}]},
        "grader.input[0].content.text: {{item}} is not a variable",
    ),
    (
        {**SCORE, "input": [*JUDGE_INPUT, {"role": "assistant", "content": "0.5"}]},
        "grader.input: ends with an assistant message",
    ),
    (
        {**LABEL, "passing_labels": ["good", "great"]},
        "grader.passing_labels: 'great' not among the labels (good, bad); passing labels must be a subset",
    ),
    ({**LABEL, "labels": ["good", "good"]}, "grader.labels: expected distinct, non-empty labels"),
    ({**LABEL, "labels": ["good", 1]}, "grader.labels[1]: expected a string, got the number 1"),
    (
        {"type": "python", "name": "p", "source": "def grade(s, i): return 1.0", "image_tag": "latest"},
        "grader.image_tag: 'latest' is not an image here",
    ),
    ({"type": "python", "name": "p", "source": "  "}, "grader.source: empty"),
]


@pytest.mark.parametrize("spec, message", REFUSALS)
def test_refused_naming_the_field(spec, message):
    with pytest.raises(GraderError) as caught:
        parse_grader(spec)
    assert message in str(caught.value)


def test_openai_examples_are_accepted():
    """The graders of OpenAI's API reference and guide, unchanged."""
    parse_grader(
        {
            "type": "python",
            "name": "Example python grader",
            "image_tag": "2025-05-08",
            "source": "def grade(sample, item):\n    return 1.0\n",
        }
    )
    parse_grader(
        {
            "name": "First label grader",
            "type": "label_model",
            "model": "gpt-4o-2024-08-06",
            "input": [
                {
                    "type": "message",
                    "role": "system",
                    "content": {
                        "type": "input_text",
                        "text": "Classify the sentiment as one of positive, neutral, or negative",
                    },
                },
                {
                    "type": "message",
                    "role": "user",
                    "content": {"type": "input_text", "text": "Statement: {{item.response}}"},
                },
            ],
            "passing_labels": ["positive"],
            "labels": ["positive", "neutral", "negative"],
        }
    )
    parse_grader(
        {
            "type": "score_model",
            "name": "Example score model grader",
            "model": "gpt-5-mini",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "input_text",
                            "text": "Reference: {{item.label}} Model: {{sample.output_text}}",
                        }
                    ],
                }
            ],
            "sampling_params": {"temperature": 1, "top_p": 1, "seed": 42, "max_completions_tokens": 32768},
            "range": [0, 100],
            "pass_threshold": 50,
        }
    )


def test_python_graders_off_are_refused_saying_who_enables_them():
    spec = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0\n"}
    with pytest.raises(GraderError, match="python graders are off on this server; its operator enables them"):
        parse_grader(spec, context=GradingContext(python_graders=False))
    result = grade(multi("a", a=spec), "x", {}, GradingContext(python_graders=False))
    assert result.reward == 0.0 and "python graders are off" in result.errors[0]


def test_python_scores_become_results():
    from types import SimpleNamespace

    grader = parse_grader({"type": "python", "name": "p", "source": "def grade(s, i): return 1.0"})
    assert grader.from_score(SimpleNamespace(score=0.25, error=None)).reward == 0.25
    failed = grader.from_score(SimpleNamespace(score=None, error="ZeroDivisionError: division by zero"))
    errors = failed.to_openai()["metadata"]["errors"]
    assert failed.reward == 0.0 and errors["python_grader_runtime_error"] is True
    assert errors["python_grader_runtime_error_details"] == "ZeroDivisionError: division by zero"
    assert grader.from_score(SimpleNamespace(score=math.nan, error=None)).errors == [
        "the reward is nan, not a finite number"
    ]


@pytest.mark.skipif(not HAS_SANDBOX, reason="tunelab.graders.sandbox is not merged yet")
def test_python_grader_runs_in_the_sandbox():
    source = (
        "def grade(sample, item):\n"
        "    if item['answer'] == 'boom':\n"
        "        raise ValueError('no')\n"
        "    return float(sample['output_text'] == item['answer'])\n"
    )
    grader = parse_grader({"type": "python", "name": "p", "source": source})
    context = GradingContext(python_graders=True)
    results = grader.grade_many(
        [Sample.from_text("a"), Sample.from_text("a"), Sample.from_text("a")],
        [{"answer": "a"}, {"answer": "b"}, {"answer": "boom"}],
        context,
    )
    assert [r.reward for r in results] == [1.0, 0.0, 0.0]
    assert results[2].error_flags and "no" in results[2].errors[0]
    with pytest.raises(GraderError, match=r"grader\.source: "):
        parse_grader({"type": "python", "name": "p", "source": "def grade(:"}, context=context)


# --- judges ---------------------------------------------------------------------------------------------


class FixedReplies:
    """A stand-in judge for `generate`: it answers each prompt with the next of its replies."""

    device = torch.device("cpu")

    def __init__(self, tokenizer, replies: list[str]):
        self.tokenizer, self.replies = tokenizer, list(replies)
        self.seen: list[str] = []

    def generate(self, input_ids, attention_mask, **kwargs):
        self.seen += self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        answers = [
            self.tokenizer(self.replies.pop(0), add_special_tokens=False)["input_ids"] for _ in input_ids
        ]
        width = max(len(a) for a in answers)
        pad = self.tokenizer.pad_token_id
        tail = torch.tensor([a + [pad] * (width - len(a)) for a in answers])
        return torch.cat([input_ids, tail], dim=1)


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('{"result": 0.8, "steps": []}', 0.8),
        ("I'd say 0.3, maybe 0.4", 0.3),
        ('Reasoning: 2 steps. {"result": 7}', 7.0),
        ("-1e-1", -0.1),
        ("no idea", None),
    ],
)
def test_parse_score(reply, expected):
    assert parse_score(reply) == expected


def test_score_model_with_a_stub_judge(tiny_tokenizer):
    judge = FixedReplies(tiny_tokenizer, ['{"result": 0.75}', "7 of 10", "none"])
    calls = []

    def load_judge(name):
        calls.append(name)
        return judge, tiny_tokenizer

    grader = parse_grader(
        {
            **SCORE,
            "range": [0, 5],
            "input": [
                {"role": "developer", "content": "Be strict."},
                {"role": "user", "content": "Grade {{sample.output_text}}"},
            ],
        }
    )
    context = GradingContext(load_judge=load_judge)
    results = grader.grade_many([Sample.from_text(t) for t in "abc"], [{}, {}, {}], context)
    assert [r.reward for r in results] == [0.75, 5.0, 0.0]  # 7 clamped to the range
    assert results[2].to_openai()["metadata"]["errors"]["model_grader_parse_error"] is True
    assert "Be strict." in judge.seen[0] and 'JSON object {"result": <a number from 0 to 5>}' in judge.seen[0]
    assert "Grade a" in judge.seen[0]
    usage = results[0].to_openai()["model_grader_token_usage_per_model"]["judge"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    grader.grade_many([Sample.from_text("d")], [{}], context)
    assert calls == ["judge"]  # loaded once per context


def test_a_judge_that_cannot_load_fails_its_rows(tiny_tokenizer):
    def load_judge(name):
        raise OSError(f"{name}: no such model")

    result = grade(SCORE, "x", {}, GradingContext(load_judge=load_judge))
    errors = result.to_openai()["metadata"]["errors"]
    assert result.reward == 0.0 and errors["model_grader_server_error"] is True
    assert "judge: no such model" in errors["model_grader_server_error_details"]


def test_label_model_takes_the_most_likely_label(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    labels = ["great film", "bad", "awful"]
    chat = [{"role": "user", "content": "Review: alice london. Sentiment?"}]
    expected = max(labels, key=lambda label: label_logprob(model, tokenizer, chat, label))
    for passing, reward in [([expected], 1.0), ([label for label in labels if label != expected], 0.0)]:
        spec = {
            **LABEL,
            "input": [{"role": "user", "content": "Review: {{item.text}}. Sentiment?"}],
            "labels": labels,
            "passing_labels": passing,
        }
        context = GradingContext(load_judge=lambda name: (model, tokenizer))
        result = grade(spec, "", {"text": "alice london"}, context)
        assert result.scores == {"label": expected} and result.reward == reward and result.errors == []


@torch.no_grad()
def label_logprob(model, tokenizer, chat, label) -> float:
    """The label's summed log-probability as the reply, computed here without tunelab's scoring code."""
    prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    label_ids = tokenizer(label, add_special_tokens=False)["input_ids"]
    logprobs = model(torch.tensor([prompt_ids + label_ids])).logits[0].log_softmax(-1)
    return sum(logprobs[len(prompt_ids) - 1 + i, token].item() for i, token in enumerate(label_ids))


# --- OpenAI's response shape ------------------------------------------------------------------------------


def test_to_openai_is_the_sdks_grader_run_response():
    response_type = pytest.importorskip("openai.types.fine_tuning.alpha.grader_run_response")
    result = grade(
        multi("(a + b) / 2", a=check("eq"), b=check("eq", reference="{{item.x}}")), "Paris", CAPITAL
    )
    shape = result.to_openai()
    parsed = response_type.GraderRunResponse.model_validate(shape)
    assert parsed.reward == 0.5 and parsed.sub_rewards == {"a": 1.0, "b": 0.0}
    assert parsed.metadata.errors.invalid_variable_error and not parsed.metadata.errors.other_error
    assert parsed.metadata.name == "m" and parsed.metadata.type == "multi"
    assert set(shape) == {"reward", "sub_rewards", "metadata", "model_grader_token_usage_per_model"}
    assert set(shape["metadata"]["errors"]) == set(response_type.MetadataErrors.model_fields) - {
        name for name in response_type.MetadataErrors.model_fields if name.startswith("api_")
    } | {
        "model_grader_parse_error",
        "model_grader_refusal_error",
        "model_grader_server_error",
        "model_grader_server_error_details",
    }


# --- files and the CLI ------------------------------------------------------------------------------------

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def test_load_grader_names_the_file(tmp_path):
    bad_json = tmp_path / "g.json"
    bad_json.write_text('{"type": "string_check",\n "name": }')
    with pytest.raises(GraderError, match=r"g\.json:2:10: not JSON"):
        load_grader(bad_json)
    bad_field = tmp_path / "h.json"
    bad_field.write_text(json.dumps(check("equals")))
    with pytest.raises(GraderError, match=r"h\.json: grader\.operation: 'equals' is not one of"):
        load_grader(bad_field)
    with pytest.raises(GraderError, match="no such grader file"):
        load_grader(tmp_path / "none.json")


def test_grade_command_end_to_end(tmp_path):
    grader = tmp_path / "grader.json"
    grader.write_text(
        json.dumps(multi("(exact + fuzzy) / 2", exact=check("eq"), fuzzy=similarity("fuzzy_match")))
    )
    rows = [
        {"messages": [{"role": "user", "content": "Capital?"}], "answer": a}
        for a in ["Paris", "Rome", "Oslo"]
    ]
    rows.append({"messages": []})  # no answer field: an error on line 4
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    predictions = tmp_path / "preds.jsonl"
    predictions.write_text(
        json.dumps({"line": 1, "messages": [], "prediction": "Paris"})
        + "\n"  # `tunelab generate`'s shape
        + json.dumps({"output_text": "Roma"})
        + "\n"
        + json.dumps("Oslo")
        + "\n"
        + json.dumps("x")
        + "\n"
    )
    out = tmp_path / "results.jsonl"
    result = invoke("grade", "--grader", grader, "--data", data, "--predictions", predictions, "--out", out)
    assert result.exit_code == 0, result.output
    roma = (0 + 2 * 3 / 8) / 2  # eq fails; difflib: 3 of 4 letters match in Rome and Roma
    mean = (1 + roma + 1 + 0) / 4
    assert f"| reward | {mean:.4f} |" in result.output
    assert "| reward of exact | 0.5000 |" in result.output and "| rows with errors | 1 |" in result.output
    assert "- line 4: exact: item.answer: item has no field 'answer'" in result.output
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["line"] for row in written] == [1, 2, 3, 4]
    assert written[1]["reward"] == pytest.approx(roma) and written[1]["sub_rewards"]["exact"] == 0.0

    fewer = write_jsonl(tmp_path / "fewer.jsonl", rows[:3])
    mismatch = invoke("grade", "--grader", grader, "--data", fewer, "--predictions", predictions)
    assert mismatch.exit_code == 1 and "Traceback" not in mismatch.output
    assert "fewer.jsonl has 3 rows but" in mismatch.output and "preds.jsonl has 4 answers" in mismatch.output

    predictions.write_text('{"text": "Paris"}\n')
    bad = invoke("grade", "--grader", grader, "--data", fewer, "--predictions", predictions)
    assert bad.exit_code == 1 and "preds.jsonl:1: expected" in bad.output


def test_eval_with_a_grader_on_a_tiny_model(tiny_llama_dir, tmp_path):
    grader = tmp_path / "grader.json"
    # The tiny model's answer is noise, but never this text: every row passes `ne`, bar the one without it.
    grader.write_text(json.dumps(check("ne", reference="{{item.impossible}}")))
    rows = [
        {
            "messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}],
            "impossible": "\u2603 never \u2603",
        }
        for w in ["alice", "bob", "paris"]
    ] + [{"messages": [{"role": "user", "content": "say tokyo"}]}]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "eval" / "results.json"
    args = ["eval", "--model", tiny_llama_dir, "--data", data, "--grader", grader, "--out", out]
    result = invoke(*args, "--max-new-tokens", 4)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["results"]["reward"] == {"mean": 0.75, "ci95": report["results"]["reward"]["ci95"]}
    assert report["results"]["rows_with_errors"] == 1 and report["results"]["errors"][0]["line"] == 4
    assert "| reward | 0.7500 |" in out.with_suffix(".md").read_text()
    predictions = [
        json.loads(line) for line in out.with_suffix(".predictions.jsonl").read_text().splitlines()
    ]
    assert len(predictions) == 4 and all(isinstance(row["output_text"], str) for row in predictions)

    refused = invoke(*args, "--task", "classification")
    assert refused.exit_code == 1 and "--grader grades generated answers" in refused.output
    refused = invoke(*args, "--metrics", "rouge")
    assert refused.exit_code == 1 and "--grader does not use --metrics" in refused.output
