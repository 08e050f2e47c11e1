"""`tunelab eval`: one function per task type, all returning (summary, per-example rows).

generation      generate answers, score them with text metrics (or extracted numbers/labels)
classification  score each label word's likelihood after the prompt; accuracy, F1, calibration
multiple-choice MMLU-layout questions scored by the likelihood of the option letters
perplexity      mean next-token loss over packed blocks of text
"""

from __future__ import annotations

import math

import torch

from ..data import Example, load_documents, load_examples, name_labels
from ..data.batching import collate
from ..data.tokenize import encode_documents
from ..errors import UserError
from ..inference import classify
from ..inference.generate import chat_prompt_ids, classifies, generate
from ..ops import causal_lm_loss
from . import extraction, metrics
from .benchmarks import LETTERS, parse_benchmark, read_split, stratified_sample
from .config import EvalConfig
from .prompting import PromptStyle, build_messages, pick_shots
from .scoring import score_candidates


def question_and_answer(example: Example) -> tuple[str, str | None, str | None]:
    """(last user message, final assistant answer or None, system message or None)."""
    messages = example.messages
    answer = messages[-1]["content"] if messages[-1]["role"] == "assistant" else None
    question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    return question, answer, system


def prompts_for(examples: list[Example], config: EvalConfig, style: PromptStyle) -> list[list[dict]]:
    pool = load_examples(config.shots_from) if config.shots_from else examples
    if config.labels and config.shots_from:
        pool = name_labels(pool, config.labels)
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
        if list(model.labels) != list(labels):
            raise UserError(f"the head's labels {model.labels} differ from {labels}")
        rows = classify(
            model, tokenizer, examples, batch_size=config.batch_size, max_length=config.max_length
        )
        return torch.tensor([[row["probs"][label] for label in labels] for row in rows]).log(), prompts
    scores = score_candidates(model, tokenizer, prompts, labels, config.batch_size, config.max_length)
    return scores, prompts  # (N, C) log-likelihoods: the logits of a classifier over the label words


def eval_classification(model, tokenizer, config: EvalConfig, out_dir=None):
    from . import calibration

    examples = read_examples(config)
    references = [question_and_answer(e)[1] for e in examples]
    labels = config.labels or sorted(set(references))
    scores, prompts = classification_probs(model, tokenizer, examples, config, labels)
    predictions = [labels[i] for i in scores.argmax(-1).tolist()]
    summary = metrics.score(config.metrics or ["accuracy", "macro_f1"], predictions, references)
    summary["report"] = metrics.classification_report(predictions, references, labels)
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
    if not config.benchmark:
        raise UserError("--task multiple-choice needs --benchmark mmlu:PATH")
    _, folder = parse_benchmark(config.benchmark)
    questions = stratified_sample(read_split(folder, "val"), config.limit, config.seed)
    dev = read_split(folder, "dev") if config.shots else []
    prompts = []
    for q in questions:
        instruction = (
            f"The following is a multiple choice question about {q.subject}. Answer with the letter only."
        )
        style = PromptStyle(config.shots, False, instruction, config.seed)
        shots = [(d.text(), d.answer) for d in dev if d.subject == q.subject][: config.shots]
        prompts.append(build_messages(q.text(), shots, style))
    scores = score_candidates(model, tokenizer, prompts, list(LETTERS), config.batch_size, config.max_length)
    predictions = [LETTERS[i] for i in scores.argmax(-1).tolist()]
    references = [q.answer for q in questions]
    summary = metrics.score(["accuracy"], predictions, references)
    by_subject: dict[str, list[bool]] = {}
    for q, p in zip(questions, predictions, strict=True):
        by_subject.setdefault(q.subject, []).append(p == q.answer)
    summary["by_subject"] = {s: sum(v) / len(v) for s, v in sorted(by_subject.items())}
    summary["chance"] = 1 / len(LETTERS)
    rows = [
        {"subject": q.subject, "prediction": p, "reference": q.answer}
        for q, p in zip(questions, predictions, strict=True)
    ]
    return summary, rows, prompts


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
