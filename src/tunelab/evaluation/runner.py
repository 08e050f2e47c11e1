"""`tunelab eval`: one function per task type, all returning (summary, per-example rows).

generation      generate answers, score them with text metrics (or extracted numbers/labels)
classification  score each label word's likelihood after the prompt; accuracy, F1, calibration
multiple-choice MMLU or JSONL questions scored as lm-evaluation-harness does (letter or cloze mode)
perplexity      mean next-token loss over packed blocks of text
preference      (preference.py) pairs' answers scored by the tuned model and its base: reward accuracy
"""

from __future__ import annotations

import math
import os

import torch

from ..data import Example, load_documents, load_examples, name_labels
from ..data.batching import collate
from ..data.tokenize import encode_documents
from ..errors import UserError
from ..inference.classification import classify
from ..inference.generation import chat_prompt_ids, classifies, generate
from ..ops import causal_lm_loss
from . import benchmarks, extraction, metrics
from .config import EvalConfig
from .prompting import PromptStyle, build_messages, pick_shots
from .scoring import score_candidates, score_continuations

CONTENT_FREE = ("N/A", "", "[MASK]")  # the content-free inputs of Zhao et al. (2021), averaged


def question_and_answer(example: Example) -> tuple[str, str | None, str | None]:
    """(last user message, final assistant answer or None, system message or None)."""
    messages = example.messages
    answer = messages[-1]["content"] if messages[-1]["role"] == "assistant" else None
    question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    return question, answer, system


def shot_pool(examples: list[Example], config: EvalConfig) -> list[Example]:
    """Where exemplars come from: `shots_from`, else the evaluated examples (never one's own)."""
    if not config.shots_from:
        return examples
    pool = load_examples(config.shots_from)
    return name_labels(pool, config.labels) if config.labels else pool


def prompts_for(examples: list[Example], config: EvalConfig, style: PromptStyle) -> list[list[dict]]:
    pool = shot_pool(examples, config)
    prompts = []
    for i, example in enumerate(examples):
        question, _, system = question_and_answer(example)
        shots = pick_shots(pool, config.shots, config.seed, exclude=None if config.shots_from else i)
        pairs = [question_and_answer(shot)[:2] for shot in shots]
        prompts.append(build_messages(question, pairs, style, system))
    return prompts


def read_examples(config: EvalConfig) -> list[Example]:
    if not config.data:
        raise UserError(f"--data is required for --task {config.task}")
    examples = load_examples(config.data, for_training=False)
    if config.labels:
        examples = name_labels(examples, config.labels)
    return examples[: config.limit] if config.limit else examples


def eval_generation(model, tokenizer, config: EvalConfig):
    examples = read_examples(config)
    style = PromptStyle(config.shots, config.cot, config.instruction, config.seed)
    prompts = prompts_for(examples, config, style)
    outputs = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        seed=config.seed,
    )
    references = [question_and_answer(e)[1] or "" for e in examples]
    predictions = outputs
    if config.answer == "number":
        predictions = [extraction.extract_number(o) or "" for o in outputs]
        references = [extraction.extract_number(r) or "" for r in references]
    elif config.answer == "label":
        labels = config.labels or sorted(set(references))
        predictions = [extraction.extract_label(o, labels) or "" for o in outputs]
    names = config.metrics or (["exact_match"] if config.answer else ["rouge", "bleu", "exact_match"])
    summary = metrics.score(names, predictions, references)
    rows = [
        {"line": e.line, "output": o, "prediction": p, "reference": r}
        for e, o, p, r in zip(examples, outputs, predictions, references, strict=True)
    ]
    return summary, rows, prompts


