"""`tunelab data report`: sizes and lengths, train/val/test leakage (exact and near copies), 13-gram
benchmark overlap, group shares with a label test, and the HTML page opened in headless Chromium."""

from __future__ import annotations

import random

import pytest
from typer.testing import CliRunner

from conftest import write_jsonl
from pages import browser_or_skip, launch
from tunelab.cli import app
from tunelab.data.groups import load_groups, mentions, swapper
from tunelab.data.report import data_report, write_report

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu red green blue black white"
).split()


def sentences(n: int, seed: int, length: int = 24) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(length)) for _ in range(n)]


def test_leakage_finds_pasted_and_near_copied_rows(tmp_path):
    train = sentences(60, seed=1, length=40)
    near = train[10].split()
    near[5] = "zzz"  # one word changed in 40: 35 of 41 word 3-grams shared, Jaccard 0.85
    val = sentences(20, seed=2, length=40) + train[:3] + [" ".join(near)]
    write_jsonl(tmp_path / "train.jsonl", [{"text": t, "label": i % 2} for i, t in enumerate(train)])
    write_jsonl(tmp_path / "val.jsonl", [{"text": t, "label": i % 2} for i, t in enumerate(val)])
    report = data_report(str(tmp_path / "train.jsonl"), val=str(tmp_path / "val.jsonl"))
    leak = report["leakage"]["val"]
    assert (leak["exact"], leak["near"], leak["compared"]) == (3, 1, 24)
    assert leak["lines"] == [21, 22, 23, 24] and leak["samples"][0]["train_line"] == 1
    assert report["splits"]["train"]["labels"] == {"0": 30, "1": 30}


def test_benchmark_ngram_overlap(tmp_path):
    question = " ".join(sentences(1, seed=3, length=20))
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "qa_dev.csv").write_text(f'"{question}",A,B,C,D,A\n')
    rows = [{"prompt": p, "completion": "ok"} for p in sentences(9, seed=4)]
    rows.append({"prompt": "Answer this: " + question, "completion": "A"})
    write_jsonl(tmp_path / "train.jsonl", rows)
    overlap = data_report(str(tmp_path / "train.jsonl"), benchmark=str(bench))["benchmark"]
    assert overlap["splits"]["train"]["contaminated"] == 1 and overlap["n"] == 13
    assert overlap["splits"]["train"]["samples"][0]["line"] == 10


GROUPS = "gender:\n  female: [she, her, woman, Mary]\n  male: [he, his, man, John]\n"


def test_groups_load_mentions_and_swap(tmp_path):
    (tmp_path / "g.yaml").write_text(GROUPS)
    members = load_groups(tmp_path / "g.yaml")["gender"]
    assert mentions("She said the man left", members) == ["female", "male"]
    assert mentions("shepherd", members) == []
    swap = swapper(members)
    assert swap("She gave her book to John; he thanked HER.") == "He gave his book to Mary; she thanked HIS."
    (tmp_path / "bad.yaml").write_text("gender: [she, he]\n")
    with pytest.raises(Exception, match="at least two groups"):
        load_groups(tmp_path / "bad.yaml")


def write_skewed(tmp_path, skewed: bool):
    rng = random.Random(0)
    rows = []
    for i in range(80):
        pronoun = rng.choice(["she", "he"])
        label = (pronoun == "he") if skewed else rng.random() < 0.5
        rows.append(
            {
                "text": f"{pronoun} wrote {' '.join(rng.choice(WORDS) for _ in range(6))} {i}",
                "label": int(label),
            }
        )
    (tmp_path / "g.yaml").write_text(GROUPS)
    return write_jsonl(tmp_path / f"skewed{skewed}.jsonl", rows)


