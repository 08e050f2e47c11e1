"""Metrics as plain functions over lists of predictions and references, with bootstrap intervals.

ROUGE comes from `rouge-score` and BLEU/chrF from `sacrebleu`; we only adapt their inputs and average their
outputs, so numbers match what papers report with those libraries. Scores are 0..1 fractions except `bleu`
and `chrf`, which keep sacrebleu's 0..100 scale so they read like every sacrebleu table.

`METRICS` maps the names used by `--metrics rouge,bleu` to `fn(predictions, references) -> dict[str, float]`;
`score()` runs several, merges their dicts and adds a 95% bootstrap interval for the first one's main number.
Wherever references are accepted, each may be a string or a list of strings (several references for one
example); the best-matching reference counts, as in SQuAD and sacrebleu.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
OTHER = "<other>"

References = Sequence[str] | Sequence[Sequence[str]]


def _check_lengths(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no examples to score")


def _as_list(reference) -> list[str]:
    return [reference] if isinstance(reference, str) else list(reference)


# --- ROUGE -----------------------------------------------------------------------------------------


def _sentences_per_line(text: str) -> str:
    # rougeLsum splits on newlines only; HF's summarization recipe puts one sentence per line (with nltk's
    # punkt, whose model is a separate download) before calling the `evaluate` rouge metric. A split after
    # sentence-final punctuation gives the same lines for ordinary prose without that download.
    parts = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    return "\n".join(p for p in parts if p)


def _rouge_per_example(predictions: Sequence[str], references: References) -> list[dict]:
    _check_lengths(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    rows = []
    for pred, ref in zip(predictions, references, strict=True):
        refs = [_sentences_per_line(r) for r in _as_list(ref)]
        scores = scorer.score_multi(refs, _sentences_per_line(pred))
        rows.append(
            {k: {"precision": s.precision, "recall": s.recall, "f1": s.fmeasure} for k, s in scores.items()}
        )
    return rows


def rouge(predictions: Sequence[str], references: References) -> dict[str, dict[str, float]]:
    """ROUGE-1/2/L/Lsum, each {precision, recall, f1} averaged over examples (0..1), Porter stemming on.

    rougeL scores the longest common subsequence of the whole text; rougeLsum treats each sentence
    separately (summary-level LCS), which is what summarization papers usually call ROUGE-L.
    """
    rows = _rouge_per_example(predictions, references)
    return {
        k: {field: float(np.mean([r[k][field] for r in rows])) for field in ("precision", "recall", "f1")}
        for k in ROUGE_TYPES
    }


# --- BLEU / chrF ------------------------------------------------------------------------------------


def _reference_streams(references: References) -> list[list[str | None]]:
    # sacrebleu wants one list per reference *position*; a shorter reference list is padded with None,
    # which sacrebleu skips, so examples may have different numbers of references.
    per_example = [_as_list(r) for r in references]
    width = max(len(r) for r in per_example)
    return [[r[j] if j < len(r) else None for r in per_example] for j in range(width)]


def bleu(predictions: Sequence[str], references: References) -> dict[str, float]:
    """Corpus BLEU and chrF from sacrebleu with its defaults (13a tokenizer, exp smoothing), both 0..100."""
    _check_lengths(predictions, references)
    streams = _reference_streams(references)
    return {
        "bleu": float(sacrebleu.corpus_bleu(list(predictions), streams).score),
        "chrf": float(sacrebleu.corpus_chrf(list(predictions), streams).score),
    }


def _bleu_bootstrap(predictions, references, n_resamples, seed, confidence) -> tuple[float, float]:
    # Recomputing corpus_bleu per resample re-tokenises everything (about a minute for 500 examples).
    # BLEU is a function of summed per-sentence n-gram counts, so we take sacrebleu's counts once and
    # resample those; `test_metrics` checks this gives the same interval as the generic path.
    _check_lengths(predictions, references)
    metric = sacrebleu.BLEU(
        effective_order=True
    )  # only silences the sentence-level warning; counts are equal
    stats = []
    for pred, ref in zip(predictions, references, strict=True):
        s = metric.sentence_score(pred, _as_list(ref))
        stats.append([s.sys_len, s.ref_len, *s.counts, *s.totals])
    stats = np.array(stats, dtype=np.int64)
    order = metric.max_ngram_order

    def corpus(idx):
        total = stats[idx].sum(axis=0).tolist()
        correct, totals = total[2 : 2 + order], total[2 + order :]
        return sacrebleu.BLEU.compute_bleu(correct, totals, total[0], total[1], smooth_method="exp").score

    values = [corpus(idx) for idx in _resamples(len(predictions), n_resamples, seed)]
    return _percentile_interval(values, confidence)


# --- SQuAD-style answers ----------------------------------------------------------------------------

_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop articles (a, an, the), squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        # SQuAD v2 convention: an empty answer is right only when the reference is empty too.
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match_scores(predictions: Sequence[str], references: References) -> list[float]:
    """1.0 per example whose normalised prediction equals any normalised reference, else 0.0."""
    _check_lengths(predictions, references)
    return [
        float(any(normalize_answer(p) == normalize_answer(r) for r in _as_list(refs)))
        for p, refs in zip(predictions, references, strict=True)
    ]


def token_f1_scores(predictions: Sequence[str], references: References) -> list[float]:
    """SQuAD token-overlap F1 per example, the best over its references."""
    _check_lengths(predictions, references)
    return [max(_f1(p, r) for r in _as_list(refs)) for p, refs in zip(predictions, references, strict=True)]


def exact_match(predictions: Sequence[str], references: References) -> float:
    """Fraction of examples answered exactly (after `normalize_answer`), 0..1."""
    return float(np.mean(exact_match_scores(predictions, references)))


def token_f1(predictions: Sequence[str], references: References) -> float:
    """Mean SQuAD token F1, 0..1."""
    return float(np.mean(token_f1_scores(predictions, references)))


# --- Classification ---------------------------------------------------------------------------------


def classification_report(
    predictions: Sequence, references: Sequence, labels: Sequence | None = None
) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/f1/support and a confusion matrix.

    `labels` defaults to the sorted reference labels; pass it to keep a class that no reference uses. A
    prediction outside the label set (an unparsable reply, None) is wrong and is counted in an extra
    "<other>" column, present only when needed. Matrix rows are references, columns predictions. A class
    never predicted has precision 0, as in scikit-learn's zero_division default.
    """
    _check_lengths(predictions, references)
    labels = sorted(set(references)) if labels is None else list(labels)
    unknown = set(references) - set(labels)
    if unknown:
        raise ValueError(f"references outside the label set: {sorted(map(str, unknown))}")
    index = {label: i for i, label in enumerate(labels)}
    other = len(labels)
    matrix = np.zeros((len(labels), len(labels) + 1), dtype=np.int64)
    for pred, ref in zip(predictions, references, strict=True):
        matrix[index[ref], index.get(pred, other)] += 1

    per_class = {}
    for i, label in enumerate(labels):
        tp, predicted, support = matrix[i, i], matrix[:, i].sum(), matrix[i].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(support),
        }
    columns = list(labels)
    if matrix[:, other].any():
        columns.append(OTHER)
    else:
        matrix = matrix[:, :other]
    return {
        "accuracy": float(np.trace(matrix[:, : len(labels)]) / len(references)),
        "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])),
        "per_class": per_class,
        "confusion": {"labels": list(labels), "columns": columns, "matrix": matrix.tolist()},
    }


