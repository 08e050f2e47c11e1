"""`tunelab demo`: data -> model -> LoRA -> evaluate, on a task tunelab generates itself.

The task is a fixed output format (one of the classic reasons to fine-tune): turn a sentence about a
person into one compact JSON record with fixed keys. The base model knows JSON but not this schema, so it
scores near zero; a short LoRA run teaches it the format.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .data.examples import Example

SYSTEM = "Extract the person as JSON."
NAMES = """Alice Bruno Chen Dana Emeka Farah Goran Hana Ivan Julia Kofi Lena Mateo Nadia Omar Priya Quinn Rosa
Sven Tariq Uma Vera Wei Yara Zoltan""".split()
CITIES = """Paris Lagos Lima Oslo Seoul Cairo Quito Dublin Hanoi Austin Porto Nairobi Osaka Zurich Denver
Krakow""".split()
JOBS = """teacher nurse pilot chef baker lawyer farmer dentist plumber painter architect journalist engineer
librarian""".split()
TEMPLATES = [
    "{name} is a {age}-year-old {job} who lives in {city}.",
    "Meet {name}, {age}, a {job} based in {city}.",
    "{name} works as a {job} in {city} and is {age} years old.",
    "At {age}, {name} is a {job} living in {city}.",
    "Our new neighbour in {city} is {name}, a {job} aged {age}.",
]


def make_examples(n: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        person = {
            "name": rng.choice(NAMES),
            "age": rng.randint(19, 88),
            "job": rng.choice(JOBS),
            "city": rng.choice(CITIES),
        }
        sentence = rng.choice(TEMPLATES).format(**person)
        answer = json.dumps(
            {"name": person["name"], "age": person["age"], "job": person["job"], "city": person["city"]}
        )
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": sentence},
            {"role": "assistant", "content": answer},
        ]
        examples.append(Example(messages=messages, line=i + 1))
    return examples


def write_jsonl(examples: list[Example], path: Path) -> None:
    path.write_text("".join(json.dumps({"messages": e.messages}) + "\n" for e in examples))


def exact_match(predictions: list[str], examples: list[Example]) -> float:
    hits = sum(p.strip() == e.messages[-1]["content"] for p, e in zip(predictions, examples, strict=True))
    return hits / len(examples)


@dataclass
class DemoResult:
    before: float
    after: float
    adapter: Path


@dataclass
class DemoConfig:
    out: str = field(default="runs/demo", metadata={"help": "folder for the demo data and adapter"})
    steps: int = field(default=30, metadata={"help": "LoRA optimizer steps"})
    n_train: int = field(default=300, metadata={"help": "generated training examples"})
    n_test: int = field(default=50, metadata={"help": "generated held-out examples"})


def run_demo(config: DemoConfig | None = None, console=None) -> DemoResult:
    from .inference import load_for_inference  # torch: only when the demo runs
    from .inference.generation import generate
    from .training import TrainConfig, train

    config = config or DemoConfig()
    out, steps, n_train, n_test = config.out, config.steps, config.n_train, config.n_test
    console = console or Console()
    out_dir = Path(out)
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    train_set, test_set = make_examples(n_train, seed=1), make_examples(n_test, seed=2)
    write_jsonl(train_set, data_dir / "train.jsonl")
    write_jsonl(test_set, data_dir / "test.jsonl")
    console.rule("[bold]1. data")
    console.print(f"Task: {SYSTEM!r}  {n_train} train / {n_test} held-out examples in {data_dir}")
    console.print(f"  e.g. {test_set[0].messages[1]['content']!r} -> {test_set[0].messages[2]['content']}")

    console.rule("[bold]2. base model, held-out exact match")
    base, tokenizer = load_for_inference("default")
    before_preds = generate(base, tokenizer, [e.messages for e in test_set], max_new_tokens=40)
    before = exact_match(before_preds, test_set)
    console.print(f"Base model exact match: [bold]{before:.1%}[/]")
    del base

    console.rule("[bold]3. LoRA fine-tune")
    adapter = out_dir / "adapter"
    config = TrainConfig(
        model="default",
        data=str(data_dir / "train.jsonl"),
        out=str(adapter),
        method="lora",
        max_steps=steps,
        lr=1e-3,
        batch_size=8,
        overwrite=True,
    )
    train(config, console=console)

    console.rule("[bold]4. tuned model, held-out exact match")
    tuned, tokenizer = load_for_inference("default", str(adapter))
    after_preds = generate(tuned, tokenizer, [e.messages for e in test_set], max_new_tokens=40)
    after = exact_match(after_preds, test_set)
    show_results(console, test_set, before_preds, after_preds, before, after, adapter)
    return DemoResult(before, after, adapter)


def show_results(console, test_set, before_preds, after_preds, before, after, adapter) -> None:
    table = Table(title="Three held-out examples", show_lines=True)
    for column in ("input", "base model", "after LoRA", "expected"):
        table.add_column(column, overflow="fold")
    for example, b, a in list(zip(test_set, before_preds, after_preds, strict=True))[:3]:
        table.add_row(example.messages[1]["content"], b[:160], a, example.messages[2]["content"])
    console.print(table)
    console.print(
        f"Held-out exact match: before [bold red]{before:.1%}[/] -> after [bold green]{after:.1%}[/]"
    )
    console.print(
        f"Adapter saved in {adapter}. Chat with it:\n  tunelab chat --model default --adapter {adapter}"
    )
