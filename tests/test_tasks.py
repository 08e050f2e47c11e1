"""Data as tasks: multi-task mixing, per-task val loss, held-out splits, continued pre-training, head."""

import json
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from conftest import SHARED_DATA, write_jsonl
from tunelab.data import load_documents
from tunelab.data.mixture import Task, epoch_indices, hold_out, mixing_weights, parse_data_spec
from tunelab.data.tokenize import encode_documents
from tunelab.errors import UserError
from tunelab.inference import classify_file, load_for_inference
from tunelab.methods import get_method
from tunelab.training import TrainConfig, train
from tunelab.training.loop import param_groups


def fixed(answer, n, prefix="say"):
    def messages(i):
        return [{"role": "user", "content": f"{prefix} {i}"}, {"role": "assistant", "content": answer}]

    return [{"messages": messages(i)} for i in range(n)]


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_data_specs_and_weights():
    assert parse_data_spec("a.jsonl:0.7") == Task("a", "a.jsonl", 0.7)
    assert parse_data_spec("b.jsonl") == Task("b", "b.jsonl", None)
    with pytest.raises(UserError):
        parse_data_spec("a.jsonl:-1")
    tasks = [Task("a", "a", train=[0] * 90), Task("b", "b", train=[0] * 10)]
    assert mixing_weights(tasks, None) == pytest.approx([0.9, 0.1])
    assert mixing_weights(tasks, "temperature:1000") == pytest.approx([0.5, 0.5], abs=0.01)
    tasks[0].weight = 0.5
    with pytest.raises(UserError, match="every file or to none"):
        mixing_weights(tasks, None)


def test_epoch_mixture_follows_the_weights():
    indices = epoch_indices([90, 10], [0.5, 0.5], seed=0, epoch=0)
    counts = Counter("a" if i < 90 else "b" for i in indices)
    assert counts == {"a": 50, "b": 50}  # the small task is up-sampled, cycling through its examples
    assert epoch_indices([90, 10], [0.5, 0.5], seed=0, epoch=0) == indices
    assert epoch_indices([5], [1.0], seed=0, epoch=3) == [0, 1, 2, 3, 4]


def test_hold_out_is_deterministic_and_disjoint():
    train_a, val_a = hold_out(list(range(100)), 0.05, seed=1)
    assert len(val_a) == 5 and not set(train_a) & set(val_a)
    assert hold_out(list(range(100)), 0.05, seed=1) == (train_a, val_a)


