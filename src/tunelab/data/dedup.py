"""Exact and near-duplicate texts: within one file (keep the first copy) and between two files (leakage).

Near-duplicates are found with MinHash LSH (`datasketch`) over word 3-gram shingles and then confirmed
with the exact Jaccard similarity of the shingle sets, so a reported pair really is that similar. One word
changed in a 30-word text keeps about 0.8 of its 3-grams; different texts on the same topic share few.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

SHINGLE = 3
NUM_PERM = 128


def normalise(text: str) -> str:
    """Case, accents' composition, punctuation and spacing do not make a copy new."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.findall(r"\w+", text))


def shingles(text: str, n: int = SHINGLE) -> set[str]:
    words = normalise(text).split()
    if len(words) <= n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def digest(text: str) -> str:
    return hashlib.blake2b(normalise(text).encode(), digest_size=16).hexdigest()


@dataclass
class Match:
    index: int  # the copy (in the file scanned)
    of: int  # the kept original (in the same file, or in the reference file)
    kind: str  # "exact" or "near"
    similarity: float


def _minhash(shingle_set: set[str]):
    from datasketch import MinHash

    m = MinHash(num_perm=NUM_PERM, seed=1)
    m.update_batch([s.encode() for s in shingle_set])
    return m


class Index:
    """Texts to compare against: exact digests plus an LSH index of their MinHashes."""

    def __init__(self, threshold: float | None):
        """`threshold` None: exact copies only."""
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM) if threshold is not None else None
        self.exact: dict[str, int] = {}
        self.sets: dict[int, set[str]] = {}

    def add(self, index: int, text: str, shingle_set: set[str] | None = None) -> None:
        self.exact.setdefault(digest(text), index)
        if self.lsh is None:
            return
        shingle_set = shingles(text) if shingle_set is None else shingle_set
        if index not in self.sets and shingle_set:
            self.sets[index] = shingle_set
            self.lsh.insert(index, _minhash(shingle_set))

    def find(self, index: int, text: str, shingle_set: set[str] | None = None) -> Match | None:
        """The earliest indexed text that `text` copies exactly, else the most similar near copy."""
        original = self.exact.get(digest(text))
        if original is not None:
            return Match(index, original, "exact", 1.0)
        if self.lsh is None:
            return None
        shingle_set = shingles(text) if shingle_set is None else shingle_set
        if not shingle_set:
            return None
        best = None
        for candidate in sorted(self.lsh.query(_minhash(shingle_set))):
            similarity = jaccard(shingle_set, self.sets[candidate])
            if similarity >= self.threshold and (best is None or similarity > best.similarity):
                best = Match(index, candidate, "near", round(similarity, 3))
        return best


def duplicates(texts: list[str], threshold: float = 0.8, near: bool = True) -> list[Match]:
    """Every text that copies an earlier one; the first occurrence in file order is the one kept."""
    index = Index(threshold if near else None)
    found = []
    for i, text in enumerate(texts):
        shingle_set = shingles(text) if near else set()
        match = index.find(i, text, shingle_set)
        if match is not None:
            found.append(match)
        else:
            index.add(i, text, shingle_set)
    return found


def overlap(reference: list[str], texts: list[str], threshold: float = 0.8) -> list[Match]:
    """Each text of `texts` that copies one of `reference` (`of` indexes `reference`)."""
    index = Index(threshold)
    for i, text in enumerate(reference):
        index.add(i, text)
    return [m for i, text in enumerate(texts) if (m := index.find(i, text)) is not None]


def ngrams(text: str, n: int = 13) -> set[int]:
    words = normalise(text).split()
    return {hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1)}
