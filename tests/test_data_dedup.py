"""Near-duplicate search finds every pair at or above the threshold: the exact all-pairs comparison of a
small file and the MinHash LSH of a large one (forced here with a small bound), within one file and
between two (leakage)."""

from __future__ import annotations

import random

import pytest

from tunelab.data.dedup import duplicates, jaccard, overlap, shingles


def close_pairs(count: int = 300, seed: int = 0) -> list[tuple[str, str]]:
    """Short texts and the same text with one inner word changed: 29 to 59 distinct words keep (n - 5)
    of n + 1 word 3-grams in common, a Jaccard from 0.80 to 0.90, just above the default threshold."""
    rng = random.Random(seed)
    vocabulary = [f"{a}{b}{c}" for a in "bdfgklmnprstvz" for b in "aeiou" for c in "klmnrst"]
    pairs = []
    for _ in range(count):
        words = rng.sample(vocabulary, rng.randint(29, 59) + 1)
        text, other = words[:-1], list(words[:-1])
        other[rng.randrange(2, len(text) - 2)] = words[-1]
        pairs.append((" ".join(text), " ".join(other)))
    return pairs


PAIRS = close_pairs()


def test_the_pairs_are_as_close_as_intended():
    similarities = [jaccard(shingles(a), shingles(b)) for a, b in PAIRS]
    assert all(0.80 <= s <= 0.90 for s in similarities)
    assert min(similarities) < 0.81 and max(similarities) > 0.89


@pytest.mark.parametrize("exact_up_to", [10_000, 0], ids=["exact", "lsh"])
def test_every_close_pair_in_a_file_is_found(exact_up_to):
    texts = [text for pair in PAIRS for text in pair]
    found = duplicates(texts, 0.8, exact_up_to=exact_up_to)
    assert {(m.index, m.of, m.kind) for m in found} == {(i + 1, i, "near") for i in range(0, len(texts), 2)}
    assert all(0.8 <= m.similarity <= 0.9 for m in found)


@pytest.mark.parametrize("exact_up_to", [10_000, 0], ids=["exact", "lsh"])
def test_every_close_pair_between_files_is_found(exact_up_to):
    reference, texts = [a for a, _ in PAIRS], [b for _, b in PAIRS][::-1]
    found = overlap(reference, texts, 0.8, exact_up_to=exact_up_to)
    assert [(m.index, m.of, m.kind) for m in found] == [
        (i, len(PAIRS) - 1 - i, "near") for i in range(len(PAIRS))
    ]


@pytest.mark.parametrize("exact_up_to", [10_000, 0], ids=["exact", "lsh"])
def test_a_copy_is_kept_out_with_its_first_copy(exact_up_to):
    a, b = PAIRS[0]
    texts = [a, "something else entirely", b, b.upper(), a + "!"]
    found = [(m.index, m.of, m.kind) for m in duplicates(texts, 0.8, exact_up_to=exact_up_to)]
    # 3 copies 2 exactly, but 2 is itself a near copy of 0: 3 goes with it, citing the text that stays.
    assert found == [(2, 0, "near"), (3, 0, "near"), (4, 0, "exact")]
    assert duplicates(texts, 0.8, near=False, exact_up_to=exact_up_to)[0].kind == "exact"


def changed(*positions: int) -> str:
    """Sixty words with the words at `positions` changed: each change costs three shared 3-grams."""
    return " ".join("x" if i in positions else f"w{i}" for i in range(60))


@pytest.mark.parametrize("exact_up_to", [10_000, 0], ids=["exact", "lsh"])
def test_the_most_similar_kept_text_is_named_and_the_earliest_of_equals(exact_up_to):
    # 0 and 1 are kept (Jaccard 0.66); the last text is 0.73 like 0, 0.90 like 1
    texts = [changed(10, 20, 30), changed(50), changed()]
    assert [(m.index, m.of) for m in duplicates(texts, 0.7, exact_up_to=exact_up_to)] == [(2, 1)]
    # 0 and 1 are kept (Jaccard 0.81), the last text is 0.90 like both
    texts = [changed(10), changed(40), changed()]
    assert [(m.index, m.of) for m in duplicates(texts, 0.85, exact_up_to=exact_up_to)] == [(2, 0)]
