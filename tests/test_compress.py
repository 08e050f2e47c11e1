"""Making models smaller on tiny models: pruning (depth, width, magnitude), distillation (the KD loss and
both modes through the one training loop), int8 quantization, and the report; plus the CLI commands."""

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import copy_task_rows, write_jsonl
from tunelab.cli import app
from tunelab.compress.distill import DistillConfig, distill, teacher_blocks_of
from tunelab.compress.prune import PruneConfig, prune
from tunelab.compress.quantize import QuantizeConfig, load_quantized, quantize
from tunelab.compress.source import parameter_count
from tunelab.errors import UserError
from tunelab.objectives import get_objective
from tunelab.objectives.distill import Distillation, hidden_state_loss, kd_loss
from tunelab.run_dir import RunDir
from tunelab.training import TrainConfig


def plain(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


IDS = torch.tensor([[1, 5, 7, 9, 11, 13], [2, 4, 6, 8, 10, 12]])


@pytest.fixture
def calibration(tmp_path):
    return write_jsonl(tmp_path / "calib.jsonl", copy_task_rows(12))


def test_keep_all_layers_leaves_outputs_unchanged(tiny_model_dir, calibration, tmp_path):
    record = prune(PruneConfig(model=str(tiny_model_dir), out=str(tmp_path / "p"), data=str(calibration),
                               keep_layers=2, mlp_keep=1.0), log=lambda *a: None)  # fmt: skip
    assert record["kept_layers"] == [0, 1] and len(record["block_influence"]) == 2
    with torch.no_grad():
        torch.testing.assert_close(plain(tmp_path / "p")(IDS).logits, plain(tiny_model_dir)(IDS).logits)


def test_depth_pruned_model_loads_with_transformers_and_has_the_config_size(
    tiny_model_dir, calibration, tmp_path
):
    from transformers import AutoConfig, AutoModelForCausalLM

    out = tmp_path / "p"
    record = prune(PruneConfig(model=str(tiny_model_dir), out=str(out), data=str(calibration),
                               keep_layers=1), log=lambda *a: None)  # fmt: skip
    model = plain(out)
    config = AutoConfig.from_pretrained(out)
    assert config.num_hidden_layers == 1 == len(model.model.layers)
    assert len(getattr(config, "layer_types", None) or [None]) == 1
    expected = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    assert parameter_count(model) == expected == record["params_after"] < record["params_before"]
    scores = record["block_influence"]
    assert record["kept_layers"] == [max(range(2), key=lambda i: scores[i])]  # the more influential block
    generated = model.generate(IDS[:1], max_new_tokens=3, do_sample=False)  # KV cache: renumbered block
    assert generated.shape == (1, IDS.shape[1] + 3)


def test_width_pruning_keeps_shapes_consistent(tiny_model_dir, calibration, tmp_path):
    from transformers import AutoModelForCausalLM

    prune(PruneConfig(model=str(tiny_model_dir), out=str(tmp_path / "p"), data=str(calibration),
                      mlp_keep=0.5), log=lambda *a: None)  # fmt: skip
    model = plain(tmp_path / "p")
    assert model.config.intermediate_size == 32
    for layer in model.model.layers:
        assert layer.mlp.gate_proj.out_features == layer.mlp.up_proj.out_features == 32
        assert layer.mlp.down_proj.in_features == 32
    assert parameter_count(model) == parameter_count(AutoModelForCausalLM.from_config(model.config))
    assert model(IDS).logits.shape[:2] == IDS.shape


def test_magnitude_pruning_says_the_file_does_not_shrink(tiny_llama_dir, tmp_path):
    record = prune(PruneConfig(model=str(tiny_llama_dir), out=str(tmp_path / "p"), sparsity=0.5),
                   log=lambda *a: None)  # fmt: skip
    assert "same size" in record["note"] and record["params_after"] == record["params_before"]
    weight = plain(tmp_path / "p").model.layers[0].mlp.up_proj.weight
    assert 0.45 < float((weight == 0).float().mean()) < 0.55
    assert json.loads(RunDir(tmp_path / "p").compression.read_text())["note"] == record["note"]


def test_prune_needs_calibration_data_and_a_cut():
    with pytest.raises(UserError, match="--data"):
        PruneConfig(model="m", out="o", keep_layers=1)
    with pytest.raises(UserError, match="what to cut"):
        PruneConfig(model="m", out="o")
    with pytest.raises(UserError, match="--data"):
        PruneConfig(model="m", out="o", keep_share=0.5)
    with pytest.raises(UserError, match="keep_share"):
        PruneConfig(model="m", out="o", data="d", keep_share=0)


def test_kd_loss_is_zero_when_student_equals_teacher():
    logits = torch.randn(2, 3, 11)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    assert abs(float(kd_loss(logits, logits.clone(), mask, 2.0))) < 1e-5


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_gradient_matches_the_hand_derived_formula(temperature):
    torch.manual_seed(0)
    student = torch.randn(2, 3, 11, requires_grad=True)
    teacher = torch.randn(2, 3, 11)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    n = int(mask.sum())
    (kd_loss(student, teacher, mask, temperature) / n).backward()
    # d/ds T^2 KL(p_t || softmax(s/T)) = T (softmax(s/T) - p_t), per position; zero where unlabelled.
    expected = temperature * ((student / temperature).softmax(-1) - (teacher / temperature).softmax(-1)) / n
    expected = expected.detach() * mask[..., None]
    torch.testing.assert_close(student.grad, expected)


def test_distilled_loss_of_the_teacher_itself_is_its_cross_entropy(tiny_llama_dir, tiny_tokenizer):
    from tunelab.data.batching import collate
    from tunelab.data.examples import Example
    from tunelab.data.tokenize import encode_examples

    model = plain(tiny_llama_dir).train()
    items, _ = encode_examples([Example(r["messages"]) for r in copy_task_rows(4)], tiny_tokenizer, 64)
    batch = collate(items, tiny_tokenizer.pad_token_id)
    sft = get_objective("sft")
    only_kd = Distillation(sft, plain(tiny_llama_dir), temperature=2.0, alpha=1.0)
    assert abs(float(only_kd.loss(model, batch, 1).detach())) < 1e-4
    half = Distillation(sft, plain(tiny_llama_dir), temperature=2.0, alpha=0.5)
    torch.testing.assert_close(half.loss(model, batch, 1), 0.5 * sft.loss(model, batch, 1))
    assert half.count_targets(batch) == sft.count_targets(batch)  # the data and targets of sft


def test_hidden_state_loss_is_the_share_of_variance_left_unexplained():
    torch.manual_seed(0)
    teacher = [torch.randn(2, 5, 4) * 10, torch.randn(2, 5, 4)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert float(hidden_state_loss([t.clone() for t in teacher], teacher, mask)) < 1e-6
    # A student that outputs each layer's mean over real tokens explains none of it: 1 per layer,
    # whatever the layer's scale; padded positions do not count.
    real = mask.bool()
    means = [t[real].mean(0).expand_as(t).clone() for t in teacher]
    for student in means:
        student[~real] = 1e6
    torch.testing.assert_close(hidden_state_loss(means, teacher, mask), torch.tensor(1.0))


def test_hidden_state_term_matches_pruned_blocks_to_where_they_came_from(
    tiny_llama_dir, calibration, tmp_path
):
    from tunelab.data.batching import collate
    from tunelab.data.examples import Example
    from tunelab.data.tokenize import encode_examples
    from tunelab.models import load_tokenizer

    pruned = tmp_path / "p"
    prune(PruneConfig(model=str(tiny_llama_dir), out=str(pruned), data=str(calibration), keep_layers=1),
          log=lambda *a: None)  # fmt: skip
    teacher = plain(tiny_llama_dir)
    kept = json.loads(RunDir(pruned).compression.read_text())["kept_layers"]
    assert teacher_blocks_of(str(pruned), teacher) == kept
    assert teacher_blocks_of(str(tiny_llama_dir), teacher) == [0, 1]  # as deep: block i learns block i
    with pytest.raises(UserError, match="must be a model folder"):
        teacher_blocks_of("default", teacher)
    shallow = tmp_path / "shallow"
    prune(PruneConfig(model=str(tiny_llama_dir), out=str(shallow), sparsity=0.1), log=lambda *a: None)
    (shallow / "config.json").write_text(
        (shallow / "config.json").read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 1')
    )
    with pytest.raises(UserError, match="not a `tunelab prune` cut"):
        teacher_blocks_of(str(shallow), teacher)
    with pytest.raises(UserError, match="needs the teacher block"):
        Distillation(get_objective("sft"), teacher, 2.0, 0.5, hidden_weight=1.0)
    with pytest.raises(UserError, match="only with --mode logits"):
        DistillConfig(mode="sequence", hidden_weight=1.0)
    for bad, message in [({"alpha": 1.5}, "alpha must be between 0.0 and 1.0"), ({"mode": "soft"}, "mode")]:
        with pytest.raises(UserError, match=message):
            DistillConfig(**bad)

    tokenizer = load_tokenizer(str(tiny_llama_dir))
    items, _ = encode_examples([Example(r["messages"]) for r in copy_task_rows(4)], tokenizer, 64)
    batch = collate(items, tokenizer.pad_token_id)
    sft = get_objective("sft")
    student = plain(pruned).train()
    logits_only = Distillation(sft, teacher, 2.0, 0.5)
    # The student's one block against a teacher block that had another input: a positive term.
    other = Distillation(sft, teacher, 2.0, 0.5, hidden_weight=1.0, teacher_blocks=[1 - kept[0]])
    assert float(other.loss(student, batch, 1)) > float(logits_only.loss(student, batch, 1)) + 1e-3
    itself = Distillation(sft, teacher, 2.0, 0.5, hidden_weight=1.0, teacher_blocks=[0, 1])
    copy = plain(tiny_llama_dir).train()
    torch.testing.assert_close(itself.loss(copy, batch, 1), logits_only.loss(copy, batch, 1))


def test_logit_distillation_runs_through_the_training_loop(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", copy_task_rows(16))
    config = TrainConfig(model=str(tiny_llama_dir), data=[str(data)], val=[str(data)],
                         out=str(tmp_path / "s"), method="lora", max_steps=2, batch_size=8)  # fmt: skip
    result = distill(config, DistillConfig(teacher=str(tiny_llama_dir)))
    assert result.summary["method"] == "lora" and result.summary["steps"] == 2
    assert RunDir(tmp_path / "s").is_adapter()
    assert json.loads(RunDir(tmp_path / "s").compression.read_text())["distill"]["mode"] == "logits"


def test_sequence_distillation_trains_on_the_teachers_answers(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", copy_task_rows(8))
    out = tmp_path / "s"
    config = TrainConfig(model=str(tiny_llama_dir), data=[str(data)], out=str(out), method="full",
                         max_steps=1, batch_size=4)  # fmt: skip
    distill(config, DistillConfig(teacher=str(tiny_llama_dir), mode="sequence", max_new_tokens=4))
    rows = [json.loads(line) for line in RunDir(out).teacher_answers.read_text().splitlines()]
    assert rows and all(r["messages"][-1]["role"] == "assistant" for r in rows)
    assert RunDir(out).read_config()["data"] == [str(RunDir(out).teacher_answers)]


def test_quantized_model_is_close_to_the_original(tiny_llama_dir, tmp_path):
    record = quantize(QuantizeConfig(model=str(tiny_llama_dir), out=str(tmp_path / "q")))
    model, _ = load_quantized(tmp_path / "q")
    with torch.no_grad():
        ours, theirs = model(IDS).logits, plain(tiny_llama_dir)(IDS).logits
    assert torch.cosine_similarity(ours.flatten(), theirs.flatten(), dim=0) > 0.98
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() > 0.8
    assert RunDir(tmp_path / "q").is_quantized() and record["weights_mb"] > 0
    assert record["params_after"] == record["params_before"]  # the tied head's int8 copy is not new
    assert type(model.model.layers[0].mlp.down_proj) is torch.nn.Linear  # kept fp32 by default
    assert type(model.model.layers[0].mlp.up_proj) is not torch.nn.Linear


def test_quantize_keep_float_names_the_fp32_layers(tiny_llama_dir, tmp_path):
    quantize(QuantizeConfig(model=str(tiny_llama_dir), out=str(tmp_path / "q"), keep_float=["lm_head"]))
    model, _ = load_quantized(tmp_path / "q")
    assert type(model.lm_head) is torch.nn.Linear
    assert not any(type(m) is torch.nn.Linear for m in model.model.modules())
    with pytest.raises(UserError, match="lm-head: no such linear layer"):
        quantize(QuantizeConfig(model=str(tiny_llama_dir), out=str(tmp_path / "r"), keep_float=["lm-head"]))


def test_cli_prune_quantize_and_report(tiny_llama_dir, calibration, tmp_path):
    runner = CliRunner()
    pruned, q, report = tmp_path / "p", tmp_path / "q", tmp_path / "r"
    common = ["--model", str(tiny_llama_dir)]
    result = runner.invoke(app, ["prune", *common, "--out", str(pruned), "--data", str(calibration),
                                 "--keep-layers", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["quantize", *common, "--out", str(q)]).exit_code == 0
    again = runner.invoke(app, ["quantize", *common, "--out", str(q)])
    assert again.exit_code == 1 and "--overwrite" in again.output
    result = runner.invoke(app, ["compress-report", *common, "--model", str(pruned), "--model", str(q),
                                 "--test", str(calibration), "--task", "generation", "--metrics",
                                 "exact_match", "--speed-prompts", "2", "--new-tokens", "3",
                                 "--out", str(report)])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads((report / "results.json").read_text())["models"]
    assert [r["name"] for r in rows] == [tiny_llama_dir.name, "p", "q"]
    assert rows[1]["params"] < rows[0]["params"] and rows[0]["size_pct"] == 100
    assert all(r["tokens_per_s_single"] > 0 and r["peak_memory_mb"] > 0 for r in rows)
    assert "data:image/png;base64" in (report / "report.html").read_text()