def test_multi_task_run_reports_val_loss_per_task(tiny_llama_dir, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", fixed("paris london", 30))
    b = write_jsonl(tmp_path / "b.jsonl", fixed("alice bob", 10, prefix="name"))
    out = tmp_path / "mt"
    cfg = TrainConfig(model=str(tiny_llama_dir), data=[f"{a}:0.5", f"{b}:0.5"], out=str(out), max_steps=6,
                      batch_size=4, lr=1e-2, val_split=0.2, eval_every=3)  # fmt: skip
    train(cfg)
    evals = [r for r in records(out / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals and {"val_loss", "val_loss/a", "val_loss/b"} <= evals[-1].keys()
    run = next(r for r in records(out / "metrics.jsonl") if r["kind"] == "run")
    assert run["tasks"] == {"a": 24, "b": 8}


def test_documents_pack_into_full_blocks(tiny_tokenizer):
    docs = ["the quick brown fox", "jumps over the lazy dog", "great film"]
    blocks = encode_documents(docs, tiny_tokenizer, block_size=4)
    stream = []
    for doc in docs:
        stream += tiny_tokenizer(doc, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
    assert all(len(b.input_ids) == 4 and b.labels == b.input_ids for b in blocks)
    assert [t for b in blocks for t in b.input_ids] == stream[: len(blocks) * 4]


def test_continued_pretraining_lowers_held_out_loss(tiny_llama_dir, tmp_path):
    text = "\n\n".join(f"the quick brown fox jumps over the lazy dog {i % 3}" for i in range(60))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    out = tmp_path / "cpt"
    cfg = TrainConfig(model=str(tiny_llama_dir), data=str(corpus), out=str(out), objective="causal-lm",
                      max_length=32, batch_size=4, max_steps=20, lr=3e-2, val_split=0.1,
                      eval_every=10)  # fmt: skip
    train(cfg)
    evals = [r["val_loss"] for r in records(out / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals[-1] < evals[0]


@pytest.mark.skipif(not (SHARED_DATA / "medquad").exists(), reason="../shared/data/medquad is not available")
def test_medical_corpus_reads_as_documents():
    docs = load_documents(SHARED_DATA / "medquad" / "medical_corpus.txt")
    assert len(docs) == 2484


def test_head_trains_classifier_and_predicts(tiny_llama_dir, tmp_path):
    rows = [{"text": f"the film was {'great wonderful' if i % 2 else 'bad awful'} {i}", "label": i % 2}
            for i in range(48)]  # fmt: skip
    data = write_jsonl(tmp_path / "cls.jsonl", rows)
    out = tmp_path / "head"
    cfg = TrainConfig(model=str(tiny_llama_dir), data=str(data), out=str(out), method="head", max_steps=40,
                      lr=1e-2, labels="negative,positive", batch_size=8,
                      options={"unfreeze_top": 1})  # fmt: skip
    result = train(cfg)
    losses = [r["loss"] for r in records(out / "metrics.jsonl") if r["kind"] == "train"]
    assert losses[-1] < losses[0]
    saved = load_file(out / "adapter_model.safetensors")
    assert "classifier.weight" in saved and any(".layers.1." in k for k in saved)  # the unfrozen top block
    assert result.summary["trainable_params"] == sum(t.numel() for t in saved.values())

    model, tokenizer = load_for_inference(str(tiny_llama_dir), str(out))
    assert model.labels == ["negative", "positive"]
    # only the head and the unfrozen top block differ from the base model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict()
    changed = {k for k, v in model.lm.state_dict().items() if not torch.equal(v, base[k])}
    assert changed and all(".layers.1." in k for k in changed)
    # reloading gives the same logits
    again, _ = load_for_inference(str(tiny_llama_dir), str(out))
    ids = tokenizer("the film was great", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(
            model(ids.input_ids, ids.attention_mask), again(ids.input_ids, ids.attention_mask)
        )
    summary = classify_file(model, tokenizer, str(data), str(tmp_path / "preds.jsonl"))
    assert summary["accuracy"] >= 0.9


def test_layer_lr_decay_groups():
    params = {
        "model.embed_tokens.weight": torch.zeros(4, 4),
        "model.layers.0.mlp.weight": torch.zeros(4, 4),
        "model.layers.1.mlp.weight": torch.zeros(4, 4),
        "model.norm.weight": torch.zeros(4),
        "classifier.weight": torch.zeros(2, 4),
    }
    cfg = TrainConfig(method="head", layer_lr_decay=0.5, weight_decay=0.01, options={"head_lr": 0.1})
    groups = param_groups(list(params.items()), cfg, lr=1.0, method=get_method("head"))
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    lrs = {name: lr_of[id(p)] for name, p in params.items()}
    assert lrs == {
        "model.embed_tokens.weight": 0.25,
        "model.layers.0.mlp.weight": 0.5,
        "model.layers.1.mlp.weight": 1.0,
        "model.norm.weight": 1.0,
        "classifier.weight": 0.1,
    }
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay_of[id(params["model.norm.weight"])] == 0.0


def test_a_head_run_predicts_its_memory(tiny_llama_dir, tmp_path):
    rows = [{"text": f"the film was {'great' if i % 2 else 'bad'}", "label": i % 2} for i in range(8)]
    data = write_jsonl(tmp_path / "cls.jsonl", rows)
    cfg = TrainConfig(model=str(tiny_llama_dir), data=str(data), out=str(tmp_path / "head"), method="head",
                      labels="negative,positive", dry_run=True)  # fmt: skip
    assert train(cfg).summary["predicted_peak_mb"] > 0  # the probe gives a classifier its class targets
