"""Every tuning method, one table row each, trained by the real loop on tiny real-architecture models.

Each row proves three things: only the intended weights changed, the loss falls on a task the method can
learn, and the saved artefact loaded back with `method.load` gives the trained model's logits.
A new method is a new row.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from conftest import write_jsonl
from tiny import make_model_dir
from tunelab.errors import UserError
from tunelab.inference import MultiAdapterModel
from tunelab.inference.generation import chat_prompt_ids, generate, prompt_messages, stream_chat
from tunelab.methods import get_method
from tunelab.models import load_model
from tunelab.options import option_fields
from tunelab.training import TrainConfig, train
from tunelab.training.loop import Trainer

WORDS = ["alice", "bob", "paris", "london", "tokyo", "great", "bad", "film"]


@dataclass
class Case:
    id: str
    options: dict
    # which base tensors (by state-dict name) training changes; PEFT methods change none
    changes: Callable[[str], bool] = lambda name: False
    arch: str = "llama"


def in_block(index: int):
    return lambda name: name.startswith(f"model.layers.{index}.")


CASES = [
    Case("full", dict(method="full", lr=1e-3), changes=lambda name: True),
    Case("lora", dict(method="lora", lr=3e-2)),
    Case("lora-dora", dict(method="lora", lr=3e-2, dora=True, max_steps=8)),  # DoRA is slow on CPU
    Case("lora-rslora", dict(method="lora", lr=3e-2, rslora=True)),
    Case("selective-last-1", dict(method="selective", lr=1e-2, train_layers="last:1"), changes=in_block(1)),
    Case("selective-norms", dict(method="selective", lr=5e-2, norms_only=True), lambda n: "norm" in n),
    Case(
        "selective-bitfit",
        dict(method="selective", lr=0.3, bitfit=True),
        changes=lambda name: name.endswith(".bias"),
        arch="qwen2",
    ),
    Case("prompt-tuning", dict(method="prompt-tuning", lr=0.3)),
    Case("prompt-tuning-text", dict(method="prompt-tuning", lr=0.3, prompt_init="say the answer")),
    Case("prefix-tuning", dict(method="prefix-tuning", lr=0.3)),
    Case("ia3", dict(method="ia3", lr=0.1)),
]


@pytest.fixture(scope="module")
def model_dirs(tiny_llama_dir, tmp_path_factory):
    return {"llama": tiny_llama_dir, "qwen2": make_model_dir(tmp_path_factory.mktemp("qwen2"), "qwen2")}


@pytest.fixture(scope="module")
def fixed_answer_data(tmp_path_factory):
    """The same answer to every prompt: learnable even by a soft prompt on a random tiny model."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"say {WORDS[i % 8]}"},
                {"role": "assistant", "content": "paris"},
            ]
        }
        for i in range(16)
    ]
    return write_jsonl(tmp_path_factory.mktemp("data") / "fixed.jsonl", rows)


def run_config(model_dir, data, out, **options) -> TrainConfig:
    settings = dict(max_steps=20, batch_size=8, warmup=0, scheduler="constant", seed=0) | options
    takes = option_fields(get_method(settings["method"]).options)
    small = {name: value for name, value in dict(dropout=0.0, num_virtual_tokens=4).items() if name in takes}
    return TrainConfig.from_sources(model=str(model_dir), data=str(data), out=str(out), **small | settings)


