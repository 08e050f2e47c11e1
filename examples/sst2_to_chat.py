"""Turn SST-2 rows (`text`, `label` 0/1) into chat JSONL: user = sentence, assistant = positive/negative.

python examples/sst2_to_chat.py ../shared/data/sst2/train.jsonl sst2_chat.jsonl --rows 200
"""

import argparse
import json

LABELS = {0: "negative", 1: "positive"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument(
        "--instruction", default="Is the sentiment of this movie review positive or negative?"
    )
    args = parser.parse_args()
    with open(args.source) as src, open(args.out, "w") as dst:
        for n, line in enumerate(src):
            if n >= args.rows:
                break
            row = json.loads(line)
            messages = [
                {"role": "user", "content": f"{args.instruction}\n\n{row['text']}"},
                {"role": "assistant", "content": LABELS[int(row["label"])]},
            ]
            dst.write(json.dumps({"messages": messages}) + "\n")


if __name__ == "__main__":
    main()
