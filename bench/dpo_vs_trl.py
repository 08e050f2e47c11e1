"""tunelab's DPO against TRL's DPOTrainer with PEFT on one workload, in one go: throughput, memory, loss.

    make bench-trl-dpo    # or: python bench/dpo_vs_trl.py --trl-python .venv-trl/bin/python

The workload (issue 28): the first 320 sentences of ../shared/data/sst2's train.jsonl as preference pairs,
the right sentiment label preferred over the wrong one, as one conversational TRL pairs file that both sides
read; the embedded SmolLM2-135M-Instruct, LoRA r=16 alpha=32 dropout 0.05 on all linear layers, DPO sigmoid
loss beta 0.1, batch 8 pairs, max length 512, fp32, 1 epoch, lr 5e-5 cosine. Each side as its users run it:
TRL computes the reference log-probs in every step with the adapter disabled (its default); tunelab computes
them once before training, inside its timed `train` call. Each side runs in a fresh process, so each peak RSS
is its own. Tokens/s counts the pairs' real (unpadded) tokens, chosen and rejected rows, over each side's
training time. The final loss is each trained adapter's mean DPO loss over the pairs, its reference the base
model, both scored by the same code (tunelab's). Not a pass/fail test.
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

from vs_trl import matmul_ceiling_gflops, run

PAIRS, R, ALPHA, BATCH, MAX_LENGTH, LR, BETA = 320, 16, 32, 8, 512, 5e-5, 0.1
QUESTION = "Is the sentiment of this movie review positive or negative? Answer with one word.\n\n"
LABELS = ("negative", "positive")

TRL_SIDE = """
import json, resource, sys, time
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

model_dir, data, out, r, alpha, batch, max_length, lr, beta = sys.argv[1:10]
dataset = Dataset.from_list([json.loads(line) for line in open(data)])
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
config = DPOConfig(
    output_dir=out, per_device_train_batch_size=int(batch), num_train_epochs=1, max_length=int(max_length),
    learning_rate=float(lr), lr_scheduler_type="cosine", warmup_steps=0.05, bf16=False, fp16=False,
    gradient_checkpointing=False, use_cpu=True, logging_steps=1, save_strategy="no", report_to=[],
    beta=float(beta), loss_type=["sigmoid"], dataloader_num_workers=0, seed=0,
)
peft = LoraConfig(r=int(r), lora_alpha=int(alpha), lora_dropout=0.05, target_modules="all-linear",
                  task_type="CAUSAL_LM")
trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                     peft_config=peft)
tokens = sum(2 * len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"])
             for row in trainer.train_dataset)
start = time.perf_counter()
trainer.train()
seconds = time.perf_counter() - start
trainer.save_model(out)  # the adapter, for the common final-loss evaluation
losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
print(json.dumps({"tokens": tokens, "seconds": seconds,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "mean_loss": sum(losses) / len(losses), "steps": len(losses)}))
"""

TUNELAB_SIDE = """
import json, resource, sys, time
from tunelab.run_dir import RunDir
from tunelab.training import TrainConfig, train

data, out, r, alpha, batch, max_length, lr, beta = sys.argv[1:9]
config = TrainConfig(model="default", data=data, out=out, method="lora", objective="dpo", beta=float(beta),
                     options={"lora_r": int(r), "lora_alpha": int(alpha)}, batch_size=int(batch),
                     max_length=int(max_length), lr=float(lr),
                     epochs=1, precision="fp32", scheduler="cosine", warmup=0.05, seed=0)
start = time.perf_counter()
train(config)
seconds = time.perf_counter() - start
losses = [m["loss"] for m in RunDir(out).read_metrics() if m.get("kind") == "train"]
print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "mean_loss": sum(losses) / len(losses), "steps": len(losses)}))
"""

# Both final adapters scored by the same code on the same pairs: each side's logged step losses are means
# over differently composed batches, so they are not comparable number for number. It also counts the
# pairs' tokens as tunelab encodes them, beside TRL's own count.
FINAL_LOSS = """
import json, sys
import torch
from tunelab.inference import load_for_inference
from tunelab.objectives import get_objective
from tunelab.training import TrainConfig
from tunelab.training.steps import evaluate_loss

