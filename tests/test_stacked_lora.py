"""Stacked LoRA: one batch whose rows use different plain-LoRA adapters (ranks and scales differing) and the
base gives each row what PEFT's own mixed-batch path (`adapter_names`) gives it; what is not plain LoRA
stays with PEFT; bf16 serving answers as fp32 within a stated tolerance."""

import pytest
import torch
from peft import PeftModel

from test_scheduler import random_lora
from tunelab.errors import UserError
from tunelab.inference import MultiAdapterModel
from tunelab.inference.stacked_lora import StackedLoRALinear, stackable
from tunelab.models import load_model

ROWS = ["a", None, "b", "b", None, "a"]


@pytest.fixture(scope="module")
def adapters(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("stacked")
    return {
        "a": random_lora(tiny_llama_dir, root / "a", 1, r=4, lora_alpha=8),
        # another rank (padded in the stack), rsLoRA's scale, and only the attention's projections
        "b": random_lora(tiny_llama_dir, root / "b", 2, r=8, lora_alpha=4, use_rslora=True),
        "c": random_lora(tiny_llama_dir, root / "c", 3, r=2, target_modules=["q_proj", "v_proj"]),
    }


def peft_logits(model_dir, adapters, names, ids, rows):
    model, _ = load_model(str(model_dir))
    peft = PeftModel.from_pretrained(model, str(adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        peft.load_adapter(str(adapters[name]), adapter_name=name)
    with torch.no_grad():
        return peft.eval()(input_ids=ids, adapter_names=[r or "__base__" for r in rows]).logits


def stacked_logits(multi, ids, rows):
    with torch.no_grad(), multi.stacked.selecting(rows):
        return multi.base(input_ids=ids).logits


def test_stacked_rows_give_what_peft_mixed_batches_give(tiny_llama_dir, adapters):
    ids = torch.randint(3, 200, (len(ROWS), 9), generator=torch.Generator().manual_seed(0))
    multi = MultiAdapterModel(str(tiny_llama_dir))
    for name in ("a", "b", "c"):
        multi.load_adapter(name, adapters[name])
    rows = ROWS + ["c"]
    ids = torch.cat([ids, ids[:1]])
    expected = peft_logits(tiny_llama_dir, adapters, ["a", "b", "c"], ids, rows)
    got = stacked_logits(multi, ids, rows)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(got[0], got[-1], atol=1e-3), "the adapters change the logits"
    # one adapter on every row: the ungathered path
    torch.testing.assert_close(
        stacked_logits(multi, ids[2:4], ["b", "b"]), expected[2:4], atol=2e-5, rtol=1e-4
    )

    multi.unload_adapter("a")  # the others keep their rows; the base's layers are its own again after all
    rows = ["b", None, "c"]
    expected = peft_logits(tiny_llama_dir, adapters, ["b", "c"], ids[:3], rows)
    torch.testing.assert_close(stacked_logits(multi, ids[:3], rows), expected, atol=2e-5, rtol=1e-4)
    multi.unload_adapter("b")
    multi.unload_adapter("c")
    assert not any(isinstance(m, StackedLoRALinear) for m in multi.base.modules())


@pytest.mark.parametrize(
    "config, stacks",
    [
        ({"peft_type": "LORA"}, True),
        ({"peft_type": "LORA", "use_dora": True}, False),
        ({"peft_type": "LORA", "modules_to_save": ["lm_head"]}, False),
        ({"peft_type": "LORA", "lora_bias": True}, False),
        ({"peft_type": "IA3"}, False),
    ],
)
def test_only_plain_lora_on_linear_layers_is_stacked(config, stacks):
    assert stackable(config) is stacks


def test_other_kinds_load_through_peft_and_never_beside_stacked_ones(tiny_llama_dir, adapters, tmp_path):
    dora = random_lora(tiny_llama_dir, tmp_path / "dora", 4, r=4, use_dora=True)
    multi = MultiAdapterModel(str(tiny_llama_dir))
    multi.load_adapter("a", adapters["a"])
    with pytest.raises(UserError, match="another kind"):
        multi.load_adapter("dora", dora)
    multi.unload_adapter("a")
    multi.load_adapter("dora", dora)
    assert multi.peft is not None and multi.adapters == ["dora"]


def test_bf16_serving_answers_as_fp32_within_tolerance(tiny_llama_dir, adapters):
    """bf16 is what `--precision auto` picks on CPUs with AVX512-BF16/AMX; here it runs emulated."""
    ids = torch.randint(3, 200, (3, 12), generator=torch.Generator().manual_seed(1))
    results = {}
    for precision in ("fp32", "bf16"):
        multi = MultiAdapterModel(str(tiny_llama_dir), precision)
        multi.load_adapter("a", adapters["a"])
        logits = stacked_logits(multi, ids, ["a", None, "a"]).float()
        results[precision] = logits.log_softmax(-1)
        assert next(multi.base.parameters()).dtype == getattr(
            torch, {"fp32": "float32"}.get(precision, "bfloat16")
        )
    # bf16 keeps 8 bits of mantissa: at every position a KL divergence under 0.02 nats from fp32's
    # (0.0075 at most here), probabilities within 0.02, and the same greedy token
    bf16, fp32 = results["bf16"], results["fp32"]
    assert torch.nn.functional.kl_div(bf16, fp32, log_target=True, reduction="none").sum(-1).max() < 0.02
    assert (bf16.exp() - fp32.exp()).abs().max() < 0.02
    assert torch.equal(bf16.argmax(-1), fp32.argmax(-1))
