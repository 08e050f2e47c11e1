"""`tunelab eval` on tiny models: likelihood scoring, prompting baselines, MMLU, forgetting, outputs."""

import json
import math

import pytest
import torch

from conftest import SHARED_DATA, copy_task_pairs, copy_task_rows, write_jsonl
from tunelab.errors import UserError
from tunelab.evaluation import evaluate, forgetting, score_predictions
from tunelab.evaluation.benchmarks import read_split, stratified_sample
from tunelab.evaluation.prompting import PromptStyle, build_messages, pick_shots
from tunelab.evaluation.runner import EvalConfig
from tunelab.evaluation.scoring import _sequence_scores, _single_token_scores, candidate_ids
from tunelab.inference import load_for_inference
from tunelab.inference.generation import chat_prompt_ids
from tunelab.training import TrainConfig, train

SUBJECTS = ("algebra", "biology")


@pytest.fixture
def mmlu_dir(tmp_path):
    for split, n in (("dev", 5), ("val", 12)):
        (tmp_path / split).mkdir()
        for subject in SUBJECTS:
            rows = [f'q{i} about {subject},one,two,"three, four",five,{"ABCD"[i % 4]}' for i in range(n)]
            (tmp_path / split / f"{subject}_{split}.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_single_token_fast_path_equals_full_scoring(tiny_llama_dir):
    model, tokenizer = load_for_inference(str(tiny_llama_dir))
    prompts = [[{"role": "user", "content": "say the quick brown fox"}], [{"role": "user", "content": "x"}]]
    ids = [chat_prompt_ids(tokenizer, p) for p in prompts]
    letters = candidate_ids(tokenizer, ["A", "B", "C", "D"])
    assert all(len(c) == 1 for c in letters)
    fast = _single_token_scores(model, ids, [c[0] for c in letters], tokenizer.pad_token_id, batch_size=2)
    slow = _sequence_scores(model, ids, letters, tokenizer.pad_token_id, batch_size=3)
    assert torch.allclose(fast, slow, atol=1e-4)


def test_k_shot_layout_and_exclusion():
    pool = list(range(10))
    assert 3 not in pick_shots(pool, 9, seed=0, exclude=3)
    assert pick_shots(pool, 4, seed=1) == pick_shots(pool, 4, seed=1)
    style = PromptStyle(shots=2, cot=True, instruction="Solve.")
    messages = build_messages(
        "2+2?", [("1+1?", "1+1 = <<1+1=2>>2\n#### 2"), ("3+3?", "#### 6")], style, "sys"
    )
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[2]["content"] == "1+1 = 2\n#### 2"  # calculator notes dropped from exemplars
    assert messages[-1]["content"].startswith("Solve.\n\n2+2?") and "step by step" in messages[-1]["content"]


def test_mmlu_reading_and_stratified_limit(mmlu_dir):
    questions = read_split(mmlu_dir, "val")
    assert len(questions) == 24 and questions[0].options[2] == "three, four"
    sample = stratified_sample(questions, 10, seed=0)
    assert len(sample) == 10 and {q.subject for q in sample} == {"algebra", "biology"}


def test_multiple_choice_eval_writes_json_markdown_and_predictions(tiny_llama_dir, mmlu_dir, tmp_path):
    out = tmp_path / "res" / "mmlu.json"
    config = EvalConfig(
        model=str(tiny_llama_dir), task="multiple-choice", benchmark=f"mmlu:{mmlu_dir}", shots=2
    )
    results = evaluate(config, str(out))["results"]
    assert results["examples"] == 24 and 0 <= results["value"] <= 1
    assert results["ci95"][0] <= results["value"] <= results["ci95"][1]
    assert set(results["by_subject"]) == {"algebra", "biology"}
    assert json.loads(out.read_text())["results"]["value"] == results["value"]
    assert "| value |" in out.with_suffix(".md").read_text()
    assert len(out.with_suffix(".predictions.jsonl").read_text().splitlines()) == 24


def test_generation_eval_with_number_extraction(tiny_llama_dir, tmp_path):
    rows = [{"question": f"What is {i} + 1?", "answer": f"It is {i + 1}.\n#### {i + 1}"} for i in range(6)]
    data = write_jsonl(tmp_path / "maths.jsonl", rows)
    config = EvalConfig(model=str(tiny_llama_dir), data=str(data), answer="number", shots=2, cot=True,
                        max_new_tokens=4)  # fmt: skip
    results = evaluate(config, str(tmp_path / "gen.json"))["results"]
    assert results["main_metric"] == "exact_match" and results["examples"] == 6
    assert results["prompt_tokens_mean"] > 40  # two exemplars ride along with every question
    predictions = [json.loads(x) for x in (tmp_path / "gen.predictions.jsonl").read_text().splitlines()]
    assert predictions[0]["reference"] == "1"


def test_classification_eval_reports_confusion_and_calibration(tiny_llama_dir, tmp_path):
    rows = [{"text": "the film was " + ("great" if i % 2 else "bad"), "label": i % 2} for i in range(10)]
    data = write_jsonl(tmp_path / "cls.jsonl", rows)
    config = EvalConfig(model=str(tiny_llama_dir), data=str(data), task="classification",
                        labels="negative,positive", val=str(data))  # fmt: skip
    results = evaluate(config, str(tmp_path / "cls.json"))["results"]
    assert results["main_metric"] == "accuracy"
    assert sum(map(sum, results["report"]["confusion"]["matrix"])) == 10
    assert 0 <= results["calibration"]["ece"] <= 1
    assert (tmp_path / "reliability.png").exists()
    assert "temperature" in results["temperature_scaling"]


def test_perplexity_is_exp_of_mean_token_loss(tiny_llama_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join("the quick brown fox jumps over the lazy dog" for _ in range(20)))
    config = EvalConfig(
        model=str(tiny_llama_dir), data=str(corpus), task="perplexity", max_length=16, precision="fp32"
    )
    results = evaluate(config)["results"]
    assert results["value"] == pytest.approx(math.exp(results["loss"]))
    # the same number from transformers' own loss (blocks are equal-sized, so the mean of means is the mean)
    from tunelab.data import load_documents
    from tunelab.data.tokenize import encode_documents

    model, tokenizer = load_for_inference(str(tiny_llama_dir))
    blocks = encode_documents(load_documents(corpus), tokenizer, 16)
    ids = torch.tensor([b.input_ids for b in blocks])
    with torch.no_grad():
        reference = model(input_ids=ids, labels=ids).loss.item()
    assert results["loss"] == pytest.approx(reference, rel=1e-4)


def test_forgetting_compares_base_and_adapter(tiny_llama_dir, mmlu_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": "A"}]}
            for i in range(16)]  # fmt: skip
    data = write_jsonl(tmp_path / "a.jsonl", rows)
    adapter = tmp_path / "lora"
    train(TrainConfig(model=str(tiny_llama_dir), data=str(data), out=str(adapter), max_steps=10, lr=3e-2))
    config = EvalConfig(model=str(tiny_llama_dir), adapter=str(adapter), task="multiple-choice",
                        benchmark=f"mmlu:{mmlu_dir}")  # fmt: skip
    results = forgetting(config, str(tmp_path / "forget.json"))["results"]
    assert results["value"] == pytest.approx(results["tuned"]["value"] - results["base"]["value"])
    low, high = results["ci95"]
    assert low <= results["value"] <= high


def test_scoring_predictions_made_elsewhere(tmp_path):
    preds = write_jsonl(tmp_path / "p.jsonl", [
        {"prediction": "It is very cold outside", "reference": "It is cold outside"},
        {"prediction": "hello", "references": ["hello", "hi"]},
    ])  # fmt: skip
    results = score_predictions(str(preds), "rouge,exact_match", str(tmp_path / "s.json"))["results"]
    assert results["exact_match"] == pytest.approx(0.5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prediction": "x"}\n')
    with pytest.raises(Exception, match="bad.jsonl:1"):
        score_predictions(str(bad), "exact_match", str(tmp_path / "t.json"))


@pytest.mark.skipif(not (SHARED_DATA / "mmlu").exists(), reason="../shared/data/mmlu is not available")
def test_real_mmlu_layout_reads():
    assert len(read_split(SHARED_DATA / "mmlu", "val")) == 1542
    assert len(read_split(SHARED_DATA / "mmlu", "dev")) == 285


def test_contextual_calibration_divides_out_the_prompts_label_prior(tiny_llama_dir, tmp_path, monkeypatch):
    """A scorer that prefers 'negative' whatever the text: calibration removes that prior, and the
    content-free prompts keep the instruction every question shares and the same exemplars."""
    from tunelab.evaluation import runner

    rows = [{"text": f"Sentiment?\n\nreview {i}", "label": i % 2} for i in range(6)]
    data = write_jsonl(tmp_path / "cls.jsonl", rows)
    seen = []

    def biased(model, tokenizer, prompts, candidates, *args):
        seen.append(prompts)
        scores = []
        for messages in prompts:
            text = messages[-1]["content"]
            number = int(text.split()[-1]) if text[-1].isdigit() else None
            lean = 0.0 if number is None else (0.5 if number % 2 else -0.5)  # the text's true signal
            scores.append([math.log(0.8), math.log(0.2) + lean])  # a prior of 0.8 for "negative"
        return torch.tensor(scores).log_softmax(-1)

    monkeypatch.setattr(runner, "score_candidates", biased)
    config = dict(model=str(tiny_llama_dir), data=str(data), task="classification",
                  labels="negative,positive", instruction="")  # fmt: skip
    plain = evaluate(EvalConfig(**config))["results"]
    calibrated = evaluate(EvalConfig(**config, calibrate="contextual"))["results"]
    assert plain["value"] == 0.5, "uncalibrated, the prior wins: every answer is 'negative'"
    assert calibrated["value"] == 1.0 and calibrated["calibrate"] == "contextual"
    content_free = seen[-1]
    assert [m[-1]["content"] for m in content_free] == [
        "Sentiment?\n\nN/A",
        "Sentiment?\n\n",
        "Sentiment?\n\n[MASK]",
    ]


def test_unknown_calibration_modes_are_refused():
    with pytest.raises(Exception, match="--calibrate"):
        EvalConfig(task="classification", calibrate="platt")


def test_benchmark_prompts_follow_the_harness_layout():
    from tunelab.evaluation.benchmarks import Question, context

    shot = Question("algebra", " 1+1? ", ["1", "2", "3", "4"], 1)
    question = Question("algebra", "2+2?", ["4", "5", "6", "7"], 0)
    assert context(question, [shot], "letter") == (
        "The following are multiple choice questions (with answers) about algebra.\n\n"
        "1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
        "2+2?\nA. 4\nB. 5\nC. 6\nD. 7\nAnswer:"
    )
    assert context(question, [shot], "cloze") == (
        "The following are questions (with answers) about algebra.\n\n"
        "Question: 1+1?\nAnswer: 2\n\nQuestion: 2+2?\nAnswer:"
    )
    assert question.scored("letter") == ["A", "B", "C", "D"] and question.scored("cloze") == question.options


def test_continuations_are_split_as_the_harness_splits_them(tiny_llama_dir):
    from tunelab.evaluation.scoring import encode_pair, score_continuations

    model, tokenizer = load_for_inference(str(tiny_llama_dir))
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    context, continuation = encode_pair(tokenizer, "Answer: ", "B", max_length=64)
    assert context == ids("Answer:") and context + continuation == ids("Answer: B")
    contexts = ["Question: say the quick brown fox\nAnswer:", "Question: x\nAnswer:"]
    letters = [[" A", " B", " C"]] * 2
    fast = score_continuations(model, tokenizer, contexts, letters)  # one forward pass per question
    pairs = score_continuations(model, tokenizer, contexts, [[" A", " B", " C"], [" A", " B", " C "]])
    assert torch.allclose(torch.tensor(fast)[:, :2], torch.tensor(pairs)[:, :2], atol=1e-4)


def test_cloze_mode_on_a_jsonl_benchmark_reports_acc_and_acc_norm(tiny_llama_dir, tmp_path):
    rows = [{"question": f"Pick {i}?", "choices": ["yes", "no", "a much longer answer"], "answer": i % 3}
            for i in range(9)]  # fmt: skip
    bench = write_jsonl(tmp_path / "arc.jsonl", rows)
    config = EvalConfig(model=str(tiny_llama_dir), task="multiple-choice", benchmark=f"mc:{bench}",
                        mode="cloze", shots=2, shots_from=str(bench))  # fmt: skip
    results = evaluate(config, str(tmp_path / "arc.json"))["results"]
    assert results["mode"] == "cloze" and results["examples"] == 9 and 0 <= results["acc_norm"] <= 1
    assert results["chance"] == pytest.approx(1 / 3)
    predictions = [json.loads(x) for x in (tmp_path / "arc.predictions.jsonl").read_text().splitlines()]
    for row in predictions:
        lls = row["loglikelihoods"]
        assert row["prediction"] == max(range(3), key=lls.__getitem__)


def test_bad_jsonl_benchmarks_name_the_line(tmp_path):
    from tunelab.evaluation.benchmarks import read_jsonl

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": "q", "choices": ["a"]}\n'
    )
    with pytest.raises(Exception, match="bad.jsonl:2"):
        read_jsonl(bad)
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 2}\n')
    with pytest.raises(Exception, match="bad.jsonl:1: answer must be an index"):
        read_jsonl(bad)


