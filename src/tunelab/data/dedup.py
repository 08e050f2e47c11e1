"""Exact and near-duplicate texts: within one file (keep the first copy) and between two files (leakage).

Near-duplicates are pairs whose word 3-gram shingle sets have a Jaccard similarity at or above the
threshold; one word changed in a 30-word text keeps about 0.8 of its 3-grams, different texts on the same
topic share few. Up to `EXACT_UP_TO` distinct texts every pair is compared exactly (scipy's sparse product
counts the shared shingles of all pairs at once); past that, MinHash LSH (`datasketch`), tuned to miss
almost nothing, proposes candidates. Either way a reported pair has been confirmed with the exact Jaccard.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from dataclasses import dataclass

SHINGLE = 3
# At worst (every text shares a phrase with every other) 10,000 texts are 50 million pair intersections,
# about 5 s in a sparse product; beyond, that quadratic cost outgrows LSH's, near-linear on most data.
EXACT_UP_TO = 10_000
CHUNK = 512  # rows of the sparse product held at once: memory stays CHUNK x texts
NUM_PERM = 256
# LSH's bands for the threshold, chosen by datasketch to weigh a missed pair 10^5 times a false candidate:
# a false candidate costs one exact Jaccard, a missed pair keeps a copy. About 1 in 10^5 pairs exactly at
# 0.8 is missed, 1 in 10^8 at 0.85 (the default weights miss a quarter at 0.86). The price: texts about
# half alike become candidates too, so a large file of many similar texts is slow (minutes per 10,000).
LSH_WEIGHTS = (1e-5, 1 - 1e-5)


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
    common = len(a & b)  # the union's size from the intersection's: no third set is built
    return common / (len(a) + len(b) - common) if a or b else 1.0


def digest(text: str) -> str:
    return hashlib.blake2b(normalise(text).encode(), digest_size=16).hexdigest()


@dataclass
class Match:
    index: int  # the copy (in the file scanned)
    of: int  # the kept original (in the same file, or in the reference file)
    kind: str  # "exact" or "near"
    similarity: float


def duplicates(
    texts: list[str], threshold: float = 0.8, near: bool = True, exact_up_to: int = EXACT_UP_TO
) -> list[Match]:
    """Every text that copies an earlier one; the first occurrence in file order is the one kept."""
    firsts = _first_copies(texts)
    copies: dict[int, tuple[int, float]] = {}
    if near:
        unique = sorted(set(firsts))
        sets = [shingles(texts[i]) for i in unique]
        find = _near_copies_exact if len(unique) <= exact_up_to else _near_copies_lsh
        copies = {
            unique[i]: (unique[of], similarity) for i, (of, similarity) in find(sets, threshold).items()
        }
    found = []
    for i, first in enumerate(firsts):
        if first in copies:  # an exact copy of a near copy goes with it, naming the text that stays
            of, similarity = copies[first]
            found.append(Match(i, of, "near", round(similarity, 3)))
        elif first != i:
            found.append(Match(i, first, "exact", 1.0))
    return found


def overlap(
    reference: list[str], texts: list[str], threshold: float = 0.8, exact_up_to: int = EXACT_UP_TO
) -> list[Match]:
    """Each text of `texts` that copies one of `reference` (`of` indexes `reference`)."""
    firsts: dict[str, int] = {}
    for i, text in enumerate(reference):
        firsts.setdefault(digest(text), i)
    unique = sorted(firsts.values())
    digests = [digest(text) for text in texts]
    rest = [i for i, d in enumerate(digests) if d not in firsts]
    sets, queries = [shingles(reference[i]) for i in unique], [shingles(texts[i]) for i in rest]
    find = _nearest_exact if len(unique) * len(rest) <= exact_up_to**2 // 2 else _nearest_lsh
    nearest = {
        rest[q]: (unique[of], similarity) for q, (of, similarity) in find(sets, queries, threshold).items()
    }
    found = []
    for i, d in enumerate(digests):
        if d in firsts:
            found.append(Match(i, firsts[d], "exact", 1.0))
        elif i in nearest:
            found.append(Match(i, nearest[i][0], "near", round(nearest[i][1], 3)))
    return found


def _first_copies(texts: list[str]) -> list[int]:
    """For each text, the index of its first exact copy (itself when it is the first)."""
    firsts: dict[str, int] = {}
    return [firsts.setdefault(digest(text), i) for i, text in enumerate(texts)]


def _incidence(groups: list[list[set[str]]]) -> list:
    """One texts x shingles 0/1 matrix per group, with the same shingle columns."""
    import numpy as np
    from scipy import sparse

    columns: dict[str, int] = {}
    parts = []
    for sets in groups:
        indptr, indices = [0], []
        for shingle_set in sets:
            indices.extend(columns.setdefault(s, len(columns)) for s in shingle_set)
            indptr.append(len(indices))
        parts.append((np.ones(len(indices), np.int32), indices, indptr))
    return [sparse.csr_matrix(part, shape=(len(part[2]) - 1, len(columns))) for part in parts]


def _similar(x, y, threshold: float):
    """(row, columns, similarities) for each row of `x`: the rows of `y` (ascending) that are at least
    `threshold` similar to it."""
    import numpy as np

    x_sizes, y_sizes = np.diff(x.indptr), np.diff(y.indptr)
    for start in range(0, x.shape[0], CHUNK):
        common = x[start : start + CHUNK] @ y.T  # (chunk, len(y)) shingles shared
        common.sort_indices()
        for row in range(common.shape[0]):
            p, q = common.indptr[row], common.indptr[row + 1]
            columns, shared = common.indices[p:q], common.data[p:q]
            # The same division as `jaccard`, so both paths agree to the last bit at the threshold.
            similarity = shared / (x_sizes[start + row] + y_sizes[columns] - shared).astype(np.float64)
            keep = similarity >= threshold
            yield start + row, columns[keep], similarity[keep]


def _near_copies_exact(sets: list[set[str]], threshold: float) -> dict[int, tuple[int, float]]:
    """{copy: (kept text, similarity)} over every pair; texts are taken in order, and a text is compared
    with the earlier ones that were kept (its first copy stays)."""
    import numpy as np

    (x,) = _incidence([sets])
    kept = np.zeros(len(sets), bool)
    copies = {}
    for start in range(0, len(sets), CHUNK):
        stop = min(start + CHUNK, len(sets))
        # Only kept texts can be copied, so a file of many copies of one text stays cheap.
        candidates = np.concatenate([np.flatnonzero(kept[:start]), np.arange(start, stop)])
        for row, columns, similarity in _similar(x[start:stop], x[candidates], threshold):
            i = start + row
            others = candidates[columns]
            usable = (others < i) & kept[others]
            if usable.any():
                best = int(np.argmax(similarity[usable]))  # the first of equals: the earliest text
                copies[i] = (int(others[usable][best]), float(similarity[usable][best]))
            else:
                kept[i] = True
    return copies


def _nearest_exact(sets: list[set[str]], queries: list[set[str]], threshold: float):
    """{query: (most similar of `sets`, similarity)} over every pair."""
    import numpy as np

    y, x = _incidence([sets, queries])
    nearest = {}
    for row, columns, similarity in _similar(x, y, threshold):
        if len(columns):
            best = int(np.argmax(similarity))
            nearest[row] = (int(columns[best]), float(similarity[best]))
    return nearest


@functools.cache
def _empty_minhash():
    from datasketch import MinHash

    return MinHash(num_perm=NUM_PERM, seed=1)


def _minhash(shingle_set: set[str]):
    minhash = _empty_minhash().copy()  # shares the permutations, which take longer to make than to apply
    minhash.update_batch([s.encode() for s in shingle_set])
    return minhash


def _lsh(threshold: float):
    from datasketch import MinHashLSH

    return MinHashLSH(threshold=threshold, num_perm=NUM_PERM, weights=LSH_WEIGHTS)


def _most_similar(shingle_set: set[str], candidates, sets: list[set[str]], threshold: float):
    """(candidate, similarity) of the candidate with the highest exact Jaccard (the earliest of equals)."""
    best = None
    for candidate in sorted(candidates):
        similarity = jaccard(shingle_set, sets[candidate])
        if similarity >= threshold and (best is None or similarity > best[1]):
            best = (candidate, similarity)
    return best


def _near_copies_lsh(sets: list[set[str]], threshold: float) -> dict[int, tuple[int, float]]:
    """As `_near_copies_exact`, with LSH candidates."""
    lsh, copies = _lsh(threshold), {}
    for i, shingle_set in enumerate(sets):
        if not shingle_set:
            continue
        minhash = _minhash(shingle_set)
        best = _most_similar(shingle_set, lsh.query(minhash), sets, threshold)
        if best is None:
            lsh.insert(i, minhash)
        else:
            copies[i] = best
    return copies


def _nearest_lsh(sets: list[set[str]], queries: list[set[str]], threshold: float):
    """As `_nearest_exact`, with LSH candidates."""
    lsh = _lsh(threshold)
    for i, shingle_set in enumerate(sets):
        if shingle_set:
            lsh.insert(i, _minhash(shingle_set))
    nearest = {}
    for q, shingle_set in enumerate(queries):
        if shingle_set and (
            best := _most_similar(shingle_set, lsh.query(_minhash(shingle_set)), sets, threshold)
        ):
            nearest[q] = best
    return nearest


def ngrams(text: str, n: int = 13) -> set[int]:
    words = normalise(text).split()
    return {hash(tuple(words[i : i + n])) for i in range(len(words) - n + 1)}
