"""Bottleneck adapters on tiny models: identity at init, only adapters train, save/load parity, generation."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import copy_task_rows, write_jsonl
from tunelab.data import Example
from tunelab.data.batching import collate
from tunelab.data.tokenize import encode_chat
from tunelab.errors import UserError
from tunelab.inference.generation import generate
from tunelab.methods import get_method
from tunelab.methods.adapter import Adapter
from tunelab.ops import causal_lm_loss
from tunelab.training import TrainConfig, loop

METHOD = get_method("adapter")
X = torch.tensor([[1, 5, 9, 12, 3, 40, 7], [2, 8, 8, 30, 100, 4, 6]])


def base(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


def adapters(model) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, Adapter)]


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(X).logits


@pytest.fixture(scope="module")
def trained(tiny_llama_dir, tmp_path_factory):
    """(in-memory model, saved folder): Houlsby adapters trained a few steps by hand, then saved."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    items = [encode_chat(Example(row["messages"]), tokenizer, 64) for row in copy_task_rows(8)]
    batch = collate(items, tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = METHOD.prepare(
        base(tiny_llama_dir), TrainConfig.from_sources(method="adapter", adapter_size=8, dropout=0.0)
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(5):
        causal_lm_loss(model, batch, 1).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    folder = tmp_path_factory.mktemp("adapter-trained")
    METHOD.save(model, folder)
    tokenizer.save_pretrained(folder)
    return model, folder


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_fresh_adapter_is_the_identity_and_only_it_trains(tiny_model_dir, placement):
    expected = logits(base(tiny_model_dir))
    model = METHOD.prepare(
        base(tiny_model_dir), TrainConfig.from_sources(method="adapter", adapter_placement=placement)
    )
    assert torch.equal(logits(model.eval()), expected)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".adapter." in name for name in trainable)
    assert "model.layers.1.mlp.adapter.down.weight" in trainable
    assert ("model.layers.1.self_attn.adapter.up.bias" in trainable) == (placement == "houlsby")


def test_pfeiffer_inserts_half_as_many_adapters_as_houlsby(tiny_llama_dir):
    houlsby = METHOD.prepare(
        base(tiny_llama_dir), TrainConfig.from_sources(method="adapter", adapter_placement="houlsby")
    )
    pfeiffer = METHOD.prepare(
        base(tiny_llama_dir), TrainConfig.from_sources(method="adapter", adapter_placement="pfeiffer")
    )
    assert len(adapters(houlsby)) == 2 * len(adapters(pfeiffer)) == 2 * 2  # 2 layers
    per_adapter = 32 * 64 + 64 + 64 * 32 + 32  # hidden 32, size 64: down and up, with biases
    count = sum(p.numel() for p in houlsby.parameters() if p.requires_grad)
    assert count == 4 * per_adapter


def test_training_changes_only_adapters_and_the_loss_falls(tiny_model_dir, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": "paris"}]}
        for i in range(32)
    ]
    data = write_jsonl(tmp_path / "fixed.jsonl", rows)
    config = TrainConfig(
        model=str(tiny_model_dir), data=str(data), out=str(tmp_path / "out"), method="adapter",
        max_steps=20, lr=3e-2, batch_size=8, options={"adapter_size": 16},
    )  # fmt: skip
    before = base(tiny_model_dir).state_dict()
    trainer = loop.Trainer(config)
    result = trainer.fit()
    after = trainer.unwrapped.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert set(after) - set(before) and all(".adapter." in k for k in set(after) - set(before))

    records = [json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses[-1] < 0.6 * losses[0]  # both archs end near 0.4x; a frozen tiny head sets a floor

    saved = json.loads((result.out_dir / "adapter_config.json").read_text())
    assert saved["tunelab_method"] == "adapter" and saved["placement"] == "houlsby"
    assert saved["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    weights = load_file(result.out_dir / "adapter_model.safetensors")
    assert sum(w.numel() for w in weights.values()) == result.summary["trainable_params"]


def test_save_then_load_gives_the_same_logits(trained, tiny_llama_dir):
    model, folder = trained
    loaded = METHOD.load(base(tiny_llama_dir), folder)
    assert not loaded.training
    assert not torch.allclose(logits(loaded), logits(base(tiny_llama_dir)), atol=1e-3), "adapters must act"
    assert torch.allclose(logits(loaded), logits(model), atol=1e-5)


def test_init_adapter_starts_from_saved_weights(trained, tiny_llama_dir):
    model, folder = trained
    config = TrainConfig.from_sources(method="adapter", adapter_size=8, init_adapter=str(folder))
    started = METHOD.prepare(base(tiny_llama_dir), config)
    assert torch.allclose(logits(started.eval()), logits(model), atol=1e-5)
    assert all(p.requires_grad for name, p in started.named_parameters() if ".adapter." in name)
    with pytest.raises(UserError, match="adapter_size"):
        METHOD.prepare(
            base(tiny_llama_dir),
            TrainConfig.from_sources(method="adapter", adapter_size=16, init_adapter=str(folder)),
        )
    with pytest.raises(UserError, match="placement"):
        METHOD.prepare(
            base(tiny_llama_dir),
            TrainConfig.from_sources(
                method="adapter", adapter_size=8, adapter_placement="pfeiffer", init_adapter=str(folder)
            ),
        )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"adapter_size": 16}, "shape"),
        ({"placement": "pfeiffer"}, "unexpected"),
        ({"hidden_size": 64}, "hidden_size"),
        ({"num_layers": 3}, "num_layers"),
        ({"tunelab_method": None}, "not a bottleneck adapter"),
    ],
)
def test_loading_a_mismatched_adapter_fails_clearly(trained, tiny_llama_dir, tmp_path, change, message):
    _, folder = trained
    settings = json.loads((folder / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**settings, **change}))
    (tmp_path / "adapter_model.safetensors").write_bytes((folder / "adapter_model.safetensors").read_bytes())
    with pytest.raises(UserError, match=message):
        METHOD.load(base(tiny_llama_dir), tmp_path)


def test_architecture_without_self_attn_blocks_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    with pytest.raises(UserError, match="not supported by bottleneck adapters"):
        METHOD.prepare(gpt2, TrainConfig(method="adapter"))


def test_batched_generation_with_a_loaded_adapter_equals_one_by_one(trained, tiny_llama_dir):
    _, folder = trained
    model = METHOD.load(base(tiny_llama_dir), folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    conversations = [
        [{"role": "user", "content": "say alice"}],
        [{"role": "user", "content": "say the quick brown fox jumps over the lazy dog please"}],
        [{"role": "user", "content": "x"}],
    ]
    batched = generate(model, tokenizer, conversations, max_new_tokens=4)
    single = [generate(model, tokenizer, [c], max_new_tokens=4)[0] for c in conversations]
    assert batched == single and any(batched)
