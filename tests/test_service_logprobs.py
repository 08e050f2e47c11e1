"""logprobs, logit_bias, the penalties and usage through the official `openai` client on a tiny random
model: the values are the model's own (computed here independently), in OpenAI's shapes for chat and the
legacy completions, plain and streamed; a bad value is a 400 naming its field; usage counts the prompt
tokens the prefix cache held."""

import openai
import pytest
import torch
from fastapi.testclient import TestClient

from test_service_api import settings_for
from tunelab.inference.generation import chat_prompt_ids
from tunelab.models import load_model
from tunelab.service import create_app

MESSAGES = [{"role": "user", "content": "say bob"}]


@pytest.fixture(scope="module")
def sdk(tmp_path_factory, tiny_llama_dir):
    settings = settings_for(tmp_path_factory.mktemp("service"), tiny_llama_dir)
    with TestClient(create_app(settings)) as client:
        yield openai.OpenAI(
            base_url="http://testserver/v1", api_key="key-one", http_client=client, max_retries=0
        )


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    return load_model(str(tiny_llama_dir))


def greedy_logprobs(model, prompt_ids, max_tokens, eos):
    """The greedy tokens and the log_softmax of the model's logits at each, one whole forward a token."""
    model, _ = model
    ids, steps = list(prompt_ids), []
    with torch.no_grad():
        for _ in range(max_tokens):
            logprobs = model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
            token = int(logprobs.argmax())
            if token == eos:
                break
            steps.append((token, logprobs))
            ids.append(token)
    return steps


def test_chat_logprobs_are_the_models_own_and_parse_in_the_sdk(sdk, model):
    tokenizer = model[1]
    reply = sdk.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs.content
    steps = greedy_logprobs(model, chat_prompt_ids(tokenizer, MESSAGES), 8, tokenizer.eos_token_id)
    assert len(content) == len(steps) == reply.usage.completion_tokens
    for entry, (token, logprobs) in zip(content, steps, strict=True):
        assert entry.token == tokenizer.decode([token])  # "\ufffd" for a part of a character: see bytes
        assert entry.logprob == pytest.approx(float(logprobs[token]), abs=1e-4)
        tops = entry.top_logprobs
        assert len(tops) == 3 and [t.logprob for t in tops] == sorted((t.logprob for t in tops), reverse=True)
        assert [t.logprob for t in tops] == pytest.approx(logprobs.topk(3).values.tolist(), abs=1e-4)
        assert tops[0].logprob == pytest.approx(entry.logprob)  # greedy picks the likeliest
    text = b"".join(bytes(entry.bytes) for entry in content).decode(errors="replace")
    assert text == reply.choices[0].message.content

    plain = sdk.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0)
    assert plain.choices[0].logprobs is None
    assert plain.choices[0].message.content == reply.choices[0].message.content
    zero = sdk.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=2, temperature=0, logprobs=True
    )
    assert [e.top_logprobs for e in zero.choices[0].logprobs.content] == [[], []]


def test_streamed_chunks_carry_the_logprobs_of_their_text(sdk):
    options = dict(
        model="tiny", messages=MESSAGES, max_tokens=10, temperature=0, logprobs=True, top_logprobs=2
    )
    whole = sdk.chat.completions.create(**options).choices[0]
    chunks = [c for c in sdk.chat.completions.create(**options, stream=True) if c.choices]
    streamed = [e for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in whole.logprobs.content]
    for chunk in chunks:  # each chunk's tokens are those of its text
        choice = chunk.choices[0]
        if choice.delta.content:
            text = b"".join(bytes(e.bytes) for e in choice.logprobs.content).decode(errors="replace")
            assert choice.delta.content in text or "\ufffd" in text

    # A stop string cuts the text and the tokens after it; text held back for it keeps its tokens back.
    stop = whole.message.content[3:5]
    stopped = sdk.chat.completions.create(**options, stop=[stop]).choices[0]
    kept = stopped.logprobs.content
    assert stopped.message.content == whole.message.content[: whole.message.content.index(stop)]
    assert [e.model_dump() for e in kept] == [e.model_dump() for e in whole.logprobs.content[: len(kept)]]
    assert len(b"".join(bytes(e.bytes) for e in kept).decode(errors="replace")) >= len(
        stopped.message.content
    )
    chunks = [c for c in sdk.chat.completions.create(**options, stop=[stop], stream=True) if c.choices]
    streamed = [e for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in kept]