def summed_answer_logps(model, tokenizer, messages: list[dict], answer: str) -> float:
    """An answer's summed log-probs from the model's plain logits: the prompt rendered with the generation
    prompt, then the answer's tokens and the end of turn."""
    prompt = chat_prompt_ids(tokenizer, messages)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt + answer_ids])
    with torch.no_grad():
        logps = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
    targets = ids[0, len(prompt) :]
    return float(logps[len(prompt) - 1 :].gather(-1, targets[:, None]).sum())


def test_preference_eval_scores_each_answer_with_the_tuned_model_and_the_adapter_disabled(
    tiny_llama_dir, tmp_path
):
    data = write_jsonl(tmp_path / "pairs.jsonl", copy_task_pairs(12))
    sft = write_jsonl(
        tmp_path / "sft.jsonl", [{"messages": r["prompt"] + r["chosen"]} for r in copy_task_pairs(12)]
    )
    adapter = tmp_path / "lora"
    train(TrainConfig(model=str(tiny_llama_dir), data=str(sft), out=str(adapter), max_steps=4, lr=3e-2))
    config = EvalConfig(model=str(tiny_llama_dir), adapter=str(adapter), data=str(data), task="preference",
                        precision="fp32", batch_size=5)  # fmt: skip
    results = evaluate(config, str(tmp_path / "pref.json"))["results"]
    rows = [json.loads(x) for x in (tmp_path / "pref.predictions.jsonl").read_text().splitlines()]
    assert results["main_metric"] == "reward_accuracy" and results["base"] == "the adapter disabled"
    assert results["examples"] == len(rows) == 12 and results["ties"] == 0

    # every score is the answer's summed log-prob, under the adapter and under the bare base
    tuned, _ = load_for_inference(str(tiny_llama_dir), str(adapter))
    base, tokenizer = load_for_inference(str(tiny_llama_dir))
    pair, row = copy_task_pairs(12)[1], rows[1]
    for model, side, key in ((tuned, "chosen", "tuned_chosen"), (base, "rejected", "base_rejected")):
        assert row[key] == pytest.approx(summed_answer_logps(model, tokenizer, pair["prompt"],
                                                             pair[side][0]["content"]), abs=1e-4)  # fmt: skip

    margins = [
        (r["tuned_chosen"] - r["base_chosen"]) - (r["tuned_rejected"] - r["base_rejected"]) for r in rows
    ]
    assert results["reward_accuracy"]["value"] == results["value"] == sum(m > 0 for m in margins) / 12
    assert results["margin"]["value"] == pytest.approx(sum(margins) / 12)
    own = sum(r["tuned_chosen"] > r["tuned_rejected"] for r in rows) / 12
    assert results["preference_accuracy"]["value"] == own
    for name in ("reward_accuracy", "margin", "preference_accuracy"):
        low, high = results[name]["ci95"]
        assert low <= results[name]["value"] <= high, name
    assert "| margin.unit | nats of summed answer log-prob" in (tmp_path / "pref.md").read_text()