def base_state(model, names) -> dict:
    """The base model's tensors under their original names (PEFT renames wrapped layers' `base_layer`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    state = {key.replace("base_layer.", ""): value for key, value in base.state_dict().items()}
    return {key: value for key, value in state.items() if key in names}


def train_losses(out) -> list[float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_method_trains_what_it_should_learns_and_reloads(case, model_dirs, fixed_answer_data, tmp_path):
    from transformers import AutoModelForCausalLM

    model_dir = model_dirs[case.arch]
    config = run_config(model_dir, fixed_answer_data, tmp_path / "out", **case.options)
    base_before = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    trainer = Trainer(config)
    model = trainer.unwrapped
    trainable_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.fit()

    # (a) exactly the intended base tensors changed (a tied lm_head/embedding counts under both names),
    # everything else is bit-identical, and every trained parameter moved.
    base_after = base_state(model, base_before)
    assert base_after.keys() == base_before.keys()
    changed = {name for name in base_before if not torch.equal(base_before[name], base_after[name])}
    assert changed == {name for name in base_before if case.changes(name)}
    params = dict(model.named_parameters())
    assert trainable_before
    assert [n for n, before in trainable_before.items() if torch.equal(params[n], before)] == []

    # (b) it learns
    losses = train_losses(tmp_path / "out")
    assert losses[-1] < 0.8 * losses[0], losses

    # (c) the saved artefact reloads to the same model
    fresh_base = AutoModelForCausalLM.from_pretrained(model_dir)
    reloaded = get_method(config.method).load(fresh_base, tmp_path / "out").eval()
    model.eval()
    ids = torch.tensor([[1, 5, 9, 12, 3, 7]])
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        assert torch.allclose(model(**x).logits, reloaded(**x).logits, atol=1e-5)


def test_trainable_parameter_counts(tiny_llama_dir):
    """What each method trains on the tiny Llama (hidden 32, MLP 64, 2 blocks, 4 virtual tokens)."""
    from transformers import AutoModelForCausalLM

    expected = {
        "full": 31392,
        "selective last:1": 9280,  # one block: attention 3072 + MLP 6144 + two norms 64
        "selective norms": 160,  # 2 blocks x 2 norms + the final norm, 32 each
        "prompt-tuning": 128,  # 4 virtual tokens x 32
        "prefix-tuning": 256,  # 4 x 2 blocks x (key + value) x 16 (2 KV heads x 8)
        "ia3": 192,  # per block: k 16 + v 16 + down_proj input 64
    }
    options = {
        "selective last:1": dict(method="selective", train_layers="last:1"),
        "selective norms": dict(method="selective", norms_only=True),
    }
    for label, count in expected.items():
        chosen = options.get(label, {"method": label})
        takes = option_fields(get_method(chosen["method"]).options)
        config = TrainConfig.from_sources(
            **chosen, **({"num_virtual_tokens": 4} if "num_virtual_tokens" in takes else {})
        )
        base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
        model = get_method(config.method).prepare(base, config)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count, label


def test_selective_patterns_and_tied_embeddings(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    method = get_method("selective")
    model = method.prepare(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
        TrainConfig.from_sources(method="selective", train_layers="*.mlp.down_proj.weight, lm_head.weight"),
    )
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    # lm_head is tied to the input embedding: one tensor, listed under the embedding's name
    assert trained == [
        "model.embed_tokens.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    ]


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(bitfit=True), "no bias parameters"),
        (dict(), "exactly one of"),
        (dict(norms_only=True, bitfit=True), "exactly one of"),
        (dict(train_layers="last:3"), "asks for 3 blocks but the model has 2"),
        (dict(train_layers="last:x"), "last:K"),
        (dict(train_layers="*.mlp.*,*.nothing.*"), r"pattern '\*\.nothing\.\*' matches no parameter"),
    ],
)
def test_selective_refuses_unusable_choices(tiny_llama_dir, options, message):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)  # Llama: no biases
    with pytest.raises(UserError, match=message):
        get_method("selective").prepare(model, TrainConfig(method="selective", options=options))


def test_prompt_init_text_starts_the_soft_prompt_at_its_token_embeddings(tiny_llama_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    config = TrainConfig.from_sources(
        method="prompt-tuning", num_virtual_tokens=6, prompt_init="say the answer"
    )
    model = get_method("prompt-tuning").prepare(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), config)
    ids = tiny_tokenizer("say the answer")["input_ids"]
    ids = (ids * 6)[:6]  # PEFT repeats a short text to fill the virtual tokens
    soft_prompt = model.prompt_encoder["default"].embedding.weight
    assert torch.equal(soft_prompt, model.get_input_embeddings().weight[ids])


def test_prefix_tuning_refuses_gradient_checkpointing(tiny_llama_dir):
    """transformers drops the KV cache, which carries the prefixes, inside checkpointed layers."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    config = TrainConfig(method="prefix-tuning", gradient_checkpointing=True)
    with pytest.raises(UserError, match="gradient-checkpointing"):
        get_method("prefix-tuning").prepare(model, config)


