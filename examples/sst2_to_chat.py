"""Turn SST-2 rows (`text`, `label` 0/1) into chat JSONL: user = sentence, assistant = positive/negative;
with `--pairs`, into OpenAI DPO pairs: the right label preferred over the wrong one.

python examples/sst2_to_chat.py ../shared/data/sst2/train.jsonl sst2_chat.jsonl --rows 200
python examples/sst2_to_chat.py ../shared/data/sst2/train.jsonl sst2_pairs.jsonl --rows 500 --pairs
"""

import argparse
import json

LABELS = {0: "negative", 1: "positive"}


def record(row: dict, instruction: str, pairs: bool) -> dict:
    prompt = [{"role": "user", "content": f"{instruction}\n\n{row['text']}"}]
    label = int(row["label"])
    right = {"role": "assistant", "content": LABELS[label]}
    if not pairs:
        return {"messages": [*prompt, right]}
    wrong = {"role": "assistant", "content": LABELS[1 - label]}
    return {"input": {"messages": prompt}, "preferred_output": [right], "non_preferred_output": [wrong]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--pairs", action="store_true", help="write OpenAI DPO pairs instead of chats")
    parser.add_argument(
        "--instruction", default="Is the sentiment of this movie review positive or negative?"
    )
    args = parser.parse_args()
    with open(args.source) as src, open(args.out, "w") as dst:
        for n, line in enumerate(src):
            if n >= args.rows:
                break
            dst.write(json.dumps(record(json.loads(line), args.instruction, args.pairs)) + "\n")


if __name__ == "__main__":
    main()
