"""Metrics against rouge-score and sacrebleu called directly, hand-computed cases, and answer extraction."""

import json
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tunelab.evaluation import metrics as m
from tunelab.evaluation.extraction import extract_choice, extract_label, extract_number, gsm8k_reference

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"

# Multi-sentence pairs on purpose: rougeLsum differs from rougeL only when sentences are split.
PREDICTIONS = [
    "The cat sat on the mat. It was happy.",
    "A quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "The results were running late. Nobody knew why.",
    "It is very cold outside",
]
REFERENCES = [
    "The cat was sitting on the mat. The cat seemed happy.",
    "The quick brown fox jumped over a lazy dog.",
    "The capital of France is Paris.",
    "Results ran late. No one knew the reason. It was odd.",
    "It is cold outside",
]


def _newlines(text):
    return text.replace(". ", ".\n")


def test_rouge_matches_rouge_score_directly():
    scorer = rouge_scorer.RougeScorer(list(m.ROUGE_TYPES), use_stemmer=True)
    direct = [scorer.score(_newlines(r), _newlines(p)) for p, r in zip(PREDICTIONS, REFERENCES, strict=True)]
    ours = m.rouge(PREDICTIONS, REFERENCES)
    for key in m.ROUGE_TYPES:
        assert ours[key]["precision"] == pytest.approx(np.mean([d[key].precision for d in direct]))
        assert ours[key]["recall"] == pytest.approx(np.mean([d[key].recall for d in direct]))
        assert ours[key]["f1"] == pytest.approx(np.mean([d[key].fmeasure for d in direct]))
    # The fixture is only a parity test if sentence splitting changes something.
    assert ours["rougeLsum"]["f1"] != pytest.approx(ours["rougeL"]["f1"])


def test_rouge_l_known_case():
    scores = m.rouge(["It is very cold outside"], ["It is cold outside"])["rougeL"]
    assert round(scores["precision"], 3) == 0.8
    assert round(scores["recall"], 3) == 1.0
    assert round(scores["f1"], 3) == 0.889


def test_rouge_multi_reference_takes_best():
    single = m.rouge(["It is very cold outside"], ["It is cold outside"])["rouge1"]["f1"]
    multi = m.rouge(["It is very cold outside"], [["Something else entirely", "It is cold outside"]])
    assert multi["rouge1"]["f1"] == pytest.approx(single)