def classification_probs(model, tokenizer, examples, config: EvalConfig, labels: list[str]):
    instruction = config.instruction
    if instruction is None:  # "" means: the questions already carry their instruction
        instruction = f"Classify the text. Answer with one of: {', '.join(labels)}."
    style = PromptStyle(config.shots, False, instruction, config.seed)
    prompts = prompts_for(examples, config, style)
    if classifies(config.model, config.adapter):  # a trained head (--method head) gives probabilities
        if config.calibrate:
            raise UserError("--calibrate is for label words scored after a prompt, not a classification head")
        if list(model.labels) != list(labels):
            raise UserError(f"the head's labels {model.labels} differ from {labels}")
        rows = classify(
            model, tokenizer, examples, batch_size=config.batch_size, max_length=config.max_length
        )
        return torch.tensor([[row["probs"][label] for label in labels] for row in rows]).log(), prompts
    scores = score_candidates(model, tokenizer, prompts, labels, config.batch_size, config.max_length)
    if config.calibrate == "contextual":
        free = content_free_probs(model, tokenizer, examples, config, style, labels)
        scores = scores.log_softmax(-1) - free.log()
    return scores, prompts  # (N, C) log-likelihoods: the logits of a classifier over the label words


def content_free_probs(model, tokenizer, examples, config: EvalConfig, style, labels) -> torch.Tensor:
    """(C,) the label distribution the prompt alone implies: the mean over content-free inputs of the
    label probabilities (renormalised over the labels). Dividing by it removes the prompt's prior (Zhao et
    al. 2021, "Calibrate before use"); it costs one forward pass per content-free input.

    A content-free input keeps what every question shares up to a line break (an instruction baked into
    the data, as `compare` does) and replaces the rest; the exemplars are the first example's."""
    questions = [question_and_answer(e)[0] for e in examples]
    shared = os.path.commonprefix(questions)
    shared = shared[: shared.rfind("\n") + 1]
    shots = pick_shots(shot_pool(examples, config), config.shots, config.seed)
    pairs = [question_and_answer(shot)[:2] for shot in shots]
    system = question_and_answer(examples[0])[2] if examples else None
    prompts = [build_messages(shared + text, pairs, style, system) for text in CONTENT_FREE]
    scores = score_candidates(model, tokenizer, prompts, labels, config.batch_size, config.max_length)
    return scores.softmax(-1).mean(0)


def eval_classification(model, tokenizer, config: EvalConfig, out_dir=None):
    from . import calibration

    examples = read_examples(config)
    references = [question_and_answer(e)[1] for e in examples]
    labels = config.labels or sorted(set(references))
    scores, prompts = classification_probs(model, tokenizer, examples, config, labels)
    predictions = [labels[i] for i in scores.argmax(-1).tolist()]
    summary = metrics.score(config.metrics or ["accuracy", "macro_f1"], predictions, references)
    summary["report"] = metrics.classification_report(predictions, references, labels)
    summary["calibrate"] = config.calibrate
    targets = [labels.index(r) if r in labels else -1 for r in references]
    known = [i for i, t in enumerate(targets) if t >= 0]
    if known:
        probs = scores[known].softmax(-1)
        summary["calibration"] = calibration.expected_calibration_error(probs, [targets[i] for i in known])
        if out_dir is not None:
            path = calibration.reliability_diagram(
                probs, [targets[i] for i in known], out_dir / "reliability.png"
            )
            summary["calibration"]["diagram"] = str(path)
    if config.val and known:
        val_config = EvalConfig(**{**config.__dict__, "data": config.val, "limit": None})
        val_examples = read_examples(val_config)
        val_scores, _ = classification_probs(model, tokenizer, val_examples, val_config, labels)
        val_targets = [labels.index(question_and_answer(e)[1]) for e in val_examples]
        summary["temperature_scaling"] = calibration.calibration_report(
            val_scores, val_targets, scores[known], [targets[i] for i in known], out_dir
        )
    rows = [
        {
            "line": e.line,
            "prediction": p,
            "reference": r,
            "probs": dict(zip(labels, s.softmax(-1).tolist(), strict=True)),
        }
        for e, p, r, s in zip(examples, predictions, references, scores, strict=True)
    ]
    return summary, rows, prompts


