"""The chunked loss (head and cross-entropy in slices over labelled positions only) equals the plain loss on
full logits, and so do its gradients; token-budget micro-batches give the same step as example counts."""

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PromptTuningConfig, get_peft_model

from tunelab import ops
from tunelab.data.batching import collate, split_by_tokens
from tunelab.data.tokenize import IGNORE_INDEX, EncodedExample
from tunelab.models import load_model


def batch_of(tokenizer) -> dict:
    """Two rows of different lengths (right padding); labels on the answers only, one row unlabelled."""
    items = []
    for prompt, answer in (
        ("say bob", " bob paris london"),
        ("the quick brown fox jumps", " dog"),
        ("x", ""),
    ):
        p, a = tokenizer(prompt)["input_ids"], tokenizer(answer)["input_ids"] if answer else []
        items.append(EncodedExample(p + a, [IGNORE_INDEX] * len(p) + a))
    return collate(items, tokenizer.pad_token_id)


def plain_loss(model, batch, n_virtual=0) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, n_virtual:]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


@pytest.mark.parametrize("wrap", ["full", "lora", "prompt-tuning"])
def test_chunked_loss_and_gradients_equal_the_plain_ones(tiny_model_dir, monkeypatch, wrap):
    monkeypatch.setattr(ops, "LOSS_CHUNK", 3)  # several slices, the last one short
    torch.manual_seed(0)
    model, tokenizer = load_model(str(tiny_model_dir))
    if wrap == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    if wrap == "prompt-tuning":
        model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    model.double()  # float64: what is compared is the computation, not fp32's rounding order
    batch = batch_of(tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]

    chunked = ops.causal_lm_loss(model, batch, normaliser=7)
    chunked_grads = torch.autograd.grad(chunked, params)
    plain = plain_loss(model, batch, ops.virtual_tokens(model)) / 7
    plain_grads = torch.autograd.grad(plain, params)

    assert chunked.item() == pytest.approx(plain.item(), abs=1e-6)
    assert max((a - b).abs().max().item() for a, b in zip(chunked_grads, plain_grads, strict=True)) < 1e-6


def test_token_accuracy_is_the_share_of_targets_that_are_the_argmax(tiny_llama_dir, monkeypatch):
    from tunelab.objectives import get_objective
    from tunelab.objectives.base import add_stats

    monkeypatch.setattr(ops, "LOSS_CHUNK", 3)  # several slices, the last one short
    torch.manual_seed(0)
    model, tokenizer = load_model(str(tiny_llama_dir))
    batch = batch_of(tokenizer)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    predicted = logits[:, :-1].argmax(-1)  # (B, T-1)
    labelled = batch["labels"][:, 1:] != IGNORE_INDEX
    # A random model predicts no label: make every other labelled target of the first row its argmax.
    first = labelled[0].nonzero().squeeze(1)[::2]
    batch["labels"][0, first + 1] = predicted[0, first]
    hits = (predicted == batch["labels"][:, 1:]) & labelled  # (B, T-1)
    assert 0 < hits.sum() < labelled.sum()

    sft = get_objective("sft")
    loss, stats = sft.loss_with_stats(model, batch, normaliser=7)
    assert stats == {"mean_token_accuracy": (float(hits.sum()), int(labelled.sum()))}
    assert loss.item() == pytest.approx(ops.causal_lm_loss(model, batch, 7).item(), abs=1e-6)
    # Row by row (micro-batches), the totals are the same: a mean weighted by targets, not of row means.
    totals: dict = {}
    rows = [{key: value[r : r + 1] for key, value in batch.items()} for r in range(2)]
    for row in rows:
        add_stats(totals, sft.loss_with_stats(model, row, 1)[1])
    accuracy = sft.means(totals)["mean_token_accuracy"]
    assert accuracy == pytest.approx(float(hits.sum() / labelled.sum()))
    row_means = [float(hits[r].sum() / labelled[r].sum()) for r in range(2)]
    assert accuracy != pytest.approx(sum(row_means) / 2)


def test_token_budget_micro_batches_give_the_same_step_as_example_counts(tiny_llama_dir):
    from tunelab.objectives import get_objective

    torch.manual_seed(0)
    model, tokenizer = load_model(str(tiny_llama_dir))
    texts = ["say bob", "the quick brown fox jumps over the lazy dog", "tokyo", "name age city json extract"]
    items = [EncodedExample(ids, ids) for ids in (tokenizer(t)["input_ids"] for t in texts)]
    lengths = [len(item.input_ids) for item in items]
    micro = split_by_tokens(list(range(4)), lengths, max_tokens=2 * max(lengths) - 1)
    assert len(micro) > 1 and sorted(i for m in micro for i in m) == [0, 1, 2, 3]
    assert all(len(m) * max(lengths[i] for i in m) <= 2 * max(lengths) - 1 for m in micro)

    sft = get_objective("sft")
    whole = collate(items, tokenizer.pad_token_id)
    n_targets = sft.count_targets(whole)
    one = sft.loss(model, whole, n_targets)
    pieces = [
        sft.loss(model, collate([items[i] for i in m], tokenizer.pad_token_id), n_targets) for m in micro
    ]
    assert sum(p.item() for p in pieces) == pytest.approx(one.item(), abs=1e-6)


def test_dry_run_predicts_and_a_memory_budget_cuts_batches_to_fit(tiny_llama_dir, tmp_path):
    from conftest import copy_task_rows, write_jsonl
    from tunelab.training import TrainConfig, train
    from tunelab.training.config import ConfigError

    data = write_jsonl(tmp_path / "train.jsonl", copy_task_rows(16))
    base = dict(model=str(tiny_llama_dir), data=str(data), max_steps=2, batch_size=8)
    dry = train(TrainConfig(**base, out=str(tmp_path / "dry"), dry_run=True)).summary
    assert not (tmp_path / "dry").exists()  # a dry run writes nothing
    assert dry["predicted_peak_mb"] > dry["fixed_mb"] > 0 and dry["activation_mb_per_token"] > 0
    assert dry["largest_micro_batch"].startswith("8 x ")

    fixed_gib = dry["fixed_mb"] / 1024
    fitted = TrainConfig(
        **base, out=str(tmp_path / "fit"), memory_budget=f"{fixed_gib + 0.2:.3f}GiB", dry_run=True
    )
    tight = train(fitted).summary
    assert tight["micro_batch_tokens"] < dry["micro_batch_tokens"]
    assert tight["predicted_peak_mb"] <= (fixed_gib + 0.2) * 1024
    with pytest.raises(ConfigError, match="memory_budget 1MB is below"):
        train(TrainConfig(**base, out=str(tmp_path / "no"), memory_budget="1MB"))
