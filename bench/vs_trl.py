"""tunelab against TRL's SFTTrainer with PEFT, on one workload, in one go: throughput, peak memory, loss.

    make bench-trl        # or: python bench/vs_trl.py --trl-python .venv-trl/bin/python

The workload (issue 15): 64 variable-length chat examples (the first 64 of ../shared/data/instruct's
alpaca_en_demo.json), the embedded SmolLM2-135M-Instruct, LoRA r=16 alpha=32 on all linear layers, batch
8, max length 512, fp32, 1 epoch, loss on the answers only, lr 2e-4 cosine. TRL runs from its own
environment (`make bench-trl` builds `.venv-trl`; it is never a dependency of tunelab), tuned for a CPU:
fp32, no gradient checkpointing. Each side runs in a fresh process, so each peak RSS is its own.
Tokens/s counts real (unpadded) tokens over training time. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROWS, R, ALPHA, BATCH, MAX_LENGTH, LR = 64, 16, 32, 8, 512, 2e-4

TRL_SIDE = """
import json, resource, sys, time
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer

model_dir, data, out, r, alpha, batch, max_length, lr = sys.argv[1:9]
rows = [json.loads(line) for line in open(data)]
pairs = [{"prompt": row["messages"][:-1], "completion": row["messages"][-1:]} for row in rows]
dataset = Dataset.from_list(pairs)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
config = SFTConfig(
    output_dir=out, per_device_train_batch_size=int(batch), num_train_epochs=1, max_length=int(max_length),
    learning_rate=float(lr), lr_scheduler_type="cosine", warmup_steps=0.05, bf16=False, fp16=False,
    gradient_checkpointing=False, use_cpu=True, logging_steps=1, save_strategy="no", report_to=[],
    completion_only_loss=True, dataloader_num_workers=0, seed=0,
)
peft = LoraConfig(r=int(r), lora_alpha=int(alpha), lora_dropout=0.05, target_modules="all-linear",
                  task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                     peft_config=peft)
tokens = sum(sum(example["attention_mask"]) if "attention_mask" in example else len(example["input_ids"])
             for example in trainer.train_dataset)
start = time.perf_counter()
result = trainer.train()
seconds = time.perf_counter() - start
losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
print(json.dumps({"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "mean_loss": sum(losses) / len(losses), "steps": len(losses)}))
"""

TUNELAB_SIDE = """
import json, resource, sys
from tunelab.run_dir import RunDir
from tunelab.training import TrainConfig, train

data, out, r, alpha, batch, max_length, lr = sys.argv[1:8]
config = TrainConfig(model="default", data=data, out=out, method="lora", lora_r=int(r),
                     lora_alpha=int(alpha), batch_size=int(batch), max_length=int(max_length), lr=float(lr),
                     epochs=1, precision="fp32", scheduler="cosine", warmup=0.05, seed=0)
summary = train(config).summary
losses = [m["loss"] for m in RunDir(out).read_metrics() if m.get("kind") == "train"]
print(json.dumps({"tokens_per_s": summary["tokens_per_s"], "seconds": summary["wall_time_s"],
                  "tokens": summary["trained_tokens"],
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "mean_loss": sum(losses) / len(losses), "steps": len(losses)}))
"""


def workload(path: Path, source: Path) -> Path:
    rows = json.loads(source.read_text())[:ROWS]
    with path.open("w") as f:
        for row in rows:
            user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def run(python: str, script: str, args: list[str]) -> dict:
    done = subprocess.run([python, "-c", script, *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{python} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trl-python", default=".venv-trl/bin/python")
    parser.add_argument("--data", default="../shared/data/instruct/alpaca_en_demo.json")
    args = parser.parse_args()
    from tunelab.models.loading import materialize, resolve

    model_dir = materialize(resolve("default"))  # the embedded model as safetensors, for TRL to load
    with tempfile.TemporaryDirectory() as tmp:
        data = workload(Path(tmp) / "chat.jsonl", Path(args.data))
        common = [R, ALPHA, BATCH, MAX_LENGTH, LR]
        ours = run(sys.executable, TUNELAB_SIDE, [data, Path(tmp) / "tunelab", *common])
        trl = run(args.trl_python, TRL_SIDE, [model_dir, data, Path(tmp) / "trl", *common])
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {ROWS} examples, LoRA r={R}, batch {BATCH}"
    )
    print(f"{'':<10}{'tokens/s':>10}{'peak RSS MB':>13}{'mean loss':>11}{'steps':>7}{'train s':>9}")
    for name, side in (("tunelab", ours), ("TRL", trl)):
        print(
            f"{name:<10}{side['tokens_per_s']:>10.1f}{side['peak_mb']:>13.0f}{side['mean_loss']:>11.4f}"
            f"{side['steps']:>7}{side['seconds']:>9.1f}"
        )
    print(
        f"tunelab / TRL: throughput {ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x, "
        f"peak memory {ours['peak_mb'] / trl['peak_mb']:.2f}x, "
        f"mean loss {100 * (ours['mean_loss'] / trl['mean_loss'] - 1):+.1f}%"
    )


if __name__ == "__main__":
    main()
