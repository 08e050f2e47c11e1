"""Groups of people named by words (`gender: {female: [she, her, woman], male: [he, his, man]}`): which
groups a text mentions, and the same text with one group's words swapped for another's (counterfactual).

The i-th word of a group swaps with the i-th word of the next group (she<->he, her<->his, Mary<->John), so
lists in the same order give natural swaps; with more than two groups each goes to the next, in a ring.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from .errors import DataError

Groups = dict[str, dict[str, list[str]]]  # attribute -> group -> terms


def load_groups(path: str | Path) -> Groups:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"cannot read the groups file: {err.strerror}", path=str(path)) from None
    return parse_groups(text, str(path))


def parse_groups(text: str, path: str = "") -> Groups:
    """Groups from YAML text (`path`: where it came from, for the errors)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DataError(f"not valid YAML: {err}", path=path) from None
    shape = "expected `attribute: {group: [term, ...], other_group: [...]}`"
    if not isinstance(data, dict) or not data:
        raise DataError(shape, path=path)
    groups: Groups = {}
    for attribute, members in data.items():
        if not isinstance(members, dict) or len(members) < 2:
            raise DataError(f"{attribute!r} needs at least two groups; {shape}", path=path)
        for group, terms in members.items():
            if not isinstance(terms, list) or not terms or not all(isinstance(t, str) for t in terms):
                raise DataError(f"{attribute}.{group} must be a list of words; {shape}", path=path)
        groups[str(attribute)] = {str(g): [t.strip() for t in terms] for g, terms in members.items()}
    return groups


def _pattern(terms) -> re.Pattern:
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)


def mentions(text: str, members: dict[str, list[str]]) -> list[str]:
    """The groups of one attribute that `text` mentions."""
    return [group for group, terms in members.items() if _pattern(terms).search(text)]


def swapper(members: dict[str, list[str]]):
    """A function text -> text with each group's terms replaced by the next group's."""
    names = list(members)
    table = {}
    for position, group in enumerate(names):
        other = members[names[(position + 1) % len(names)]]
        for i, term in enumerate(members[group]):
            table.setdefault(term.lower(), other[i % len(other)])
    pattern = _pattern(table)

    def replace(match: re.Match) -> str:
        word, new = match.group(), table[match.group().lower()]
        if word.isupper() and len(word) > 1:
            return new.upper()
        return new[:1].upper() + new[1:] if word[:1].isupper() else new

    return lambda text: pattern.sub(replace, text)