def eval_multiple_choice(model, tokenizer, config: EvalConfig):
    """Accuracy (and, in cloze mode, length-normalised accuracy) on a multiple-choice benchmark, with the
    prompts, tokenisation and metrics of lm-evaluation-harness; plain text, no chat template."""
    if not config.benchmark:
        raise UserError("--task multiple-choice needs --benchmark mmlu:PATH or mc:FILE.jsonl")
    mode = config.mode
    questions = benchmarks.stratified_sample(benchmarks.read_questions(config.benchmark), config.limit,
                                             config.seed)  # fmt: skip
    shots = benchmarks.exemplars(config.benchmark, questions, config.shots, config.shots_from)
    contexts = [benchmarks.context(q, s, mode) for q, s in zip(questions, shots, strict=True)]
    options = [[f" {option}" for option in q.scored(mode)] for q in questions]
    scores = score_continuations(model, tokenizer, contexts, options, config.batch_size, config.max_length)
    picks = [max(range(len(row)), key=row.__getitem__) for row in scores]
    summary = metrics.score(["accuracy"], picks, [q.answer for q in questions])
    summary |= {"mode": mode, "format": "lm-evaluation-harness", "shots": config.shots}
    lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in contexts[:200]]
    summary["prompt_tokens_mean"] = sum(lengths) / len(lengths)
    if mode == "cloze":  # the harness's acc_norm: log-likelihood per character of the option
        normed = [max(range(len(row)), key=lambda j, row=row, q=q: row[j] / len(q.options[j]))
                  for row, q in zip(scores, questions, strict=True)]  # fmt: skip
        correct_norm = [pick == q.answer for pick, q in zip(normed, questions, strict=True)]
        summary["acc_norm"] = sum(correct_norm) / len(correct_norm)
    by_subject: dict[str, list[bool]] = {}
    for q, pick in zip(questions, picks, strict=True):
        by_subject.setdefault(q.subject or "all", []).append(pick == q.answer)
    summary["by_subject"] = {s: sum(v) / len(v) for s, v in sorted(by_subject.items())}
    summary["chance"] = sum(1 / len(q.options) for q in questions) / len(questions)
    rows = [
        {"subject": q.subject, "question": q.question, "prediction": pick, "reference": q.answer,
         "loglikelihoods": row}
        for q, pick, row in zip(questions, picks, scores, strict=True)
    ]  # fmt: skip
    return summary, rows, []  # plain-text prompts: their token count is above, not the chat template's


@torch.no_grad()
def eval_perplexity(model, tokenizer, config: EvalConfig):
    if not config.data:
        raise UserError("--data is required for --task perplexity")
    if config.data.endswith(".txt"):
        documents = load_documents(config.data)
    else:  # chat-style files: each example rendered through the chat template
        documents = [
            tokenizer.apply_chat_template(e.messages, tokenize=False) for e in load_examples(config.data)
        ]
    blocks = encode_documents(
        documents[: config.limit] if config.limit else documents, tokenizer, config.max_length
    )
    if not blocks:
        raise UserError(f"{config.data}: shorter than one block of {config.max_length} tokens")
    total, count = 0.0, 0
    model.eval()
    for start in range(0, len(blocks), config.batch_size):
        batch = collate(blocks[start : start + config.batch_size], tokenizer.pad_token_id)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        total += causal_lm_loss(model, batch, 1).item()
        count += int((batch["labels"][:, 1:] != -100).sum())
    loss = total / count
    return {"main_metric": "perplexity", "value": math.exp(loss), "loss": loss, "tokens": count}, [], []


def prompt_token_stats(tokenizer, prompts: list[list[dict]]) -> dict:
    lengths = [len(chat_prompt_ids(tokenizer, p)) for p in prompts[:200]]
    return {"prompt_tokens_mean": sum(lengths) / len(lengths)} if lengths else {}
