"""tunelab against TRL's SFTTrainer with PEFT, on one workload, in one go: throughput, peak memory, loss.

    make bench-trl        # or: python bench/vs_trl.py --trl-python .venv-trl/bin/python

The workload (issue 15): 64 variable-length chat examples (the first 64 of ../shared/data/instruct's
alpaca_en_demo.json), the embedded SmolLM2-135M-Instruct, LoRA r=16 alpha=32 on all linear layers, batch
8, max length 512, fp32, 1 epoch, loss on the answers only, lr 2e-4 cosine. TRL runs from its own
environment (`make bench-trl` builds `.venv-trl`; it is never a dependency of tunelab), tuned for a CPU:
fp32, no gradient checkpointing. Each side runs in a fresh process, so each peak RSS is its own.
Tokens/s counts real (unpadded) tokens over training time. The final loss is each trained adapter's mean
loss per answer token over the 64 examples, both scored by the same code. Not a pass/fail test.
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
trainer.save_model(out)  # the adapter, for the common final-loss evaluation
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
config = TrainConfig(model="default", data=data, out=out, method="lora",
                     options={"lora_r": int(r), "lora_alpha": int(alpha)}, batch_size=int(batch),
                     max_length=int(max_length), lr=float(lr),
                     epochs=1, precision="fp32", scheduler="cosine", warmup=0.05, seed=0)
summary = train(config).summary
losses = [m["loss"] for m in RunDir(out).read_metrics() if m.get("kind") == "train"]
print(json.dumps({"tokens_per_s": summary["tokens_per_s"], "seconds": summary["wall_time_s"],
                  "tokens": summary["trained_tokens"],
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "mean_loss": sum(losses) / len(losses), "steps": len(losses)}))
"""

# Both final adapters scored by the same code on the same tokens (the training set's answers): each side's
# logged step losses are means over differently composed batches (tunelab groups by length), so they are
# not comparable number for number. It also reports the workload's shape, for the FLOPs per token.
FINAL_LOSS = """
import json, sys
import torch
from tunelab.data import load_examples
from tunelab.data.tokenize import IGNORE_INDEX, encode_examples
from tunelab.inference import load_for_inference
from tunelab.models import load_tokenizer
from tunelab.objectives import get_objective
from tunelab.training.steps import evaluate_loss

data, max_length, *adapters = sys.argv[1:]
tokenizer = load_tokenizer("default")
items, _ = encode_examples(load_examples(data), tokenizer, int(max_length))
losses = []
for adapter in adapters:
    model, _ = load_for_inference("default", adapter)
    losses.append(evaluate_loss(model, items, 8, tokenizer.pad_token_id, torch.device("cpu"), "fp32",
                                get_objective("sft")).loss)
lengths = [len(item.input_ids) for item in items]
labelled = sum(label != IGNORE_INDEX for item in items for label in item.labels)
print(json.dumps({"losses": losses, "mean_context": sum(n * n / 2 for n in lengths) / sum(lengths),
                  "labelled_share": labelled / sum(lengths)}))
"""


def workload(path: Path, source: Path) -> Path:
    rows = json.loads(source.read_text())[:ROWS]
    with path.open("w") as f:
        for row in rows:
            user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def matmul_ceiling_gflops(size: int = 2048, repeats: int = 10) -> float:
    """This machine's fp32 matmul speed with torch's threads: the ceiling a training step could reach."""
    import time

    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def lora_flops_per_token(model_dir: str, mean_context: float, labelled_share: float) -> float:
    """Training FLOPs per token with frozen weights: forward 2 per weight, backward 2 more for the input's
    gradient (no weight gradient); attention's scores and sums over the causal context likewise; the head
    only on labelled positions. Recomputation (the chunked loss's head) is not counted, as in MFU; LoRA's
    own rank-16 products are under 2% and left out."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    per_layer = hidden * (2 * q + 2 * kv) + 3 * hidden * config.intermediate_size
    attention = 2 * 2 * mean_context * q  # QK^T and AV, per layer
    head = hidden * config.vocab_size
    return layers * (4 * per_layer + 3 * attention) + 4 * head * labelled_share


def run(python: str, script: str, args: list[str], env: dict | None = None) -> dict:
    done = subprocess.run([python, "-c", script, *map(str, args)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{python} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trl-python", default=".venv-trl/bin/python")
    parser.add_argument("--data", default="../shared/data/instruct/alpaca_en_demo.json")
    parser.add_argument(
        "--trl-huge-pages", action="store_true", help="give TRL the huge-page setting tunelab sets for itself"
    )
    args = parser.parse_args()
    from tunelab.models.loading import materialize, resolve

    model_dir = materialize(resolve("default"))  # the embedded model as safetensors, for TRL to load
    with tempfile.TemporaryDirectory() as tmp:
        data = workload(Path(tmp) / "chat.jsonl", Path(args.data))
        common = [R, ALPHA, BATCH, MAX_LENGTH, LR]
        ours = run(sys.executable, TUNELAB_SIDE, [data, Path(tmp) / "tunelab", *common])
        # TRL as its users run it: importing tunelab set THP_MEM_ALLOC_ENABLE here and in our children.
        trl_env = dict(os.environ)
        if not args.trl_huge_pages:
            trl_env.pop("THP_MEM_ALLOC_ENABLE", None)
        trl = run(args.trl_python, TRL_SIDE, [model_dir, data, Path(tmp) / "trl", *common], trl_env)
        final = run(sys.executable, FINAL_LOSS, [data, MAX_LENGTH, Path(tmp) / "tunelab", Path(tmp) / "trl"])
    ours["final_loss"], trl["final_loss"] = final["losses"]
    flops = lora_flops_per_token(model_dir, final["mean_context"], final["labelled_share"])
    ceiling = matmul_ceiling_gflops()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {ROWS} examples, LoRA r={R}, batch {BATCH}"
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
    reached = ours["tokens_per_s"] * flops / 1e9
    print(
        f"{flops / 1e6:.0f} MFLOP per trained token; fp32 matmul ceiling {ceiling:.0f} GFLOP/s; "
        f"tunelab reaches {reached:.0f} GFLOP/s ({100 * reached / ceiling:.0f}% of it)"
    )


if __name__ == "__main__":
    main()