def test_bias_shows_label_skew_with_a_significance_test(tmp_path):
    skewed = data_report(str(write_skewed(tmp_path, True)), groups=str(tmp_path / "g.yaml"))["bias"]["gender"]
    fair = data_report(str(write_skewed(tmp_path, False)), groups=str(tmp_path / "g.yaml"))["bias"]["gender"]
    assert skewed["test"]["p_value"] < 0.01 < fair["test"]["p_value"]
    assert skewed["groups"]["female"]["labels"] == {"0": skewed["groups"]["female"]["examples"]}
    shares = skewed["groups"]["female"]["share"] + skewed["groups"]["male"]["share"]
    assert shares == pytest.approx(1.0)


def test_cli_report_writes_html_and_json(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    data = write_skewed(tmp_path, True)
    out = tmp_path / "report.html"
    args = ["data", "report", str(data), "--val", str(data), "--groups", str(tmp_path / "g.yaml"),
            "--model", str(tiny_llama_dir), "--max-length", "20", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "Leakage" in text and "data:image/png;base64," in text and "p = " in text
    assert '"truncated_share"' in out.with_suffix(".json").read_text()


@pytest.mark.browser
def test_report_opens_in_a_browser(tiny_llama_dir, tmp_path):
    chromium, sync_api = browser_or_skip()
    from tunelab.models import load_tokenizer

    data = write_skewed(tmp_path, True)
    report = data_report(str(data), val=str(data), groups=str(tmp_path / "g.yaml"),
                         tokenizer=load_tokenizer(str(tiny_llama_dir)), max_length=20)  # fmt: skip
    page_file = write_report(report, tmp_path / "report.html")
    with sync_api.sync_playwright() as p:
        browser = launch(p, chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(page_file.as_uri())
        sync_api.expect(page.locator("h1")).to_have_text("tunelab data report")
        sync_api.expect(page.get_by_text("Leakage: train prompts copied in val/test")).to_be_visible()
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
        assert widths and all(w > 0 for w in widths)
        browser.close()


def test_a_preference_report_has_lengths_per_answer_duplicates_pii_and_leakage_on_prompts(
    tmp_path, tiny_tokenizer
):
    prompts = sentences(6, seed=3, length=8)

    def pair(prompt: str, chosen: str, rejected: str) -> dict:
        answer = {"role": "assistant"}
        return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{**answer, "content": chosen}],
                "rejected": [{**answer, "content": rejected}]}  # fmt: skip

    train = [pair(p, "yes", "no " * 100) for p in prompts[:4]] + [pair(prompts[0], "yes", "no " * 100)]
    train.append(pair("write to ann@example.com", "ok", "no"))
    # A val pair with a train prompt and other answers leaks all the same: leakage is on prompts.
    val = [pair(prompts[1], "other", "answers"), pair(prompts[5], "yes", "no")]
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "val.jsonl", val)
    train_file, val_file = str(tmp_path / "train.jsonl"), str(tmp_path / "val.jsonl")
    report = data_report(train_file, val=val_file, tokenizer=tiny_tokenizer, max_length=100)
    stats = report["splits"]["train"]
    assert stats["format"] == "trl-pairs" and stats["examples"] == 6
    assert stats["duplicates"] == 1 and stats["pii"] == {"EMAIL": 1}
    assert stats["role_sequences"] == {"user>assistant": 6}
    sides = stats["tokens"]["sides"]
    assert sides["rejected"]["max"] > 100 >= sides["chosen"]["max"]
    assert sides["rejected"]["truncated_share"] == 5 / 6 and sides["chosen"]["truncated_share"] == 0
    assert stats["tokens"]["max"] == sides["rejected"]["max"]
    leak = report["leakage"]["val"]
    assert (leak["exact"], leak["compared"], leak["lines"]) == (1, 2, [1])
    page = write_report(report, tmp_path / "report.html").read_text()
    assert "prompt + answer" in page and "duplicate records" in page


def test_a_kto_report_counts_good_and_bad_answers(tmp_path):
    rows = [{"prompt": "2+2?", "completion": answer, "label": answer == "4"} for answer in ("4", "5", "22")]
    report = data_report(str(write_jsonl(tmp_path / "kto.jsonl", rows)))
    assert report["splits"]["train"]["labels"] == {"bad": 2, "good": 1}