GENERATION_CASES = ["prompt-tuning", "prefix-tuning"]
GENERATION_PROMPTS = ["say bob", "say the quick brown fox jumps over the lazy dog", "x", "name age city json"]
CONVERSATIONS = [[{"role": "user", "content": p}] for p in GENERATION_PROMPTS]


@pytest.fixture(scope="module")
def generation_adapters(tiny_llama_dir, fixed_answer_data, tmp_path_factory):
    """One briefly trained adapter per soft-prompt method (its virtual tokens change the answers)."""
    folders = {}
    for method in GENERATION_CASES:
        out = tmp_path_factory.mktemp(method) / "out"
        train(run_config(tiny_llama_dir, fixed_answer_data, out, method=method, lr=0.3, max_steps=3))
        folders[method] = out
    return folders


def load_adapter(model_dir, method, folder):
    base, tokenizer = load_model(str(model_dir))
    return get_method(method).load(base, folder).eval(), tokenizer


def greedy_by_forward(model, tokenizer, conversation, max_new_tokens) -> str:
    """The reference: the whole sequence through the model's own forward at every step, no KV cache and
    no `generate` (the path training and scoring take, where PEFT adds its virtual tokens itself)."""
    ids = chat_prompt_ids(tokenizer, prompt_messages(conversation))
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


@pytest.mark.parametrize("method", GENERATION_CASES)
def test_batched_left_padded_generation_matches_one_at_a_time(method, tiny_llama_dir, generation_adapters):
    model, tokenizer = load_adapter(tiny_llama_dir, method, generation_adapters[method])
    batched = generate(model, tokenizer, CONVERSATIONS, max_new_tokens=6, batch_size=4)
    alone = generate(model, tokenizer, CONVERSATIONS, max_new_tokens=6, batch_size=1)
    assert batched == alone


@pytest.mark.parametrize("method", GENERATION_CASES)
def test_generation_and_streaming_answer_as_the_models_own_forward(
    method, tiny_llama_dir, generation_adapters
):
    """The virtual tokens really act in `generate` and `stream_chat` (transformers 5.24 renamed the cache
    argument, and PEFT's generate then lost the prefixes: answers as the bare base model's)."""
    model, tokenizer = load_adapter(tiny_llama_dir, method, generation_adapters[method])
    reference = [greedy_by_forward(model, tokenizer, c, 6) for c in CONVERSATIONS]
    base, _ = load_model(str(tiny_llama_dir))
    assert reference != generate(base.eval(), tokenizer, CONVERSATIONS, max_new_tokens=6), "the adapter acts"
    assert generate(model, tokenizer, CONVERSATIONS, max_new_tokens=6, batch_size=4) == reference
    streamed = ["".join(stream_chat(model, tokenizer, c, max_new_tokens=6)).strip() for c in CONVERSATIONS]
    assert streamed == reference


@pytest.mark.parametrize("method", GENERATION_CASES)
def test_multi_adapter_model_with_soft_prompt_adapters(method, tiny_llama_dir, generation_adapters):
    """The service's one-base-many-adapters model: an adapter answers as it does loaded alone, and the base
    (adapters disabled) as the bare base model, with no virtual tokens left in."""
    multi = MultiAdapterModel(str(tiny_llama_dir))
    base_answers = multi.generate(CONVERSATIONS, max_new_tokens=6, batch_size=4)
    alone, tokenizer = load_adapter(tiny_llama_dir, method, generation_adapters[method])
    adapter_answers = generate(alone, tokenizer, CONVERSATIONS, max_new_tokens=6, batch_size=1)
    assert adapter_answers != base_answers
    multi.load_adapter("a", generation_adapters[method])
    assert multi.generate(CONVERSATIONS, max_new_tokens=6, batch_size=4) == adapter_answers
    multi.use_adapter(None)
    assert multi.generate(CONVERSATIONS, max_new_tokens=6, batch_size=4) == base_answers
    model, context = multi.model()
    with context:
        assert (
            "".join(stream_chat(model, multi.tokenizer, CONVERSATIONS[0], max_new_tokens=6)).strip()
            == (base_answers[0])
        )
    multi.use_adapter("a")
    assert multi.generate(CONVERSATIONS, max_new_tokens=6, batch_size=1) == adapter_answers
