"""A function-calling job through the service with the official `openai` client, as a team moving off
OpenAI's fine-tuning would run it: 60 examples in OpenAI's format (two tools, `get_weather` and
`get_local_time`; some examples call, some answer from a tool's result), a supervised job on the embedded
model, then the `ft:` model asked about cities it never saw, with `tools=[...]`: how many replies are
`tool_calls` with the right name and arguments, before and after tuning, whole and streamed, and whether it
answers from a `tool` message's content.

python examples/tools_service.py --data-dir /tmp/tools-service     # starts `tunelab serve`
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

from feedback_loop import start_server, wait_for_job
from openai import OpenAI

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "the city's name"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_local_time",
            "description": "The local time in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "the city's name"}},
                "required": ["city"],
            },
        },
    },
]
TRAIN_CITIES = """Paris London Tokyo Berlin Madrid Rome Vienna Prague Warsaw Dublin Lisbon Athens Oslo
Stockholm Helsinki Copenhagen Amsterdam Brussels Zurich Geneva Munich Hamburg Milan Naples Seville Porto
Krakow Budapest Bucharest Sofia Istanbul Cairo Nairobi Lagos Accra Casablanca Dubai Mumbai Delhi Bangkok
Singapore Jakarta Manila Seoul Beijing Shanghai Sydney Melbourne Auckland Toronto""".split()
TEST_CITIES = """Montreal Vancouver Chicago Boston Denver Seattle Houston Miami Atlanta Dallas Lima Bogota
Santiago Quito Caracas Havana Reykjavik Tallinn Riga Vilnius Kyiv Tbilisi Yerevan Baku Tehran Karachi Dhaka
Hanoi Taipei Osaka""".split()
WEATHER_ASKS = [
    "What's the weather like in {city}?",
    "Is it raining in {city} right now?",
    "How warm is it in {city} today?",
    "weather {city}",
    "Can you check the weather in {city} for me?",
    "Do I need an umbrella in {city}?",
]
TIME_ASKS = [
    "What time is it in {city}?",
    "What's the local time in {city} right now?",
    "time in {city}",
    "Is it morning or evening in {city} now?",
]
CONDITIONS = ["sunny", "cloudy", "light rain", "snow", "windy", "fog"]


def call(name: str, city: str, call_id: str) -> dict:
    arguments = json.dumps({"city": city})
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def ask(rng: random.Random, city: str) -> tuple[str, str]:
    """(the question, the function that answers it)."""
    if rng.random() < 0.6:
        return rng.choice(WEATHER_ASKS).format(city=city), "get_weather"
    return rng.choice(TIME_ASKS).format(city=city), "get_local_time"


def result(rng: random.Random, name: str) -> tuple[str, str]:
    """(a tool's result, the answer written from it)."""
    if name == "get_weather":
        degrees, sky = rng.randint(-10, 35), rng.choice(CONDITIONS)
        return json.dumps({"temperature_c": degrees, "conditions": sky}), f"It is {degrees}°C with {sky}."
    hour, minute = rng.randint(0, 23), rng.choice([0, 15, 30, 45])
    return json.dumps({"time": f"{hour:02d}:{minute:02d}"}), f"It is {hour:02d}:{minute:02d} there."


def training_rows(n: int, seed: int = 0) -> list[dict]:
    """n examples: half end with the call, the others go on to answer from the tool's result."""
    rng, rows = random.Random(seed), []
    for i in range(n):
        city = TRAIN_CITIES[i % len(TRAIN_CITIES)]
        question, name = ask(rng, city)
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "tool_calls": [call(name, city, f"call_{i}")]},
        ]
        if i % 2:
            content, answer = result(rng, name)
            messages += [
                {"role": "tool", "tool_call_id": f"call_{i}", "content": content},
                {"role": "assistant", "content": answer},
            ]
        rows.append({"tools": TOOLS, "messages": messages})
    return rows


def score_calls(client: OpenAI, model: str, cases: list[tuple[str, str, str]], stream: bool = False) -> int:
    """How many replies call the right function with the right city."""
    right = 0
    for question, name, city in cases:
        messages = [{"role": "user", "content": question}]
        if stream:
            calls = streamed_calls(client, model, messages)
        else:
            reply = client.chat.completions.create(
                model=model, messages=messages, tools=TOOLS, temperature=0, max_tokens=48
            )
            calls = [
                (c.function.name, c.function.arguments) for c in reply.choices[0].message.tool_calls or []
            ]
        right += len(calls) == 1 and calls[0][0] == name and json.loads(calls[0][1]) == {"city": city}
    return right


def streamed_calls(client: OpenAI, model: str, messages: list[dict]) -> list[tuple[str, str]]:
    """The calls of a streamed reply, put together from OpenAI's tool-call deltas."""
    calls: dict[int, list[str]] = {}
    stream = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, temperature=0, max_tokens=48, stream=True
    )
    for chunk in stream:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(delta.index, ["", ""])
            entry[0] += delta.function.name or ""
            entry[1] += delta.function.arguments or ""
    return [tuple(entry) for entry in calls.values()]


def answers_from_tool(client: OpenAI, model: str, cities: list[str], seed: int = 5) -> int:
    """How many answers, given the call and a tool's result, state the result's figure."""
    rng, right = random.Random(seed), 0
    for i, city in enumerate(cities):
        question, name = ask(rng, city)
        content, expected = result(rng, name)
        figure = expected.split()[2]  # "-3°C" or "07:45"
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "tool_calls": [call(name, city, f"call_t{i}")]},
            {"role": "tool", "tool_call_id": f"call_t{i}", "content": content},
        ]
        reply = client.chat.completions.create(
            model=model, messages=messages, tools=TOOLS, temperature=0, max_tokens=32
        )
        right += figure.rstrip(".") in (reply.choices[0].message.content or "")
    return right


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="the server's data dir (default: a temporary one)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr-multiplier", type=float, default=2.0, help="of LoRA's learning rate")
    args = parser.parse_args()
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="tunelab-tools-"))
    files = data_dir.parent / f"{data_dir.name}-files"
    files.mkdir(parents=True, exist_ok=True)
    train = files / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in training_rows(60)))
    rng = random.Random(1)
    cases = [(*ask(rng, city), city) for city in TEST_CITIES]
    api_key = "tl-tools-demo"
    server, url = start_server(data_dir, api_key)
    try:
        client = OpenAI(base_url=f"{url}/v1", api_key=api_key)
        base = client.models.list().data[0].id
        before = score_calls(client, base, cases)
        print(f"before tuning ({base}): {before}/{len(cases)} right tool_calls")
        upload = client.files.create(file=train.open("rb"), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=base, training_file=upload.id, suffix="tools",
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": args.epochs, "learning_rate_multiplier": args.lr_multiplier,
            }}},
        )  # fmt: skip
        job, seconds = wait_for_job(client, job, every_s=5)
        print(f"job {job.id}: {job.status} in {seconds:.0f} s, {job.trained_tokens} tokens")
        model = job.fine_tuned_model
        after = score_calls(client, model, cases)
        streamed = score_calls(client, model, cases, stream=True)
        print(
            f"after tuning ({model}): {after}/{len(cases)} right tool_calls, {streamed}/{len(cases)} streamed"
        )
        told = answers_from_tool(client, model, TEST_CITIES[:10])
        print(f"answers stating the tool's result: {told}/10")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
