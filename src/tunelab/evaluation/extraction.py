"""Pull the answer out of free-form generated text: a number (GSM8K), a label word, a multiple-choice letter.

Each returns a normalised answer or None when the text holds none, so reports can count unparsable replies
separately from wrong ones.
"""

from __future__ import annotations

import re

# A minus counts only when it starts a token, so "3-5" and "10-year-old" do not read as negative numbers.
# Thousands separators must be well formed ("1,234"); "1,2,3" reads as three numbers, not 123.
_NUMBER = re.compile(r"(?<![\w.])(-)?\$?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?")


def _normalise(sign: str | None, integer: str, fraction: str | None) -> str:
    integer = str(int(integer.replace(",", "")))
    fraction = (fraction or "").rstrip("0")
    text = f"{integer}.{fraction}" if fraction else integer
    return text if not sign or text == "0" else f"-{text}"


def extract_number(text: str) -> str | None:
    """The number after "####" if the text has one, else the last number; "1234", "-3.5", or None.

    Handles "$1,234.50" -> "1234.5", "-7" -> "-7", "10.00" -> "10".
    """
    if "####" in text:
        match = _NUMBER.search(text.rsplit("####", 1)[1])
        if match:
            return _normalise(*match.groups())
    matches = _NUMBER.findall(text)
    return _normalise(*matches[-1]) if matches else None


def gsm8k_reference(answer_field: str) -> str:
    """The final answer in a GSM8K `answer` field (after "####"), normalised like `extract_number`."""
    if "####" not in answer_field:
        raise ValueError("GSM8K answer has no '####' line")
    final = answer_field.rsplit("####", 1)[1].strip().replace(",", "").replace("$", "")
    if not re.fullmatch(r"-?\d+(\.\d+)?", final):
        raise ValueError(f"GSM8K final answer is not a number: {final!r}")
    sign = "-" if final.startswith("-") else None
    integer, _, fraction = final.lstrip("-").partition(".")
    return _normalise(sign, integer, fraction)


def extract_label(text: str, labels: list[str]) -> str | None:
    """The label (as spelled in `labels`) whose word appears earliest in the text, case-insensitively.

    "Positive." and "The sentiment is negative" both work; at the same position the longer label wins, so
    "very positive" beats "positive". Negation is not understood: "not positive" gives "positive".
    """
    best = None  # (start, -length, label)
    for label in labels:
        match = re.search(rf"(?<!\w){re.escape(label)}(?!\w)", text, re.IGNORECASE)
        if match and (best is None or (match.start(), -len(label)) < best[:2]):
            best = (match.start(), -len(label), label)
    return best[2] if best else None


def extract_choice(text: str, letters: str = "ABCD") -> str | None:
    """A multiple-choice letter: "B", "(B)", "Answer: B", "the answer is (b)", "b) Paris", "B. Paris".

    Explicit forms are tried first. A bare capital letter elsewhere counts only when exactly one of the
    letters appears that way, since "A" is also an article: "A or C, hard to say" gives None.
    """
    by_lower = {c.lower(): c for c in letters}
    group = f"([{re.escape(letters)}])"
    explicit = [
        rf"answer\s*(?:is|:)\s*\(?{group}(?!\w)",  # "Answer: B", "the answer is (b)"
        rf"^\s*\(?{group}\)?\s*$",  # the whole reply is the letter
        rf"^\s*\(?{group}[).:]",  # "B. Paris", "b) Paris" at the start
        rf"\({group}\)",  # "(B)" anywhere
        rf"(?<!\w){group}\)",  # "b)" anywhere
    ]
    for pattern in explicit:
        match = re.search(pattern, text, re.IGNORECASE)
        if match:
            return by_lower[match.group(1).lower()]
    bare = set(re.findall(rf"(?<!\w)([{re.escape(letters.upper())}])(?!\w)", text))
    return by_lower[bare.pop().lower()] if len(bare) == 1 else None