def test_preference_eval_of_a_base_model_reports_its_own_preference_accuracy_only(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", copy_task_pairs(6))
    results = evaluate(EvalConfig(model=str(tiny_llama_dir), data=str(data), task="preference"))["results"]
    assert results["main_metric"] == "preference_accuracy" and results["reward_accuracy"] is None
    assert results["value"] == results["preference_accuracy"]["value"] and "no base" in results["note"]


def test_preference_eval_finds_a_whole_models_base_in_its_run_config(tiny_llama_dir, tmp_path):
    """A whole-model run folder (full fine-tuning) is scored against the `model` its config names; here
    the same weights, so every margin is a tie: reward accuracy 0, as TRL counts a tie, and a note."""
    from tiny import make_model_dir
    from tunelab.run_dir import RunDir

    tuned = make_model_dir(tmp_path / "full")  # seeded: tiny_llama_dir's weights
    RunDir(tuned).write_config({"model": str(tiny_llama_dir), "method": "full"})
    data = write_jsonl(tmp_path / "pairs.jsonl", copy_task_pairs(4))
    results = evaluate(EvalConfig(model=str(tuned), data=str(data), task="preference"))["results"]
    assert results["base"] == str(tiny_llama_dir) and results["ties"] == 4
    assert results["reward_accuracy"]["value"] == 0.0 and "every margin is 0" in results["note"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (copy_task_rows(3), "expected preference pairs .* found supervised examples"),
        ([{"prompt": "say bob", "chosen": "bob"}], r"pairs.jsonl:1: no 'rejected' answer"),
    ],
)
def test_preference_eval_refuses_other_data_naming_file_and_line(tiny_llama_dir, tmp_path, rows, message):
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(UserError, match=message):
        evaluate(EvalConfig(model=str(tiny_llama_dir), data=str(data), task="preference"))
