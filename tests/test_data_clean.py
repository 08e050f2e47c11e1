"""`tunelab data clean` on small files with planted problems: personal data of every type masked with
consistent placeholders and no look-alike flagged, duplicates and near-duplicates removed, mojibake
repaired, lengths filtered, and every change in the log."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from conftest import write_jsonl
from tunelab.cli import app
from tunelab.data import pii
from tunelab.data.clean import CleanConfig, clean_file, repair_text
from tunelab.data.dedup import duplicates

PLANTED = {
    "EMAIL": ["jane.doe@example.com", "J.Smith+news@mail.example.org"],
    "PHONE": ["+1 650-253-0000", "(212) 736-5000", "+44 20 7946 0958"],
    "CREDIT_CARD": ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"],
    "IBAN": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432"],
    "IP_ADDRESS": ["192.168.1.20", "2001:db8::1"],
    "URL": ["https://example.com/profile?id=42", "www.example.org/about"],
}
LOOK_ALIKES = [
    "Your order number 100234567 has shipped.",
    "Order ORD-2023-000451 and invoice 7730012 are paid.",
    "Upgrade to version 1.2.3 or v2.10.4.1; we test on Python 3.10.12.",
    "The meeting is on 2023-10-05, 05/10/2023 or 10.05.2023 at 10:30:00.",
    "Build 20231005 fixed ticket #4521 and part no. 1234-5678.",
    "It costs $1,299.99 for 3 items; ISBN 978-3-16-148410-0.",
    "Tracking code 9400111899223100012345 is on the label.",
]


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_every_planted_item_is_found(kind):
    for value in PLANTED[kind]:
        found = pii.find_pii(f"Please contact me at {value}, thanks.")
        assert [(f.kind, f.text) for f in found] == [(kind, value)], value


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_look_alikes_are_not_flagged(text):
    assert pii.find_pii(text) == []


VERSIONS = ["version 1.2.3.4", "v10.0.0.1", "v 10.0.0.1", "release 2.0.1.7", "build 4.3.2.1",
            "Version: 1.2.3.4", "RELEASE:2.0.1.7", "(v1.2.3.4)"]  # fmt: skip


@pytest.mark.parametrize("version", VERSIONS)
def test_a_dotted_quad_after_a_version_word_is_not_an_address(version):
    assert pii.find_pii(f"Upgrade to {version} tonight.") == []


@pytest.mark.parametrize(
    "text, address",
    [
        ("The server at 10.0.0.1 is down.", "10.0.0.1"),
        ("IP 192.168.1.20 was blocked.", "192.168.1.20"),
        ("The build server is 10.0.0.2.", "10.0.0.2"),  # the word is not right before the number
        ("the latest version\n10.0.0.5 is the gateway", "10.0.0.5"),  # nor on the same line
        ("Version 1.2.3.4 runs on 10.0.0.3 now.", "10.0.0.3"),
        ("Conversion: 10.0.0.4", "10.0.0.4"),  # "version" only as a whole word
    ],
)
def test_addresses_near_version_words_are_still_found(text, address):
    assert [(f.kind, f.text) for f in pii.find_pii(text)] == [("IP_ADDRESS", address)]


def test_checksums():
    assert pii.luhn_ok("4111111111111111") and not pii.luhn_ok("4111111111111112")
    assert pii.iban_ok("DE89370400440532013000") and not pii.iban_ok("DE89370400440532013001")


def test_detectors_never_claim_names_without_a_model():
    ran = pii.detectors()
    assert set(PLANTED) <= set(ran)
    assert ("PERSON" in ran) == (pii._ner() is not None)


def test_mask_uses_consistent_placeholders_inside_an_example(tmp_path):
    rows = [
        {"messages": [
            {"role": "user", "content": "Mail jane@example.com or bob@example.com, call +1 650-253-0000."},
            {"role": "assistant", "content": "Wrote Jane@example.com, paid with 4111 1111 1111 1111."},
        ]},
        {"messages": [
            {"role": "user", "content": "Is bob@example.com right? My IP is 10.0.0.7."},
            {"role": "assistant", "content": "Yes, see https://example.com/x."},
        ]},
    ]  # fmt: skip
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    result = clean_file(data, tmp_path / "out.jsonl", CleanConfig(dedup=False, lengths=False))
    first, second = [
        json.loads(line)["messages"] for line in (tmp_path / "out.jsonl").read_text().splitlines()
    ]
    assert first[0]["content"] == "Mail <EMAIL_1> or <EMAIL_2>, call <PHONE_1>."
    assert first[1]["content"] == "Wrote <EMAIL_1>, paid with <CREDIT_CARD_1>."
    # numbering starts again in each example
    assert second[0]["content"] == "Is <EMAIL_1> right? My IP is <IP_ADDRESS_1>."
    assert second[1]["content"] == "Yes, see <URL_1>."
    assert dict(result.pii) == {"EMAIL": 4, "PHONE": 1, "CREDIT_CARD": 1, "IP_ADDRESS": 1, "URL": 1}


def test_pii_drop_and_report_modes(tmp_path):
    rows = [{"prompt": "Write to ann@example.com", "completion": "Done."},
            {"prompt": "Hello there friend", "completion": "Hi."}]  # fmt: skip
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    clean_file(data, tmp_path / "drop.jsonl", CleanConfig(pii="drop", lengths=False))
    assert [json.loads(x)["prompt"] for x in (tmp_path / "drop.jsonl").read_text().splitlines()] == [
        rows[1]["prompt"]
    ]
    result = clean_file(data, tmp_path / "report.jsonl", CleanConfig(pii="report", lengths=False))
    assert (tmp_path / "report.jsonl").read_text().count("ann@example.com") == 1 and result.pii["EMAIL"] == 1
    log = [json.loads(x) for x in (tmp_path / "report.changes.jsonl").read_text().splitlines()]
    assert log == [{"line": 1, "step": "pii", "field": "prompt", "action": "report",
                    "found": [{"kind": "EMAIL", "text": "ann@example.com"}]}]  # fmt: skip


SENTENCE = (
    "the committee met on tuesday to review the budget for the new library and decided that the reading "
    "room should stay open until nine in the evening during the exam weeks of the spring term"
)


def test_near_duplicates_with_one_word_changed_are_removed_and_distinct_ones_kept():
    texts = [
        SENTENCE,
        "a recipe for bread needs flour water salt and yeast, mixed and left to rise for two hours",
        SENTENCE.replace("tuesday", "monday"),
        SENTENCE.upper() + "!",  # the same text once case and punctuation are set aside
        "the committee met on friday to discuss the football pitch and agreed to repaint the lines",
    ]
    found = {(m.index, m.of, m.kind) for m in duplicates(texts, 0.8)}
    assert found == {(2, 0, "near"), (3, 0, "exact")}
    assert {(m.index, m.of) for m in duplicates(texts, 0.8, near=False)} == {(3, 0)}


def test_repairs_mojibake_unicode_control_characters_and_spacing():
    assert repair_text("cafÃ©  \r\nnai\u0308ve\x00 text   \n\n\n\nend ") == "café\nnaïve text\n\nend"
    assert repair_text("    indented code\n        stays") == "indented code\n        stays"


def test_clean_logs_every_change_and_never_touches_the_input(tmp_path):
    rows = [
        {"instruction": "Explain the plan", "input": "", "output": SENTENCE},
        {"instruction": "Explain the plan", "input": "", "output": SENTENCE.replace("nine", "ten")},
        {
            "instruction": "Say where the cafÃ© is",
            "input": "",
            "output": "Next to the station, by the river.",
        },
        {"instruction": "   ", "input": "", "output": "nothing asked"},
        {"instruction": "Hi", "input": "", "output": "Ok"},
        {"instruction": "Describe it", "input": "", "output": " ".join(["word"] * 60)},
        {"instruction": "Explain the plan", "input": "", "output": SENTENCE},
        {"instruction": "Who to call?", "input": "", "output": "Call +1 650-253-0000 today."},
    ]
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(rows))
    before = hashlib.sha256(data.read_bytes()).hexdigest()
    config = CleanConfig(min_tokens=3, max_tokens=40)
    result = clean_file(data, tmp_path / "clean.jsonl", config)
    assert hashlib.sha256(data.read_bytes()).hexdigest() == before
    kept = [json.loads(x) for x in (tmp_path / "clean.jsonl").read_text().splitlines()]
    assert [r["instruction"] for r in kept] == ["Explain the plan", "Say where the café is", "Who to call?"]
    assert kept[2]["output"] == "Call <PHONE_1> today."
    assert dict(result.dropped) == {
        "near_duplicate": 1,
        "duplicate": 1,
        "empty": 1,
        "too_short": 1,
        "too_long": 1,
    }
    log = [json.loads(x) for x in (tmp_path / "clean.changes.jsonl").read_text().splitlines()]
    assert len(log) == sum(result.dropped.values()) + sum(result.changed.values())
    by_line = {(e["line"], e["step"]): e for e in log}
    assert by_line[(2, "dedup")]["kept_line"] == 1 and "Jaccard" in by_line[(2, "dedup")]["reason"]
    assert by_line[(7, "dedup")]["reason"] == "copy of line 1"
    assert by_line[(3, "repair")]["before"] == "Say where the cafÃ© is"
    assert {by_line[(n, s)]["action"] for n, s in [(4, "invalid"), (5, "length"), (6, "length")]} == {"drop"}
    assert by_line[(8, "pii")]["after"] == "Call <PHONE_1> today."


def test_lengths_are_counted_with_the_chat_template(tiny_tokenizer, tmp_path):
    rows = [{"prompt": "the quick brown fox", "completion": "jumps over the lazy dog"}]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    result = clean_file(data, tmp_path / "a.jsonl", CleanConfig(max_tokens=10), tokenizer=tiny_tokenizer)
    assert result.dropped["too_long"] == 1 and result.length_unit == "tokens"
    result = clean_file(data, tmp_path / "b.jsonl", CleanConfig(max_tokens=100), tokenizer=tiny_tokenizer)
    assert result.kept == 1


def test_cli_clean_writes_file_log_and_report(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    data = write_jsonl(
        tmp_path / "in.jsonl", [{"question": "Email me: a@example.com please", "answer": "Sure thing"}]
    )
    out, report = tmp_path / "out.jsonl", tmp_path / "clean.html"
    args = ["data", "clean", str(data), "--out", str(out), "--report", str(report), "--model", "none"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "<EMAIL_1>" in out.read_text() and (tmp_path / "out.changes.jsonl").exists()
    assert "NOT looked for" in " ".join(result.output.split()) or "PERSON" in pii.detectors()
    assert "<h1>tunelab data clean</h1>" in report.read_text()
    same = CliRunner().invoke(app, ["data", "clean", str(data), "--out", str(data), "--model", "none"])
    assert same.exit_code == 1 and "never modified" in " ".join(same.output.split())


def dpo_row(prompt: str, preferred: str, non_preferred: str) -> dict:
    return {
        "input": {"messages": [{"role": "user", "content": prompt}]},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": non_preferred}],
    }


def test_preference_pairs_are_cleaned_on_both_sides_and_the_prompt_alike(tmp_path):
    rows = [
        dpo_row("Mail ann@example.com  \nplease", "Sent to ann@example.com.", "No.\x00"),
        dpo_row("Say hi", "Hi there!", "Hi there!   "),  # the same answer once spacing is repaired
        dpo_row("Mail ann@example.com please", "Sent to ann@example.com.", "No."),  # line 1 once repaired
        dpo_row("Say bye", "Bye, see you.", "Go away."),
        {"prompt": "x", "chosen": "y", "rejected": "z"},  # another format: not a pair of this file
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    result = clean_file(data, tmp_path / "clean.jsonl", CleanConfig(lengths=False, near=False))
    assert result.format == "openai-dpo"
    kept = [json.loads(x) for x in (tmp_path / "clean.jsonl").read_text().splitlines()]
    assert kept == [
        dpo_row("Mail <EMAIL_1>\nplease", "Sent to <EMAIL_1>.", "No."),
        dpo_row("Say bye", "Bye, see you.", "Go away."),
    ]
    assert dict(result.dropped) == {"identical_sides": 1, "duplicate": 1, "invalid": 1}
    assert result.pii["EMAIL"] == 4 and result.changed["repair"] == 3
    log = [json.loads(x) for x in (tmp_path / "clean.changes.jsonl").read_text().splitlines()]
    assert {(e["line"], e["step"], e.get("field")) for e in log} >= {
        (1, "repair", "input.messages[0].content"),
        (1, "repair", "non_preferred_output[0].content"),
        (1, "pii", "preferred_output[0].content"),
        (2, "repair", None),
    }


def test_trl_text_pairs_and_kto_answers_keep_their_format_and_their_lengths_count_the_longer_side(
    tmp_path, tiny_tokenizer
):
    pairs = write_jsonl(tmp_path / "trl.jsonl", [
        {"prompt": "Call +1 650-253-0000 ", "chosen": "ok", "rejected": "no " * 30},
        {"prompt": "Call +1 650-253-0000", "chosen": "ok", "rejected": "no"},
    ])  # fmt: skip
    result = clean_file(
        pairs, tmp_path / "trl.out.jsonl", CleanConfig(max_tokens=20), tokenizer=tiny_tokenizer
    )
    assert dict(result.dropped) == {"too_long": 1}
    [kept] = [json.loads(x) for x in (tmp_path / "trl.out.jsonl").read_text().splitlines()]
    assert kept == {"prompt": "Call <PHONE_1>", "chosen": "ok", "rejected": "no"}
    # A good and a bad copy of one answer are both kept: they are not duplicates.
    kto = [{"prompt": [{"role": "user", "content": "2+2?"}], "completion": "4", "label": label}
           for label in (True, False, True)]  # fmt: skip
    result = clean_file(
        write_jsonl(tmp_path / "kto.jsonl", kto), tmp_path / "kto.out.jsonl", CleanConfig(lengths=False)
    )
    assert result.format == "unpaired" and result.kept == 2 and dict(result.dropped) == {"duplicate": 1}
