"""Tools in chat completions, through the official `openai` client on a tiny model whose replies are
scripted: the prompt shows the tools, replies come back as `tool_calls` (whole and streamed as OpenAI's
deltas), forced calls start the reply, what is not a call stays plain text, and bad requests are 400s."""

import json

import openai
import pytest
from fastapi.testclient import TestClient

from conftest import WEATHER
from test_service_api import settings_for
from tunelab.data.tools import OPEN
from tunelab.service import create_app
from tunelab.service.engine import Engine, Generation

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
ASK = [{"role": "user", "content": "Weather in Oslo?"}]


@pytest.fixture
def scripted(monkeypatch, tmp_path, tiny_llama_dir):
    """(client, seen): the model "writes" `script["reply"]` in small pieces; `seen` holds each prompt."""
    script, seen = {"reply": ""}, []

    def pieces(self):
        seen.append(self.received.decoder.tokenizer.decode(self.request.prompt_ids))
        reply, stop = script["reply"], self.sampling.stop
        cut = min([reply.find(s) for s in stop if s in reply], default=-1)
        reply = reply if cut < 0 else reply[:cut]
        for start in range(0, len(reply), 5):
            self.text += reply[start : start + 5]
            yield reply[start : start + 5]

    monkeypatch.setattr(Generation, "pieces", pieces)
    # The tiny tokenizer spells the tool list out in many tokens; the scripted model never runs on them.
    monkeypatch.setattr(Engine, "context_length", lambda self, base: 4096)
    with TestClient(create_app(settings_for(tmp_path, tiny_llama_dir))) as http:
        client = openai.OpenAI(
            base_url="http://testserver/v1", api_key="key-one", http_client=http, max_retries=0
        )
        yield client, script, seen


def ask(client, **options):
    return client.chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER], max_tokens=8, **options
    )


def test_a_reply_with_a_call_comes_back_as_tool_calls(scripted):
    client, script, seen = scripted
    script["reply"] = CALL
    reply = ask(client)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in seen[-1]
    assert seen[-1].endswith("<|im_start|>assistant\n")


def test_the_answer_to_a_tool_message_is_rendered_and_read(scripted):
    client, script, seen = scripted
    script["reply"] = CALL
    first = ask(client)
    call = first.choices[0].message.tool_calls[0]
    script["reply"] = "It is -2C in Oslo."
    messages = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "-2C, snow"},
    ]
    reply = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER], max_tokens=8)
    assert (
        reply.choices[0].message.content == "It is -2C in Oslo." and reply.choices[0].finish_reason == "stop"
    )
    assert f"<|im_start|>assistant\n{CALL}<|im_end|>" in seen[-1]
    assert "<|im_start|>user\n<tool_response>\n-2C, snow\n</tool_response><|im_end|>" in seen[-1]


def test_streamed_calls_arrive_as_openais_deltas(scripted):
    client, script, _ = scripted
    script["reply"] = "Let me check.\n" + CALL + "\n" + CALL.replace("Oslo", "Bergen")
    chunks = list(ask(client, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content.strip() == "Let me check."
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = entry["id"] or delta.id
            entry["name"] += delta.function.name or ""
            entry["arguments"] += delta.function.arguments or ""
    assert [json.loads(c["arguments"])["city"] for c in calls.values()] == ["Oslo", "Bergen"]
    assert all(c["name"] == "get_weather" and c["id"].startswith("call_") for c in calls.values())
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    "reply",
    [
        "Sunny, probably.",
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>',  # not a declared function
        '<tool_call>{"name": "get_weather", "arguments": {"city": ',  # cut off
    ],
)
def test_what_is_not_a_call_stays_plain_text(scripted, reply):
    client, script, _ = scripted
    script["reply"] = reply
    whole = ask(client).choices[0]
    assert whole.message.content == reply and not whole.message.tool_calls and whole.finish_reason == "stop"
    streamed = [c.choices[0] for c in ask(client, stream=True) if c.choices]
    assert "".join(c.delta.content or "" for c in streamed) == reply
    assert not any(c.delta.tool_calls for c in streamed)


def test_tool_choice_forces_the_start_of_a_call_and_none_hides_the_tools(scripted):
    client, script, seen = scripted
    script["reply"] = '{"city": "Oslo"}}\n</tool_call>'
    named = {"type": "function", "function": {"name": "get_weather"}}
    call = ask(client, tool_choice=named).choices[0].message.tool_calls[0]
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    assert seen[-1].endswith('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": ')
    script["reply"] = CALL.removeprefix(OPEN)
    assert ask(client, tool_choice="required").choices[0].message.tool_calls[0].function.name == "get_weather"
    assert seen[-1].endswith(f"assistant\n{OPEN}\n")
    script["reply"] = "No tools needed."
    assert ask(client, tool_choice="none").choices[0].message.content == "No tools needed."
    assert "<tools>" not in seen[-1]


def test_parallel_tool_calls_false_keeps_one_call(scripted):
    client, script, _ = scripted
    script["reply"] = CALL + "\n" + CALL.replace("Oslo", "Bergen")
    assert len(ask(client).choices[0].message.tool_calls) == 2
    assert len(ask(client, parallel_tool_calls=False).choices[0].message.tool_calls) == 1


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice"),
        (
            {"tools": [{**WEATHER, "function": {**WEATHER["function"], "strict": True}}]},
            "tools.0.function.strict",
        ),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.0.function.name"),
        ({"tools": None, "tool_choice": "required"}, "tool_choice"),
        ({"functions": [WEATHER["function"]]}, "functions"),
        (
            {
                "messages": [
                    *ASK,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": "{"},
                            }
                        ],
                    },
                ]
            },
            "messages.1.tool_calls.0.function.arguments",
        ),
        ({"messages": [*ASK, {"role": "tool", "content": "-2C"}]}, "messages.1.tool_call_id"),
    ],
)
def test_bad_tool_requests_are_400s_that_name_the_field(scripted, options, param):
    client, _, _ = scripted
    body = {"model": "tiny", "messages": ASK, "tools": [WEATHER], "max_tokens": 4} | options
    body = {key: value for key, value in body.items() if value is not None}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**body)
    assert caught.value.body["param"] == param, caught.value.body


# A template that writes calls as bare JSON, Llama 3.1's way (no <tool_call> tags).
BARE_JSON_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.tool_calls %}"
    "{{ {'name': m.tool_calls[0].function.name, 'parameters': m.tool_calls[0].function.arguments} | tojson }}"
    "{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if tools %}{{ tools | tojson }}{% endif %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_writing_bare_json_calls_is_read_whole_and_streamed(scripted):
    client, script, _ = scripted
    tokenizer = client._client.app.state.service.engine.tokenizer("tiny")
    original, tokenizer.chat_template = tokenizer.chat_template, BARE_JSON_TEMPLATE
    try:
        script["reply"] = '{"name": "get_weather", "parameters": {"city": "Oslo"}}'
        call = ask(client).choices[0].message.tool_calls[0]
        assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Oslo"})
        chunks = [c.choices[0] for c in ask(client, stream=True) if c.choices]
        arguments = "".join(d.function.arguments or "" for c in chunks for d in c.delta.tool_calls or [])
        assert json.loads(arguments) == {"city": "Oslo"} and chunks[-1].finish_reason == "tool_calls"
        script["reply"] = "Sunny."
        assert ask(client).choices[0].message.content == "Sunny."
        with pytest.raises(openai.BadRequestError) as caught:  # a forced call needs the tags to start one
            ask(client, tool_choice="required")
        assert caught.value.body["param"] == "tool_choice"
    finally:
        tokenizer.chat_template = original