# --- Bootstrap --------------------------------------------------------------------------------------


def _resamples(n: int, n_resamples: int, seed: int):
    # One index row at a time keeps memory at O(n) however many resamples are asked for, and every
    # bootstrap here draws the same rows for the same seed, so intervals from different paths agree.
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        yield rng.integers(0, n, size=n)


def _percentile_interval(values, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ci(
    per_example_scores: Sequence[float], n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-example scores; deterministic for a seed."""
    scores = np.asarray(per_example_scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no scores to bootstrap")
    means = [scores[idx].mean() for idx in _resamples(scores.size, n_resamples, seed)]
    return _percentile_interval(means, confidence)


def bootstrap_metric(
    fn: Callable[[list, list], float],
    predictions: Sequence,
    references: Sequence,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a corpus-level metric (BLEU, macro-F1): resample, recompute."""
    _check_lengths(predictions, references)
    values = []
    for idx in _resamples(len(predictions), n_resamples, seed):
        values.append(fn([predictions[i] for i in idx], [references[i] for i in idx]))
    return _percentile_interval(values, confidence)


def perplexity(total_nll: float, total_tokens: int) -> float:
    """exp(mean negative log-likelihood per token), from the summed NLL (nats) over all scored tokens."""
    if total_tokens <= 0:
        raise ValueError("perplexity needs at least one token")
    try:
        return math.exp(total_nll / total_tokens)
    except OverflowError:
        return math.inf


# --- Registry ---------------------------------------------------------------------------------------


def _rouge_f1(predictions, references) -> dict[str, float]:
    return {k: v["f1"] for k, v in rouge(predictions, references).items()}


def _exact_match(predictions, references) -> dict[str, float]:
    return {"exact_match": exact_match(predictions, references)}


def _token_f1(predictions, references) -> dict[str, float]:
    return {"token_f1": token_f1(predictions, references)}


def _accuracy(predictions, references) -> dict[str, float]:
    return {"accuracy": classification_report(predictions, references)["accuracy"]}


def _macro_f1(predictions, references) -> dict[str, float]:
    return {"macro_f1": classification_report(predictions, references)["macro_f1"]}


METRICS: dict[str, Callable[[Sequence, Sequence], dict[str, float]]] = {
    "rouge": _rouge_f1,  # rouge1/rouge2/rougeL/rougeLsum F1, 0..1
    "bleu": bleu,  # bleu/chrf, 0..100
    "exact_match": _exact_match,
    "token_f1": _token_f1,
    "accuracy": _accuracy,
    "macro_f1": _macro_f1,
}

# The number each metric is summarised by when it comes first in `score()`.
MAIN_KEY = {
    "rouge": "rougeL",
    "bleu": "bleu",
    "exact_match": "exact_match",
    "token_f1": "token_f1",
    "accuracy": "accuracy",
    "macro_f1": "macro_f1",
}


def _main_interval(name, predictions, references, n_resamples, seed) -> tuple[float, float]:
    # Mean-of-examples metrics bootstrap their per-example scores (cheap); corpus-level ones resample.
    if name == "rouge":
        per_example = [r["rougeL"]["f1"] for r in _rouge_per_example(predictions, references)]
    elif name == "exact_match":
        per_example = exact_match_scores(predictions, references)
    elif name == "token_f1":
        per_example = token_f1_scores(predictions, references)
    elif name == "accuracy":
        per_example = [float(p == r) for p, r in zip(predictions, references, strict=True)]
    elif name == "bleu":
        return _bleu_bootstrap(predictions, references, n_resamples, seed, 0.95)
    else:
        labels = sorted(set(references))  # fixed, so a resample missing a class still averages over all

        def fn(p, r):
            return classification_report(p, r, labels)[MAIN_KEY[name]]

        return bootstrap_metric(fn, predictions, references, n_resamples, seed)
    return bootstrap_ci(per_example, n_resamples, seed)


def score(
    names: str | Sequence[str],
    predictions: Sequence,
    references: Sequence,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Run several metrics (a list or "rouge,bleu"), merge their numbers, add a 95% interval for the first.

    The result has every metric's keys plus {"main_metric": key, "value": x, "ci95": [lo, hi]}, where key is
    the first metric's main number (rougeL for rouge, bleu for bleu, otherwise the metric's own name).
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise ValueError("no metrics named")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    result: dict = {}
    for name in names:
        result.update(METRICS[name](predictions, references))
    main = MAIN_KEY[names[0]]
    low, high = _main_interval(names[0], predictions, references, n_resamples, seed)
    result.update({"main_metric": main, "value": result[main], "ci95": [low, high]})
    return result
