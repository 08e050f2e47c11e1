"""The shared training loop on tiny real-architecture models: what trains, what is saved, how it resumes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import copy_task_rows, write_jsonl
from tunelab import ops
from tunelab.data import Example
from tunelab.data.batching import collate
from tunelab.data.tokenize import encode_chat
from tunelab.objectives import get_objective
from tunelab.training import ConfigError, TrainConfig, TrainingDiverged, loop, steps, train
from tunelab.training import checkpoint as ckpt


@pytest.fixture
def copy_data(tmp_path):
    return write_jsonl(tmp_path / "copy.jsonl", copy_task_rows(48))


def run(model_dir, data, out, **kw):
    defaults = dict(
        model=str(model_dir), data=str(data), out=str(out), max_steps=30, lr=3e-2, batch_size=8, seed=0
    )
    return train(TrainConfig(**{**defaults, **kw}))


def weights(folder: Path) -> dict:
    files = (
        ["adapter_model.safetensors"]
        if (folder / "adapter_model.safetensors").exists()
        else ["model.safetensors"]
    )
    return load_file(folder / files[0])


def test_lora_trains_only_adapter_and_saves_a_peft_adapter(tiny_model_dir, copy_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    result = run(tiny_model_dir, copy_data, tmp_path / "lora", val=str(copy_data), eval_every=10)
    out = result.out_dir
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer_config.json",
        "README.md",
        "metrics.jsonl",
        "loss.png",
        "summary.json",
        "tunelab.yaml",
    ):
        assert (out / name).exists(), name
    assert json.loads((out / "tokenizer_config.json").read_text()) or True
    assert (out / "chat_template.jinja").exists() or "chat_template" in (
        out / "tokenizer_config.json"
    ).read_text()

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses[-1] < 0.7 * losses[0], "loss should fall on the copy task"
    assert result.summary["trainable_params"] < result.summary["total_params"]

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    # the base weights inside the adapted model are untouched
    for name, tensor in model.get_base_model().state_dict().items():
        if "lora_" not in name:
            key = name.replace("base_layer.", "")
            assert torch.equal(tensor, base_before[key]), name
    trained = weights(out)
    assert trained and all("lora_" in k for k in trained)


def test_save_then_load_gives_the_same_logits(tiny_llama_dir, copy_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = run(tiny_llama_dir, copy_data, tmp_path / "lora", max_steps=5).out_dir
    x = torch.tensor([[1, 5, 9, 12, 3]])
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), out).eval()
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), out).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(x).logits, again(x).logits)
        assert not torch.allclose(reloaded(x).logits, base(x).logits), "the adapter must change the model"


def test_full_fine_tuning_changes_all_weights_and_saves_a_model(tiny_llama_dir, copy_data, tmp_path):
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict()
    out = run(tiny_llama_dir, copy_data, tmp_path / "full", method="full", max_steps=5).out_dir
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)


def test_grad_accumulation_normalises_by_tokens_across_micro_batches(tiny_llama_dir, tiny_tokenizer):
    """Two micro-batches of 2 give the same step as one batch of 4, though their token counts differ."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, get_scheduler

    texts = [
        ("say a", "alice"),
        ("say b", "bob bob bob bob"),
        ("say c", "paris"),
        ("x", "london tokyo great film"),
    ]
    items = [
        encode_chat(
            Example([{"role": "user", "content": u}, {"role": "assistant", "content": a}]), tiny_tokenizer, 64
        )
        for u, a in texts
    ]
    pad = tiny_tokenizer.pad_token_id
    results = []
    for groups in ([items], [items[:2], items[2:]]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        sched = get_scheduler("constant", opt)
        cfg = TrainConfig(max_grad_norm=0)
        micro = [collate(g, pad) for g in groups]
        result = steps.train_step(model, micro, opt, sched, Accelerator(), cfg, "fp32", get_objective("sft"))
        results.append((result.loss, result.measured, model.state_dict()))
    (loss_a, measured_a, sd_a), (loss_b, measured_b, sd_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert measured_a.keys() == {"mean_token_accuracy"} and measured_a == pytest.approx(measured_b)
    for key in sd_a:
        assert torch.allclose(sd_a[key], sd_b[key], atol=1e-5), (key, (sd_a[key] - sd_b[key]).abs().max())


KILL_SCRIPT = """
import os, signal, sys
from tunelab.training import loop, TrainConfig, train
real_step, count = loop.train_step, [0]
def step(*a, **k):
    count[0] += 1
    if count[0] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_step(*a, **k)
loop.train_step = step
cfg = dict(model=sys.argv[2], data=sys.argv[3], out=sys.argv[4], max_steps=12, lr=5e-3, batch_size=4,
           save_every=4,
           resume=sys.argv[5] == "resume", dropout=0.1, seed=3)
train(TrainConfig.from_sources(**cfg))
"""


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_llama_dir, copy_data, tmp_path):
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}

    def launch(kill_at, out, mode):
        cmd = [sys.executable, str(script), str(kill_at), str(tiny_llama_dir), str(copy_data), str(out), mode]
        return subprocess.run(cmd, env=env, capture_output=True, text=True)

    straight = launch(0, tmp_path / "straight", "fresh")
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = launch(7, tmp_path / "killed", "fresh")  # dies during step 7: checkpoint at step 4 exists
    assert killed.returncode == -9
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "killed")] == ["step-0000004"]
    assert not (tmp_path / "killed" / "adapter_model.safetensors").exists()
    resumed = launch(0, tmp_path / "killed", "resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a, b = weights(tmp_path / "straight"), weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff <= 1e-6
    steps = [
        json.loads(x)["step"]
        for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["kind"] == "train"
    ]
    assert steps == list(range(1, 13)), "metrics after the checkpoint are replaced, not duplicated"


def test_partial_checkpoint_is_never_picked_up(tmp_path):
    (tmp_path / "checkpoints" / ".step-0000008.tmp-123-0a1b2c3d").mkdir(parents=True)  # atomic_folder's
    (tmp_path / "checkpoints" / "step-0000009").mkdir()  # no trainer_state.json: incomplete
    assert ckpt.list_checkpoints(tmp_path) == []


def test_nan_loss_stops_with_no_final_model(tiny_llama_dir, copy_data, tmp_path, monkeypatch):
    monkeypatch.setattr(
        loop, "train_step", lambda *a, **k: steps.StepResult(float("nan"), float("nan"), 10, {})
    )
    with pytest.raises(TrainingDiverged, match="no model was saved"):
        run(tiny_llama_dir, copy_data, tmp_path / "nan")
    assert not (tmp_path / "nan" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "nan" / "summary.json").exists()


def test_early_stopping_keeps_the_best_weights(tiny_llama_dir, copy_data, tmp_path, monkeypatch):
    val_losses = iter([5.0, 3.0, 2.0, 2.5, 2.6, 2.7, 2.8])  # the first is the baseline before training
    monkeypatch.setattr(loop, "evaluate_loss", lambda *a, **k: steps.Evaluation(next(val_losses), 10, {}))
    result = run(tiny_llama_dir, copy_data, tmp_path / "es", val=str(copy_data), eval_every=2, patience=2)
    assert result.summary["stopped_early"] and result.summary["steps"] == 8
    assert result.summary["best_step"] == 4 and result.summary["best_val_loss"] == 2.0
    best = load_file(tmp_path / "es" / "best" / "trainable.safetensors")
    final = weights(tmp_path / "es")
    assert len(best) == len(final)
    for name, tensor in best.items():
        saved = name.replace(".default.weight", ".weight")
        assert torch.equal(final[saved], tensor), name


def test_refuses_to_overwrite_a_finished_run(tiny_llama_dir, copy_data, tmp_path):
    run(tiny_llama_dir, copy_data, tmp_path / "a", max_steps=2)
    with pytest.raises(ConfigError, match="finished run"):
        run(tiny_llama_dir, copy_data, tmp_path / "a", max_steps=2)
    run(tiny_llama_dir, copy_data, tmp_path / "a", max_steps=2, overwrite=True)


def test_yaml_config_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.001\nbatch-size: 4\nmethod: full\n")
    cfg = TrainConfig.from_sources(path, batch_size=16, lr=None)
    assert (cfg.lr, cfg.batch_size, cfg.method) == (0.001, 16, "full")
    path.write_text("learning_rate: 1\n")
    with pytest.raises(ConfigError, match="run.yaml.*learning_rate"):
        TrainConfig.from_sources(path)
    with pytest.raises(ConfigError, match="scheduler"):
        TrainConfig(scheduler="exponential")


def test_a_saved_config_of_any_method_reloads_and_options_are_the_methods_own(tmp_path):
    """A run's config.yaml is flat; one from before options were per method holds every method's at their
    defaults, which reload, while another method's option at another value is refused by name."""
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(TrainConfig(method="adapter", options={"adapter_size": 8}).to_dict()))
    assert TrainConfig.from_sources(saved).options.adapter_size == 8
    saved.write_text("method: full\nlora_r: 8\ndropout: 0.05\nadapter_placement: houlsby\nhead_lr: null\n")
    assert TrainConfig.from_sources(saved).method == "full"
    saved.write_text("method: full\nlora_r: 64\n")
    with pytest.raises(ConfigError, match="lora_r is an option of lora, not of full"):
        TrainConfig.from_sources(saved)
    for bad, message in [
        (dict(scheduler=True), "scheduler: 'True' is not one of"),  # YAML's `yes`
        (dict(options={"lora_r": True}), "lora_r is a number"),
        (dict(options={"lora_r": 0}), "lora_r must be between 1 and 1024"),
        (dict(method="ia3", options={"dropout": 0.1}), "dropout is an option of adapter, lora, not of ia3"),
    ]:
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**bad)


def test_example_configs_parse():
    configs = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))
    assert configs
    for path in configs:
        TrainConfig.from_sources(path)


def test_sparse_logits_loss_equals_transformers_loss(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from tunelab.data.batching import count_label_tokens

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    items = [
        encode_chat(
            Example([{"role": "user", "content": u}, {"role": "assistant", "content": a}]), tiny_tokenizer, 64
        )
        for u, a in [("say the quick brown fox", "fox"), ("x", "london tokyo great film")]
    ]
    batch = collate(items, tiny_tokenizer.pad_token_id)
    ours = ops.causal_lm_loss(model, batch, count_label_tokens(batch["labels"]))
    assert torch.allclose(ours, model(**batch).loss, atol=1e-5)