def test_bleu_and_chrf_match_sacrebleu_directly():
    ours = m.bleu(PREDICTIONS, REFERENCES)
    assert ours["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score)
    assert ours["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score)
    assert 0 < ours["bleu"] < 100  # sacrebleu's 0..100 scale, and not a degenerate fixture


def test_bleu_several_references_per_example():
    second = [r.upper() if i % 2 else r.lower() for i, r in enumerate(REFERENCES)]
    ours = m.bleu(PREDICTIONS, [[a, b] for a, b in zip(REFERENCES, second, strict=True)])
    assert ours["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES, second]).score)
    # A ragged list (one example with a single reference) must not crash.
    ragged = [[REFERENCES[0]]] + [[a, b] for a, b in zip(REFERENCES[1:], second[1:], strict=True)]
    assert m.bleu(PREDICTIONS, ragged)["bleu"] > 0


def test_bleu_bootstrap_shortcut_equals_recomputing_corpus_bleu():
    fast = m._bleu_bootstrap(PREDICTIONS, REFERENCES, n_resamples=40, seed=3, confidence=0.95)
    slow = m.bootstrap_metric(
        lambda p, r: m.bleu(p, r)["bleu"], PREDICTIONS, REFERENCES, n_resamples=40, seed=3
    )
    assert fast == pytest.approx(slow)
    assert fast[0] < fast[1]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Cat!", "cat"),
        ("  an   apple, a pear ", "apple pear"),
        ("Theory of the mind", "theory of mind"),  # "the" inside a word stays
        ("U.S.A.", "usa"),
    ],
)
def test_normalize_answer(text, expected):
    assert m.normalize_answer(text) == expected


def test_exact_match():
    assert m.exact_match(["The Eiffel Tower!", "Paris"], ["eiffel tower", "London"]) == 0.5
    assert m.exact_match(["Paris"], [["London", "paris."]]) == 1.0


def test_token_f1_known_values():
    # "cat sat on mat" vs "cat sat": P 2/4, R 2/2 -> F1 2/3.
    assert m.token_f1(["the cat sat on the mat"], ["a cat sat"]) == pytest.approx(2 / 3)
    assert m.token_f1(["Paris", "blue"], ["Paris, France", "red"]) == pytest.approx((2 / 3 + 0) / 2)
    assert m.token_f1(["cat cat dog"], [["bird", "cat dog"]]) == pytest.approx(0.8)  # P 2/3, R 1
    assert m.token_f1([""], [""]) == 1.0


def test_classification_report_hand_computed():
    refs = ["cat", "cat", "cat", "dog", "dog", "bird"]
    preds = ["cat", "dog", "cat", "dog", "meow", "cat"]
    report = m.classification_report(preds, refs)
    # bird: never predicted -> F1 0; cat: P 2/3 R 2/3; dog: P 1/2 R 1/2.
    assert report["accuracy"] == 0.5
    assert report["macro_f1"] == pytest.approx((0 + 2 / 3 + 1 / 2) / 3)
    assert report["per_class"]["cat"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    assert report["per_class"]["bird"]["f1"] == 0.0
    assert report["confusion"] == {
        "labels": ["bird", "cat", "dog"],
        "columns": ["bird", "cat", "dog", "<other>"],
        "matrix": [[0, 1, 0, 0], [0, 2, 1, 0], [0, 0, 1, 1]],
    }
    with pytest.raises(ValueError, match="outside the label set"):
        m.classification_report(["a"], ["z"], labels=["a", "b"])


def test_other_column_only_when_needed():
    report = m.classification_report(["a", "b", None], ["a", "b", "b"], labels=["a", "b"])
    assert report["confusion"]["columns"] == ["a", "b", "<other>"]
    assert report["per_class"]["b"]["recall"] == 0.5
    report = m.classification_report(["a", "a"], ["a", "b"])
    assert report["confusion"] == {"labels": ["a", "b"], "columns": ["a", "b"], "matrix": [[1, 0], [1, 0]]}


def test_bootstrap_deterministic_contains_mean_and_narrows():
    rng = np.random.default_rng(1)
    small = rng.random(40)  # continuous, so different seeds cannot land on the same quantised means
    large = rng.random(4000)
    assert m.bootstrap_ci(small, seed=7) == m.bootstrap_ci(small, seed=7)
    assert m.bootstrap_ci(small, seed=7) != m.bootstrap_ci(small, seed=8)
    for scores in (small, large):
        low, high = m.bootstrap_ci(scores, n_resamples=500)
        assert low < scores.mean() < high
    width = [np.subtract(*m.bootstrap_ci(s, n_resamples=500)[::-1]) for s in (small, large)]
    assert width[1] < width[0] / 4  # ~1/sqrt(100) as wide


def test_bootstrap_metric_of_mean_equals_bootstrap_ci():
    scores = [0.0, 1.0, 1.0, 0.5, 0.25, 1.0]
    generic = m.bootstrap_metric(lambda p, r: float(np.mean(p)), scores, scores, n_resamples=200, seed=5)
    assert generic == pytest.approx(m.bootstrap_ci(scores, n_resamples=200, seed=5))


def test_perplexity():
    assert m.perplexity(0.0, 10) == 1.0
    assert m.perplexity(10 * np.log(4), 10) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        m.perplexity(1.0, 0)


def test_score_merges_metrics_and_adds_interval():
    result = m.score("rouge,bleu", PREDICTIONS, REFERENCES, n_resamples=200)
    assert set(m.ROUGE_TYPES) | {"bleu", "chrf"} <= set(result)
    assert result["main_metric"] == "rougeL"
    assert result["value"] == pytest.approx(m.rouge(PREDICTIONS, REFERENCES)["rougeL"]["f1"])
    low, high = result["ci95"]
    assert low <= result["value"] <= high and low < high

    labels = m.score(["macro_f1", "accuracy"], ["a", "b", "a", "b"], ["a", "b", "b", "b"], n_resamples=100)
    assert labels["main_metric"] == "macro_f1" and labels["accuracy"] == 0.75
    assert labels["ci95"][0] <= labels["value"] <= labels["ci95"][1]
    with pytest.raises(ValueError, match="unknown metric"):
        m.score("rouge,meteor", PREDICTIONS, REFERENCES)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        m.exact_match(["a", "b"], ["a"])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So she has 5 + 3 = 8 apples.\n#### 8", "8"),
        ("The total is $1,234.50 today", "1234.5"),
        ("It dropped to -3.5 degrees", "-3.5"),
        ("She paid $10.00.", "10"),
        ("a 10-year-old ate 3-4 cakes", "4"),  # hyphens are not minus signs
        ("#### -7", "-7"),
        ("#### 1,080 and later 5", "1080"),
        ("no digits here", None),
        ("values 1,2,3", "3"),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_gsm8k_reference_agrees_with_extract_number_on_real_answers():
    if not GSM8K.exists():
        pytest.skip(f"GSM8K sample not found at {GSM8K} (shared/ data is not checked out here)")
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    picked = rows[:3]
    picked.append(next(r for r in rows if "," in r["answer"].rsplit("####", 1)[1]))
    picked.append(next(r for r in rows if "#### -" in r["answer"]))
    refs = [gsm8k_reference(r["answer"]) for r in picked]
    assert refs[:3] == ["72", "10", "5"]
    assert "," not in refs[3] and refs[4].startswith("-")
    assert refs == [extract_number(r["answer"]) for r in picked]
    # Without its "####" line the reasoning's last number is still the answer for the first example.
    assert extract_number(picked[0]["answer"].rsplit("####", 1)[0]) == "72"


def test_gsm8k_reference_needs_marker():
    with pytest.raises(ValueError, match="####"):
        gsm8k_reference("the answer is 4")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Positive.", "positive"),
        ("The sentiment is negative", "negative"),
        ("NEUTRAL, I think", "neutral"),
        ("negative, not positive", "negative"),  # earliest occurrence wins
        ("It's nonpositive", None),  # word boundaries
        ("very positive overall", "very positive"),  # longer label at the same position
        ("no idea", None),
    ],
)
def test_extract_label(text, expected):
    assert extract_label(text, ["positive", "negative", "neutral", "very positive"]) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("Answer: B", "B"),
        ("the answer is (c) because", "C"),
        ("b) Paris", "B"),
        ("D. None of the above", "D"),
        ("A cat is not the answer, C is", None),  # two bare capitals and nothing explicit: ambiguous
        ("I would pick C", "C"),
        ("a dog barked", None),  # lowercase article is not a choice
        ("E", None),  # outside the letters
        ("A or C, hard to say", None),  # two bare capitals: ambiguous
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text) == expected
