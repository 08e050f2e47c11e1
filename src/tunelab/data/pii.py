"""Find personal data in text and replace it with typed placeholders that stay consistent in an example.

Phone numbers come from `phonenumbers` (Google's libphonenumber). E-mail, URL, IP, card and IBAN are
short patterns confirmed by a check (Luhn, ISO 13616 mod-97, `ipaddress`): Presidio's recognisers for
these are the same kind of pattern plus checksum, but its analyzer needs spaCy and a language model that
PyPI does not ship, so it does not work offline. Person names and places are found only when spaCy and
its `en_core_web_sm` model are installed; `detectors()` says which ran, so no report claims names were
removed when no named-entity model looked for them.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import Counter
from dataclasses import dataclass

import phonenumbers

KINDS = ("EMAIL", "URL", "IBAN", "CREDIT_CARD", "IP_ADDRESS", "PHONE", "PERSON", "LOCATION")

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"'`]+", re.IGNORECASE)
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
# Digits may end a sentence ("... 1111."), but not go on as a longer number or version ("1111.5").
CARD = re.compile(r"(?<![\d-])(?<!\d\.)(?:\d[ -]?){12,18}\d(?![\d-])(?!\.\d)")
# Not after a letter or "v": "v1.2.3.4" style versions are not addresses.
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w)(?!\.\d)")
# Context, as Presidio's recognisers weigh it: a dotted quad right after one of these words is a version.
VERSION_WORD = re.compile(r"\b(?:version|release|build|v)[ \t]*:?[ \t]*\Z", re.IGNORECASE)  # same line only
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int
    text: str


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        n = int(char) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    code = text.replace(" ", "")
    if not 15 <= len(code) <= 34:
        return False
    moved = code[4:] + code[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _card(match: re.Match) -> bool:
    digits = re.sub(r"\D", "", match.group())
    # Issuer prefixes 2-6 (Mastercard, Amex, Visa, Discover...): an order number that happens to pass
    # Luhn (one in ten do) but starts with 0, 1, 7, 8 or 9 is not a card.
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and len(set(digits)) > 1 and luhn_ok(digits)


def _ip(match: re.Match) -> bool:
    if sum(c in "0123456789abcdefABCDEF" for c in match.group()) < 2:
        return False  # "::" alone is an address, but in text it is Haskell or C++ punctuation
    try:
        ipaddress.ip_address(match.group())
    except ValueError:
        return False
    return True


def _ipv4(match: re.Match) -> bool:
    start = match.start()
    return _ip(match) and not VERSION_WORD.search(match.string, max(0, start - 16), start)


def _url_end(text: str) -> int:
    """A URL's sentence punctuation is not part of it."""
    return len(text.rstrip(".,;:!?)]}'\""))


PATTERNS = [
    ("EMAIL", EMAIL, None),
    ("URL", URL, None),
    ("IBAN", IBAN, lambda m: iban_ok(m.group())),
    ("CREDIT_CARD", CARD, _card),
    ("IP_ADDRESS", IPV4, _ipv4),
    ("IP_ADDRESS", IPV6, _ip),
]


@functools.cache
def _ner():
    """spaCy's small English model when installed, else None (it is not on PyPI: never downloaded)."""
    try:
        import spacy

        return spacy.load("en_core_web_sm")
    except (ImportError, OSError):
        return None


def detectors() -> list[str]:
    """The kinds of personal data looked for on this machine."""
    return [kind for kind in KINDS if kind not in ("PERSON", "LOCATION") or _ner() is not None]


def find_pii(text: str, region: str = "US") -> list[Finding]:
    """Non-overlapping findings in text order; an earlier detector in `KINDS` wins an overlap."""
    found = []
    for kind, pattern, check in PATTERNS:
        for match in pattern.finditer(text):
            if check is None or check(match):
                end = match.start() + (_url_end(match.group()) if kind == "URL" else len(match.group()))
                found.append(Finding(kind, match.start(), end, text[match.start() : end]))
    # STRICT_GROUPING: a valid number for its region, its digits grouped as that country writes them, which
    # rules out dates, versions and order numbers such as "ORD-2023-000451" (VALID alone flags that one).
    leniency = phonenumbers.Leniency.STRICT_GROUPING
    for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=leniency):
        found.append(Finding("PHONE", match.start, match.end, match.raw_string))
    nlp = _ner()
    if nlp is not None:
        for entity in nlp(text).ents:
            kind = {"PERSON": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION"}.get(entity.label_)
            if kind:
                found.append(Finding(kind, entity.start_char, entity.end_char, entity.text))
    kept: list[Finding] = []
    for finding in sorted(found, key=lambda f: (KINDS.index(f.kind), f.start)):
        if all(finding.end <= k.start or finding.start >= k.end for k in kept):
            kept.append(finding)
    return sorted(kept, key=lambda f: f.start)


class Placeholders:
    """`<EMAIL_1>`, `<EMAIL_2>`...: one numbering per example, so the same value gets the same name."""

    def __init__(self):
        self.names: dict[tuple[str, str], str] = {}
        self.counts: Counter = Counter()

    def name(self, finding: Finding) -> str:
        key = (finding.kind, finding.text.lower() if finding.kind in ("EMAIL", "URL") else finding.text)
        if key not in self.names:
            self.counts[finding.kind] += 1
            self.names[key] = f"<{finding.kind}_{self.counts[finding.kind]}>"
        return self.names[key]


def mask(text: str, findings: list[Finding], placeholders: Placeholders) -> str:
    parts, cursor = [], 0
    for finding in findings:
        parts += [text[cursor : finding.start], placeholders.name(finding)]
        cursor = finding.end
    return "".join(parts) + text[cursor:]


def scan_texts(texts) -> Counter:
    """Findings per kind over many texts (the service's warning)."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(finding.kind for finding in find_pii(text))
    return counts
