"""Several adapters on one base model: switching changes the answers; the base is loaded once."""

import pytest

from conftest import write_jsonl
from tunelab.errors import UserError
from tunelab.inference import MultiAdapterModel
from tunelab.models import loading
from tunelab.training import TrainConfig, train

PROMPTS = [[{"role": "user", "content": "say 3"}], [{"role": "user", "content": "say 7"}]]


def fixed_answer_adapter(model_dir, folder, answer):
    rows = [{"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": answer}]}
            for i in range(40)]  # fmt: skip
    data = write_jsonl(folder.with_suffix(".jsonl"), rows)
    train(
        TrainConfig(
            model=str(model_dir), data=str(data), out=str(folder), max_steps=40, lr=3e-2, batch_size=8
        )
    )
    return folder


def test_switching_adapters_on_one_base(tiny_llama_dir, tmp_path, monkeypatch):
    a = fixed_answer_adapter(tiny_llama_dir, tmp_path / "a", "paris london")
    b = fixed_answer_adapter(tiny_llama_dir, tmp_path / "b", "alice bob")

    loads = []
    real_load = loading.load_model
    monkeypatch.setattr(
        "tunelab.inference.multi_adapter.load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k)
    )
    multi = MultiAdapterModel(str(tiny_llama_dir))
    base_answers = multi.generate(PROMPTS, max_new_tokens=4)
    embed = multi.base.get_input_embeddings().weight
    multi.load_adapter("a", a)
    multi.load_adapter("b", b)
    assert multi.adapters == ["a", "b"]

    multi.use_adapter("a")
    assert multi.generate(PROMPTS, max_new_tokens=4) == ["paris london"] * 2
    multi.use_adapter("b")
    assert multi.generate(PROMPTS, max_new_tokens=4) == ["alice bob"] * 2
    multi.use_adapter(None)
    assert multi.generate(PROMPTS, max_new_tokens=4) == base_answers
    assert len(loads) == 1, "the base model is loaded once"
    assert multi.base.get_input_embeddings().weight is embed

    multi.unload_adapter("a")
    assert multi.adapters == ["b"]
    with pytest.raises(UserError, match="no adapter named 'a'"):
        multi.use_adapter("a")
    multi.unload_adapter("b")
    assert multi.adapters == [] and multi.generate(PROMPTS, max_new_tokens=4) == base_answers
