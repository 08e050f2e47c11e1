"""compare on preference pairs: when `--data` holds pairs (OpenAI DPO or TRL), the rows are

- `zero-shot`: the base model as it is (prompting);
- `sft`: LoRA learning the preferred answers, each pair a chat example (its prompt, then the chosen answer);
- `dpo`, `orpo` (and `ipo`, `simpo`): LoRA learning the pairs with that objective (`--objective`).

Every row is scored by `eval --task preference` on the test pairs. Reward accuracy and margin compare a
tuned model with its base, so the prompting row, the base itself, has neither; a row's quality is its own
preference accuracy (the chosen answer likelier than the rejected one), which every row has, with reward
accuracy and margin beside it.

The split files are TRL conversational pairs, the `--instruction` baked into each prompt's last user
message, so every row sees the same prompts; a plain-text pair becomes a one-user-message conversation
(tunelab's SFT learns through the chat template, and the rows must be scored as they learn).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.formats import FOUND, detect_format, kind_of
from ..data.preference import PreferencePair
from ..errors import UserError
from ..objectives import objectives_reading
from ..objectives.preference import load_pairs
from .config import CompareConfig

DEFAULT_ROWS = ["zero-shot", "sft", "dpo", "orpo"]
TUNING_METHOD = "lora"  # every tuned row's, so that the rows differ only in what they learn from


def holds_pairs(path: str) -> bool:
    """Whether a compare's `--data` is preference pairs; unpaired KTO data has no rows here."""
    kind = kind_of(detect_format(path))
    if kind == "unpaired":
        raise UserError(
            f"{path}: {FOUND['unpaired']}; compare reads supervised examples or preference pairs "
            "(train unpaired data with `tunelab train --objective kto`)"
        )
    return kind == "pairs"


def check_rows(config: CompareConfig) -> None:
    """Fail before anything runs: a row or option that means nothing on pairs."""
    rows = ("zero-shot", "sft", *objectives_reading("pairs"))
    unknown = [m for m in config.methods if m not in rows]
    if unknown:
        raise UserError(
            f"--methods: no row {', '.join(unknown)} on preference pairs; choose from {', '.join(rows)} "
            f"(zero-shot prompting, sft on the preferred answers, or {TUNING_METHOD} with a preference "
            "objective)"
        )
    if config.calibrate:
        raise UserError("--calibrate is for classification label words, not preference pairs")


def with_instruction(messages: list[dict], instruction: str | None) -> list[dict]:
    """A copy of `messages` whose last user message starts with `instruction` (as compare's supervised
    splits put it)."""
    messages = [dict(m) for m in messages]
    users = [m for m in messages if m["role"] == "user"]
    if instruction and users:
        users[-1]["content"] = f"{instruction}\n\n{users[-1]['content']}"
    return messages


def pair_record(pair: PreferencePair, instruction: str | None) -> dict:
    prompt = with_instruction(pair.prompt, instruction)
    return {"prompt": prompt, "chosen": [pair.chosen], "rejected": [pair.rejected]}


def chosen_example(record: dict) -> dict:
    """A pair as a chat example learning its chosen answer only (earlier assistant turns are context)."""
    context = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in record["prompt"]]
    return {"messages": [*context, *record["chosen"]]}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def write_pair_splits(config: CompareConfig, sources: dict[str, str], data_dir: Path) -> dict[str, Path]:
    """`train`, `val` and `test` pair files, and `sft_train`, `sft_val`: the same pairs as chat examples
    of their chosen answers, for the sft row."""
    paths = {}
    for name, source in sources.items():
        pairs = load_pairs(source)
        if name == "test" and config.limit:
            pairs = pairs[: config.limit]
        records = [pair_record(pair, config.instruction) for pair in pairs]
        paths[name] = write_jsonl(data_dir / f"{name}.jsonl", records)
        if name != "test":
            paths[f"sft_{name}"] = write_jsonl(
                data_dir / f"sft-{name}.jsonl", list(map(chosen_example, records))
            )
    return paths


def training_of(row: str, splits: dict) -> tuple[str, dict]:
    """The tuning method of a tuned row and the TrainConfig fields it sets beyond those every row shares."""
    if row == "sft":
        return TUNING_METHOD, {"objective": "sft", "data": [str(splits["sft_train"])],
                               "val": [str(splits["sft_val"])]}  # fmt: skip
    return TUNING_METHOD, {"objective": row}


def row_numbers(results: dict) -> dict:
    """A row's figures from its `eval --task preference` results: own preference accuracy as the quality,
    reward accuracy and margin (None for the base itself) beside it."""
    own = results["preference_accuracy"]
    margin = results["margin"] and {"value": results["margin"]["value"], "ci95": results["margin"]["ci95"]}
    return {"metric": "preference_accuracy", "value": own["value"], "ci95": own["ci95"],
            "reward_accuracy": results["reward_accuracy"], "margin": margin}  # fmt: skip


NOTE = (
    "Quality is each row's own preference accuracy: the share of test pairs whose chosen answer it finds "
    "likelier (summed log-probs). Reward accuracy (the chosen answer gained more over the base model than "
    "the rejected one, DPO's implicit reward) and the mean margin (nats of summed log-prob) compare a tuned "
    "row with the base, so zero-shot, the base itself, has neither."
)
