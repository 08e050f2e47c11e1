"""Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath), as TRL 1.16's GRPOTrainer
defines it by default: learning from a reward instead of from answers to imitate.

Each optimizer step samples `generations` answers to each of its prompts from the model being trained,
grades them (the run's grader: `Rollout.grade`), and gives each answer its group-relative advantage, its
reward minus the mean of its prompt's group divided by the group's standard deviation (+1e-4). The loss on
every answer token is the clipped surrogate -min(r A, clip(r, 1-epsilon, 1+epsilon) A), r the token's
probability ratio to the policy that sampled it, plus `beta` times the k3 estimate of the KL divergence
to the start (the base with the adapter disabled, TRL's reference for PEFT models) times r when beta > 0
(TRL's default bias correction), the log-probs taken at the sampling temperature as TRL takes them; summed
over the step's answer tokens and divided by their count (TRL's default `dapo` loss). One update per
sample (TRL's num_iterations=1), so r is 1 in value and the clip never bites; it is kept so that the
gradient is the paper's.

Sampling and grading live in the layers above (inference/rollout.py, graders/): whoever builds the run
hands them in as a `Rollout` (`with_rollout`); `tunelab train --grader` and the service do.

Validation has no loss to compute: it answers each val prompt once, greedily, and its "loss" is minus the
mean reward, so the best checkpoint and early stopping follow the reward (logged as `val_reward`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..data import load_examples
from ..data.batching import collate, split_by_tokens
from ..data.tokenize import IGNORE_INDEX, EncodedExample
from ..ops import autocast, prefix_tokens, token_logps, virtual_tokens
from ..options import ConfigError
from .base import Objective, add_stats, probe_ids, register

STD_FLOOR = 1e-4  # TRL's: a group whose answers all score the same gets advantage 0, not a division by 0


@dataclass
class EncodedPrompt:
    input_ids: list[int]  # the prompt through the chat template, ending where the model answers
    item: dict  # the line as graders see it (`item`): its messages and every other field
    truncated: bool = False


@dataclass
class Grades:
    rewards: list[float]
    sub_rewards: dict[str, list[float]]  # each named sub-grader's reward per answer (a `multi` grader's)
    errors: list[str | None]  # why an answer was given 0, per answer


@dataclass
class Rollout:
    """What GRPO takes from the layers above it. `sample(model, prompts, n, max_new_tokens, temperature,
    stop_ids) -> answers` (inference/rollout.py `sample_groups`); `grade(texts, items) -> Grades`."""

    sample: Callable[..., list[list[int]]]
    grade: Callable[[list[str], list[dict]], Grades]


@dataclass
class AnswerRow(EncodedExample):
    """A prompt and one sampled answer, labelled on the answer, with what the loss and the log need."""

    advantage: float = 0.0
    reward: float = 0.0
    group_std: float = 0.0
    sub_rewards: list[float] = field(default_factory=list)
    failed: bool = False  # the grader erred on it


class GroupRelativePolicyOptimization(Objective):
    name = "grpo"
    data_kind = "prompts"
    samples = True
    disables_dropout = True  # the sampling policy and the trained one must be the same function
    options = ("beta", "epsilon", "generations", "sampling_temperature", "max_completion_tokens")
    default_beta = 0.0  # TRL's: no reference model unless asked for
    rollout: Rollout | None = None
    tokenizer = None  # the one `encode` was given: it decodes the answers for the grader
    sub_reward_names: tuple[str, ...] = ()

    def with_rollout(self, rollout: Rollout, sub_reward_names: tuple[str, ...] = ()):
        ready = copy.copy(self)
        ready.rollout, ready.sub_reward_names = rollout, sub_reward_names
        return ready

    def configure(self, config):
        if self.rollout is None:
            raise ConfigError(
                "grpo learns from a grader's rewards: give one with `tunelab train --objective grpo --grader "
                "grader.json` (a service job: method reinforcement; Python: train(config, objective="
                "objective_with_grader(config)), from tunelab.graders.reinforcement)",
                key="grader",
            )
        configured = super().configure(config)
        if configured.beta is None:
            configured.beta = self.default_beta
        if config.max_length <= configured.max_completion_tokens:
            raise ConfigError(
                f"max_length {config.max_length} leaves no room for a prompt before max_completion_tokens "
                f"{configured.max_completion_tokens}; raise max_length or lower max_completion_tokens",
                key="max_length",
            )
        return configured

    def read(self, path, config):
        return load_examples(path, format=config.format, for_training=False)

    def encode(self, records, tokenizer, config):
        self.tokenizer = tokenizer
        room = config.max_length - self.max_completion_tokens
        items = []
        for example in records:
            messages = example.messages
            if messages[-1]["role"] == "assistant":  # a reference answer: the grader's, not the prompt's
                messages = messages[:-1]
            ids = prompt_ids(tokenizer, messages)
            item = {**example.meta, "messages": example.messages}
            items.append(EncodedPrompt(ids[-room:], item, truncated=len(ids) > room))
        stats = {"examples": len(items), "dropped_no_labels": 0, "truncated": sum(i.truncated for i in items)}
        return items, stats

    def length(self, item: EncodedPrompt) -> int:
        return len(item.input_ids) + self.max_completion_tokens

    def loss(self, model, batch, normaliser):
        return self.loss_with_stats(model, batch, normaliser)[0]

    def step_batches(self, model, item_batches, pad_id, max_tokens, precision):
        """Samples and grades the step's answers, then cuts the answer rows into micro-batches."""
        prompts = [item for items in item_batches for item in items]
        device = next(model.parameters()).device
        with autocast(device, precision):
            rows = self.answer_rows(model, prompts, self.generations, self.sampling_temperature)
        if max_tokens:
            lengths = [len(row.input_ids) for row in rows]
            cuts = split_by_tokens(list(range(len(rows))), lengths, max_tokens)
        else:  # micro-batches of as many rows as the plan's had prompts: the memory it was planned for
            size = max(len(items) for items in item_batches)
            cuts = [list(range(start, min(start + size, len(rows)))) for start in range(0, len(rows), size)]
        batches = [self.collate_rows([rows[i] for i in cut], pad_id) for cut in cuts]
        if self.beta:
            for batch in batches:
                with autocast(device, precision):  # as the policy's, or their KL starts above 0
                    batch["reference_logps"] = self.reference_logps(model, batch)
        return batches

    def answer_rows(self, model, prompts: list[EncodedPrompt], n: int, temperature: float) -> list[AnswerRow]:
        """`n` answers to each prompt, graded, each with its group-relative advantage."""
        answers = self.rollout.sample(
            model, [p.input_ids for p in prompts], n, self.max_completion_tokens, temperature,
            stop_ids(model, self.tokenizer),
        )  # fmt: skip
        texts = self.tokenizer.batch_decode(answers, skip_special_tokens=True)
        grades = self.rollout.grade([t.strip() for t in texts], [p.item for p in prompts for _ in range(n)])
        rewards = torch.tensor(grades.rewards, dtype=torch.float64)
        failed = torch.tensor([error is not None for error in grades.errors])
        advantages, stds = group_advantages(rewards, n, failed) if n > 1 else (rewards * 0, rewards * 0)
        rows = []
        for k, answer in enumerate(answers):
            prompt = prompts[k // n].input_ids
            subs = [grades.sub_rewards[name][k] for name in self.sub_reward_names]
            rows.append(
                AnswerRow(
                    prompt + answer, [IGNORE_INDEX] * len(prompt) + answer, advantage=float(advantages[k]),
                    reward=grades.rewards[k], group_std=float(stds[k]), sub_rewards=subs,
                    failed=grades.errors[k] is not None,
                )
            )  # fmt: skip
        return rows

    def collate_rows(self, rows: list[AnswerRow], pad_id: int) -> dict[str, torch.Tensor]:
        batch = collate(rows, pad_id)
        batch["advantages"] = torch.tensor([row.advantage for row in rows], dtype=torch.float64)
        batch["rewards"] = torch.tensor([row.reward for row in rows], dtype=torch.float64)
        batch["group_stds"] = torch.tensor([row.group_std for row in rows], dtype=torch.float64)
        batch["failed"] = torch.tensor([row.failed for row in rows], dtype=torch.float64)
        if self.sub_reward_names:
            batch["sub_rewards"] = torch.tensor([row.sub_rewards for row in rows], dtype=torch.float64)
        return batch

    def check_model(self, model) -> None:
        if self.beta and not hasattr(model, "disable_adapter"):
            raise ConfigError(
                "grpo with beta > 0 compares with the base model, which only PEFT's adapters (lora and its "
                "kind, ia3) can switch back to without a second copy; use one, or beta 0",
                key="beta",
            )
        if prefix_tokens(model) or virtual_tokens(model):
            raise ConfigError(
                "grpo samples its answers with a shared prompt cache that prompt and prefix tuning's virtual "
                "tokens do not fit yet; use lora (the default) or another method that changes weights",
                key="method",
            )

    def reference_logps(self, model, batch) -> torch.Tensor:
        """The start's log-probs of the answer tokens: the base with the adapter switched off."""
        device = next(model.parameters()).device
        on_device = {key: value.to(device) for key, value in batch.items()}
        labels = on_device["labels"][:, 1:]
        with torch.no_grad(), model.disable_adapter():
            wanted, targets = labels != IGNORE_INDEX, labels.clamp_min(0)
            return token_logps(model, on_device, wanted, targets, self.sampling_temperature).cpu()

    def loss_with_stats(self, model, batch, normaliser):
        labels = batch["labels"][:, 1:]
        wanted = labels != IGNORE_INDEX
        logps = token_logps(model, batch, wanted, labels.clamp_min(0), self.sampling_temperature)  # (B, T-1)
        ratio = torch.exp(logps - logps.detach())  # 1 in value: one update per sample
        advantages = batch["advantages"].to(logps.dtype)[:, None]
        clipped = ratio.clamp(1 - self.epsilon, 1 + self.epsilon)
        per_token = -torch.min(ratio * advantages, clipped * advantages)
        stats = self.answer_stats(batch, wanted)
        if self.beta:
            log_ratio = batch["reference_logps"].to(logps.dtype) - logps
            kl = torch.exp(log_ratio) - log_ratio - 1
            # times the ratio (1 in value), as TRL's default use_bias_correction_kl: its gradient is then
            # the unbiased reverse-KL gradient (DeepSeek-V3.2)
            per_token = per_token + self.beta * kl * ratio
            stats["kl"] = (float((kl.detach() * wanted).sum()), int(wanted.sum()))
        stats["clip_ratio"] = (float(((ratio != clipped) & wanted).sum()), int(wanted.sum()))
        return (per_token * wanted).sum() / normaliser, stats

    def answer_stats(self, batch, wanted) -> dict:
        """What TRL logs of a GRPO step, as (sum, count) over the batch's answers."""
        rows = len(batch["rewards"])
        stats = {
            "reward": (float(batch["rewards"].sum()), rows),
            "reward_std": (float(batch["group_stds"].sum()), rows),
            "frac_reward_zero_std": (float((batch["group_stds"] == 0).sum()), rows),
            "completions/mean_length": (float(wanted.sum()), rows),
            "grader_error_rate": (float(batch["failed"].sum()), rows),
        }
        for k, name in enumerate(self.sub_reward_names):
            stats[f"rewards/{name}"] = (float(batch["sub_rewards"][:, k].sum()), rows)
        return stats

    def evaluate(self, model, items, batch_size, pad_id, device, precision):
        """Each prompt answered once, greedily, and graded: "loss" is minus the summed reward."""
        totals: dict = {}
        for start in range(0, len(items), batch_size):
            with autocast(device, precision):
                rows = self.answer_rows(model, items[start : start + batch_size], 1, temperature=0.0)
            batch = self.collate_rows(rows, pad_id)
            stats = self.answer_stats(batch, batch["labels"][:, 1:] != IGNORE_INDEX)
            del stats["reward_std"], stats["frac_reward_zero_std"]  # one answer per prompt: no group
            add_stats(totals, stats)
        return -totals.get("reward", (0.0, 0))[0], len(items), totals

    def probe_batch(self, length: int, vocab: int) -> dict[str, torch.Tensor]:
        """One answer row of `length` tokens, every one an answer token (the loss's worst case)."""
        ids = probe_ids(length, vocab)
        batch = self.collate_rows([AnswerRow(ids, ids, sub_rewards=[0.0] * len(self.sub_reward_names))], 0)
        if self.beta:
            batch["reference_logps"] = torch.zeros(1, length - 1, dtype=torch.float64)
        return batch


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The conversation through the chat template, ending where the model answers (as generation reads it)."""
    text = tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages], tokenize=False,
        add_generation_prompt=True,
    )  # fmt: skip
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stop_ids(model, tokenizer) -> set[int]:
    """The tokens that end an answer: the tokenizer's EOS and the model's generation config's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    configured = configured if isinstance(configured, list) else [configured]
    return {token for token in [tokenizer.eos_token_id, *configured] if token is not None}


def group_advantages(
    rewards: torch.Tensor, n: int, failed: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantage, the group's standard deviation) per answer; groups are `n` consecutive answers. The
    standard deviation is the unbiased one, as TRL's. An answer the grader `failed` on stays out of its
    group's mean and deviation and gets advantage 0 (TRL's unscorable completions): a grader's outage is
    not a verdict on the answer."""
    grouped = rewards.masked_fill(failed, float("nan")) if failed is not None else rewards
    grouped = grouped.view(-1, n)
    mean = grouped.nanmean(dim=1, keepdim=True)
    counted = (~grouped.isnan()).sum(dim=1, keepdim=True)
    variance = ((grouped - mean) ** 2).nansum(dim=1, keepdim=True) / (counted - 1).clamp_min(1)
    std = torch.where(counted > 1, variance.sqrt(), torch.zeros_like(variance)).expand_as(grouped)
    advantages = ((grouped - mean) / (std + STD_FLOOR)).nan_to_num(0.0)
    return advantages.flatten(), std.flatten()


register(GroupRelativePolicyOptimization())
