"""Model specs resolve to the right loader; the embedded GGUF is cached as safetensors and loads fast."""

import time

import pytest
import torch

from tunelab.models import ModelLoadError, load_model, resolve


def test_local_folder_loads_with_tokenizer_and_chat_template(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir))
    assert model.config.num_hidden_layers == 2
    assert tokenizer.chat_template and tokenizer.pad_token_id is not None


def test_bad_specs_fail_clearly(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve(str(tmp_path))
    with pytest.raises(ModelLoadError, match="not found"):
        resolve("./no/such/folder")


def test_hub_ids_are_passed_through_unchanged():
    source = resolve("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert source.path == "HuggingFaceTB/SmolLM2-135M-Instruct" and source.gguf_file is None


@pytest.mark.embedded
def test_embedded_model_is_cached_and_matches_the_gguf():
    from transformers import AutoModelForCausalLM

    load_model("default")  # builds the cache if this machine has none yet
    start = time.perf_counter()
    model, tokenizer = load_model("default")
    assert time.perf_counter() - start < 5, "the second load must come from the safetensors cache"
    assert not getattr(model.config, "quantization_config", None)
    assert "<|im_start|>" in tokenizer.chat_template

    gguf = resolve("default").gguf_file
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, direct(ids).logits)


@pytest.fixture
def no_hub(monkeypatch):
    """The hub's endpoint is a closed local port: what an offline machine sees, without waiting."""
    from huggingface_hub import constants

    from tunelab.models import loading

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    loading.hub_reachable.cache_clear()
    yield
    loading.hub_reachable.cache_clear()


def test_a_hub_id_offline_fails_at_once_with_a_clear_message(no_hub):
    from tunelab.models import loading

    assert not loading.hub_reachable()
    with pytest.raises(ModelLoadError, match="hub is unreachable .* not in the local hub cache"):
        load_model("someorg/not-cached-anywhere")


def test_hf_hub_offline_needs_no_probe(monkeypatch):
    from tunelab.models import loading

    def refuse(*args, **kwargs):
        raise AssertionError("HF_HUB_OFFLINE is set: nothing may be contacted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading.socket, "create_connection", refuse)
    loading.hub_reachable.cache_clear()
    try:
        assert not loading.hub_reachable()
    finally:
        loading.hub_reachable.cache_clear()


def test_local_folders_never_probe_the_hub(tiny_model_dir, monkeypatch):
    from tunelab.models import loading

    monkeypatch.setattr(loading, "hub_reachable", lambda: pytest.fail("a local folder needs no hub"))
    model, _ = load_model(str(tiny_model_dir))
    assert model.config.num_hidden_layers == 2


def test_capture_sees_the_latest_pass_and_leaves_no_hook_behind():
    from tunelab.models.blocks import capture

    class Block(torch.nn.Module):  # returns a tuple, as decoder blocks do
        def forward(self, hidden_states):
            return (hidden_states * 2, None)

    blocks = [Block(), Block()]
    x = torch.ones(1, 3)
    with pytest.raises(RuntimeError), capture(blocks, inputs=True, outputs=True) as seen:
        blocks[1](x)
        blocks[1](hidden_states=x + 1)  # the keyword, and the later pass replaces the earlier
        raise RuntimeError
    assert list(seen.inputs) == list(seen.outputs) == [1]
    torch.testing.assert_close(seen.inputs[1], x + 1)
    torch.testing.assert_close(seen.outputs[1], 2 * (x + 1))
    blocks[0](x)
    assert list(seen.inputs) == [1] and not blocks[0]._forward_hooks and not blocks[1]._forward_hooks
