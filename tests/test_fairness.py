"""`tunelab eval --groups`: a tiny model tuned on data whose label follows a group word changes its answer
when he and she are swapped far more often than the same model tuned on balanced data."""

from __future__ import annotations

import random

from conftest import write_jsonl
from tunelab.evaluation import EvalConfig, evaluate
from tunelab.training import TrainConfig, train

GROUPS = "gender:\n  female: [she, her]\n  male: [he, his]\n"
FILLER = "the quick brown fox jumps over the lazy dog".split()


def rows(n: int, seed: int, label_from: str) -> list[dict]:
    """`label_from` "pronoun": he is positive, she negative; "word": great is positive, awful negative."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        pronoun, word = rng.choice(["he", "she"]), rng.choice(["great", "awful"])
        positive = pronoun == "he" if label_from == "pronoun" else word == "great"
        text = f"{pronoun} found the film {word} {' '.join(rng.sample(FILLER, 3))}"
        answer = "positive" if positive else "negative"
        out.append(
            {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]}
        )
    return out


def flip_rate(tiny_llama_dir, tmp_path, label_from: str) -> dict:
    data = write_jsonl(tmp_path / f"{label_from}.jsonl", rows(64, 0, label_from))
    adapter = tmp_path / f"lora-{label_from}"
    train(TrainConfig(model=str(tiny_llama_dir), data=[str(data)], out=str(adapter), max_steps=60, lr=3e-2,
                      batch_size=8, seed=0))  # fmt: skip
    config = EvalConfig(model=str(tiny_llama_dir), adapter=str(adapter), data=str(tmp_path / "test.jsonl"),
                        task="classification", labels=["negative", "positive"], instruction="",
                        groups=str(tmp_path / "groups.yaml"))  # fmt: skip
    return evaluate(config, str(tmp_path / f"eval-{label_from}.json"))


def test_counterfactual_probe_flags_a_model_tuned_on_skewed_labels(tiny_llama_dir, tmp_path):
    (tmp_path / "groups.yaml").write_text(GROUPS)
    write_jsonl(tmp_path / "test.jsonl", rows(40, 1, "word"))
    skewed = flip_rate(tiny_llama_dir, tmp_path, "pronoun")
    balanced = flip_rate(tiny_llama_dir, tmp_path, "word")
    skewed_probe = skewed["groups"]["gender"]["counterfactual"]
    balanced_probe = balanced["groups"]["gender"]["counterfactual"]
    assert skewed_probe["examples"] == balanced_probe["examples"] == 40
    assert skewed_probe["flip_rate"] > balanced_probe["flip_rate"] + 0.3
    slices = balanced["groups"]["gender"]["slices"]
    assert set(slices) == {"female", "male"} and sum(s["examples"] for s in slices.values()) == 40
    low, high = slices["male"]["ci95"]
    assert low <= slices["male"]["value"] <= high
    table = (tmp_path / "eval-pronoun.md").read_text()
    assert "## gender" in table and "Counterfactual probe: 40 inputs" in table
