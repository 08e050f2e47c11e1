"""Batched generation (left padding, KV cache) against one `generate` call per example, embedded model;
then reinforcement fine-tuning's sampling: 8 prompts x 8 answers x 32 tokens at temperature 1 from the
model with a fresh LoRA on it, as a GRPO step samples them (completions/s).

python bench/generation_speed.py --n 32 --max-new-tokens 32
"""

import argparse
import time

import torch
from peft import LoraConfig, get_peft_model
from serve_batching import machine

from tunelab.demo import make_examples
from tunelab.inference import generate, load_for_inference
from tunelab.inference.generation import chat_prompt_ids
from tunelab.inference.rollout import sample_groups
from tunelab.ops import autocast, pick_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    model, tokenizer = load_for_inference("default")
    print(f"machine: {machine()}")
    conversations = [e.messages[:-1] for e in make_examples(args.n, seed=0)]
    timings = {}
    for name, batch_size in (("batched", args.batch_size), ("one by one", 1)):
        start = time.perf_counter()
        outputs = generate(
            model, tokenizer, conversations, max_new_tokens=args.max_new_tokens, batch_size=batch_size
        )
        timings[name] = time.perf_counter() - start
        print(f"{name:>10}: {timings[name]:6.1f} s for {len(outputs)} examples")
    print(f"speed-up: {timings['one by one'] / timings['batched']:.1f}x")
    rl_sampling(model, tokenizer, conversations[:8])


def rl_sampling(model, tokenizer, conversations: list[list[dict]], n: int = 8, tokens: int = 32) -> None:
    policy = get_peft_model(model, LoraConfig(r=16, target_modules="all-linear"))
    prompts = [chat_prompt_ids(tokenizer, conversation) for conversation in conversations]
    precision = pick_precision("auto")
    torch.manual_seed(0)
    with autocast(policy.device, precision):  # as `objectives/grpo.py` samples
        sample_groups(policy, prompts[:1], 2, 4, 1.0, {tokenizer.eos_token_id})  # warm-up
        start = time.perf_counter()
        answers = sample_groups(policy, prompts, n, tokens, 1.0, {tokenizer.eos_token_id})
    seconds = time.perf_counter() - start
    print(
        f"RL sampling, {len(prompts)} prompts x {n} answers x up to {tokens} tokens ({precision}): "
        f"{seconds:.1f} s, {len(answers) / seconds:.1f} completions/s, "
        f"{sum(map(len, answers)) / seconds:.0f} tokens/s"
    )


if __name__ == "__main__":
    main()