def test_legacy_completions_logprobs(sdk, model):
    tokenizer = model[1]
    reply = sdk.completions.create(model="tiny", prompt="tokyo", max_tokens=6, temperature=0, logprobs=2)
    choice = reply.choices[0]
    logprobs = choice.logprobs
    steps = greedy_logprobs(model, tokenizer("tokyo")["input_ids"], 6, tokenizer.eos_token_id)
    assert len(logprobs.tokens) == len(steps) == len(logprobs.token_logprobs) == len(logprobs.text_offset)
    for (token, expected), got, top in zip(
        steps, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        assert got == pytest.approx(float(expected[token]), abs=1e-4)
        assert 2 <= len(top) <= 3  # the top 2 and the chosen token (here among them: greedy)
        assert max(top.values()) == pytest.approx(got)
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset == sorted(logprobs.text_offset)
    assert logprobs.text_offset[-1] < len(choice.text) or choice.text == ""

    options = dict(model="tiny", prompt="tokyo", max_tokens=6, temperature=0, logprobs=2)
    chunks = list(sdk.completions.create(**options, stream=True))
    streamed = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.token_logprobs]
    # the same prompt again: prefilled from the prefix cache, so equal up to float rounding
    assert streamed == pytest.approx(logprobs.token_logprobs, abs=1e-5)


def test_logit_bias_and_penalties_change_the_answer_as_defined(sdk, model):
    tokenizer = model[1]
    (forced,) = tokenizer(" bob")["input_ids"]
    reply = sdk.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=4, temperature=0, logit_bias={str(forced): 100}
    )
    assert reply.choices[0].message.content == " bob" * 4
    # Penalties on the legacy completions, where greedy repeats itself (tests/test_scheduler.py checks the
    # tokens against a direct computation).
    plain = sdk.completions.create(model="tiny", prompt="tokyo", max_tokens=10, temperature=0)
    penalised = sdk.completions.create(
        model="tiny",
        prompt="tokyo",
        max_tokens=10,
        temperature=0,
        frequency_penalty=2.0,
        presence_penalty=0.5,
    )
    assert penalised.choices[0].text != plain.choices[0].text


@pytest.mark.parametrize(
    "options, param",
    [
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"-1": 1}}, "logit_bias"),
        ({"logit_bias": {"100000": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"5": "1"}}, "logit_bias.5"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": 1}, "logprobs"),
    ],
)
def test_bad_values_are_a_400_naming_the_field(sdk, options, param):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2, **options)
    assert refused.value.param == param


@pytest.mark.parametrize("logprobs", [6, -1, True])
def test_legacy_logprobs_is_a_count_up_to_5(sdk, logprobs):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.completions.create(model="tiny", prompt="tokyo", max_tokens=2, logprobs=logprobs)
    assert refused.value.param == "logprobs"


def test_usage_counts_the_prompt_tokens_the_prefix_cache_held(sdk):
    system = {"role": "system", "content": "You answer in one word, about fruit only, and never twice."}
    first = sdk.chat.completions.create(
        model="tiny", messages=[system, {"role": "user", "content": "apple?"}], max_tokens=2, n=2
    )
    opening = first.usage.prompt_tokens_details.cached_tokens  # the template's first tokens, seen before
    second = sdk.chat.completions.create(
        model="tiny", messages=[system, {"role": "user", "content": "pear?"}], max_tokens=2, n=2,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    usage = [chunk.usage for chunk in second if chunk.usage][0]
    cached = usage.prompt_tokens_details.cached_tokens
    assert opening + 10 < cached < usage.prompt_tokens, "the system prompt's tokens, once for two choices"