data, max_length, beta, *adapters = sys.argv[1:]
config = TrainConfig(objective="dpo", beta=float(beta), max_length=int(max_length))
dpo = get_objective("dpo").configure(config)
cpu = torch.device("cpu")
base, tokenizer = load_for_inference("default")
pairs, _ = dpo.encode(dpo.read(data, config), tokenizer, config)
dpo.attach_reference(pairs, dpo.prepare_reference(base, pairs, tokenizer.pad_token_id, 8, cpu, "fp32"))
losses = []
for adapter in adapters:
    model, _ = load_for_inference("default", adapter)
    losses.append(evaluate_loss(model, pairs, 8, tokenizer.pad_token_id, cpu, "fp32", dpo).loss)
tokens = sum(len(pair.chosen.input_ids) + len(pair.rejected.input_ids) for pair in pairs)
print(json.dumps({"losses": losses, "tokens": tokens}))
"""


def workload(path: Path, source: Path, pairs: int) -> Path:
    """The first `pairs` SST-2 sentences as conversational TRL pairs: the right label over the wrong one."""
    rows = [json.loads(line) for line in source.read_text().splitlines()[:pairs]]
    with path.open("w") as f:
        for row in rows:
            prompt = [{"role": "user", "content": QUESTION + row["text"]}]
            right, wrong = LABELS[row["label"]], LABELS[1 - row["label"]]
            pair = {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": right}],
                "rejected": [{"role": "assistant", "content": wrong}],
            }
            f.write(json.dumps(pair) + "\n")
    return path


def cpu_description() -> str:
    """The CPU's model name, and which of the AVX-512, bf16 and AMX instructions that decide a CPU's
    training speed it has."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = [flag for flag in ("avx512f", "avx512_bf16", "amx_bf16") if flag in flags]
    return f"{fields.get('Model name', '?').strip()}; {', '.join(wanted) or 'no avx512'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trl-python", default=".venv-trl/bin/python")
    parser.add_argument("--data", default="../shared/data/sst2/train.jsonl")
    parser.add_argument("--pairs", type=int, default=PAIRS)
    args = parser.parse_args()
    from tunelab.models.loading import materialize, resolve

    model_dir = materialize(resolve("default"))  # the embedded model as safetensors, for TRL to load
    with tempfile.TemporaryDirectory() as tmp:
        data = workload(Path(tmp) / "pairs.jsonl", Path(args.data), args.pairs)
        common = [R, ALPHA, BATCH, MAX_LENGTH, LR, BETA]
        ours = run(sys.executable, TUNELAB_SIDE, [data, Path(tmp) / "tunelab", *common])
        # TRL as its users run it: importing tunelab set THP_MEM_ALLOC_ENABLE here and in our children.
        trl_env = {key: value for key, value in os.environ.items() if key != "THP_MEM_ALLOC_ENABLE"}
        trl = run(args.trl_python, TRL_SIDE, [model_dir, data, Path(tmp) / "trl", *common], trl_env)
        final = run(
            sys.executable, FINAL_LOSS, [data, MAX_LENGTH, BETA, Path(tmp) / "tunelab", Path(tmp) / "trl"]
        )
    ours["final_loss"], trl["final_loss"] = final["losses"]
    for side in (ours, trl):
        side["tokens_per_s"] = trl["tokens"] / side["seconds"]  # TRL's count of the same pairs' tokens
    ceiling = matmul_ceiling_gflops()
    print(f"machine: {cpu_description()}; {os.cpu_count()} cores; fp32 matmul {ceiling:.0f} GFLOP/s")
    print(
        f"{args.pairs} SST-2 pairs, {trl['tokens']} tokens (tunelab counts {final['tokens']}), LoRA r={R}, "
        f"batch {BATCH}, beta {BETA}"
    )
    print(
        f"{'':<10}{'tokens/s':>10}{'peak RSS MB':>13}{'final loss':>12}{'mean step loss':>16}{'steps':>7}"
        f"{'train s':>9}"
    )
    for name, side in (("tunelab", ours), ("TRL", trl)):
        print(
            f"{name:<10}{side['tokens_per_s']:>10.1f}{side['peak_mb']:>13.0f}{side['final_loss']:>12.4f}"
            f"{side['mean_loss']:>16.4f}{side['steps']:>7}{side['seconds']:>9.1f}"
        )
    print(
        f"tunelab / TRL: throughput {ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x, "
        f"peak memory {ours['peak_mb'] / trl['peak_mb']:.2f}x, "
        f"final loss {100 * (ours['final_loss'] / trl['final_loss'] - 1):+.1f}%"
    )


if __name__ == "__main__":
    main()
