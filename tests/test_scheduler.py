"""Continuous batching in the service's engine: rows of one batch with different adapters (and the base)
give exactly their greedy tokens alone; a row's stop, max_tokens or cancel ends it and not the others;
a request that arrives mid-run joins the running batch. Penalties, logit_bias and logprobs apply per row,
as a direct computation on the model's logits predicts them."""

import threading

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tunelab.inference.scheduler import SequenceRequest
from tunelab.models import load_model
from tunelab.service.engine import Engine, Generation, Sampling, Target
from tunelab.service.metrics import Metrics
from tunelab.service.settings import ServiceSettings

PROMPTS = ["say bob", "the quick brown fox jumps over the lazy dog and then", "tokyo", "name age city json"]


def random_lora(model_dir, folder, seed, **options):
    """A LoRA adapter with random (not zero) B, so it really changes the answers; `options` are
    LoraConfig's (rank 4 on every linear layer unless they say otherwise)."""
    torch.manual_seed(seed)
    model, _ = load_model(str(model_dir))
    config = LoraConfig(init_lora_weights=False, **{"r": 4, "target_modules": "all-linear", **options})
    get_peft_model(model, config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapters(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": random_lora(tiny_llama_dir, root / "a", 1),
        "b": random_lora(tiny_llama_dir, root / "b", 2),
        "dora": random_lora(tiny_llama_dir, root / "dora", 3, use_dora=True),
    }


@pytest.fixture
def engine(tiny_llama_dir, tmp_path):
    settings = ServiceSettings(data_dir=str(tmp_path), base_models={"tiny": str(tiny_llama_dir)})
    engine = Engine(settings, metrics=Metrics())
    engine.base("tiny")
    return engine


def alone(model_dir, adapter, prompt_ids, max_tokens):
    """The reference: transformers' own greedy `generate`, one sequence, that adapter only."""
    from peft import PeftModel

    model, tokenizer = load_model(str(model_dir))
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    ids = torch.tensor([prompt_ids])
    out = model.eval().generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def greedy(max_tokens, **options):
    return Sampling(max_tokens=max_tokens, temperature=0.0, **options)


def target(name, adapters):
    return Target(name, "tiny", adapters[name]) if name else Target("tiny", "tiny")


def held(engine):
    """Holds the scheduler between steps until released, so requests submitted meanwhile start together."""
    gate = threading.Event()
    engine.schedulers[0].call_soon(gate.wait)
    return gate


def test_a_batch_mixing_two_adapters_and_the_base_gives_each_row_its_greedy_tokens_alone(
    engine, adapters, tiny_llama_dir
):
    tokenizer = engine.tokenizer("tiny")
    rows = [(name, prompt) for name in ("a", "b", None) for prompt in PROMPTS[:2]] + [("a", PROMPTS[2])]
    sizes = []
    engine.schedulers[0].on_step = sizes.append
    gate = held(engine)
    generations = [
        Generation(engine, target(name, adapters), tokenizer(prompt)["input_ids"], greedy(10))
        for name, prompt in rows
    ]
    gate.set()
    texts = [g.run() for g in generations]
    assert max(sizes) == len(rows), "all rows decoded in one batch"
    for (name, prompt), text in zip(rows, texts, strict=True):
        reference = alone(tiny_llama_dir, adapters.get(name), tokenizer(prompt)["input_ids"], 10)
        assert text == reference, (name, prompt)
    assert len({texts[0], texts[2], texts[4]}) == 3, "the adapters change the answer"


def test_max_tokens_a_stop_string_or_a_cancel_ends_one_row_and_not_the_others(
    engine, adapters, tiny_llama_dir
):
    tokenizer = engine.tokenizer("tiny")
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    full = alone(tiny_llama_dir, adapters["a"], ids[0], 12)
    stop = full[4:6]
    gate = held(engine)
    short = Generation(engine, target("a", adapters), ids[0], greedy(3))
    stopped = Generation(engine, target("a", adapters), ids[0], greedy(12, stop=(stop,)))
    cancelled = Generation(engine, target("b", adapters), ids[1], greedy(200))
    long = Generation(engine, target(None, adapters), ids[3], greedy(12))
    gate.set()
    pieces = cancelled.pieces()
    next(pieces)
    cancelled.cancel()
    list(pieces)
    assert short.run() and short.finish_reason == "length" and short.completion_tokens == 3
    assert stopped.run() == full[: full.index(stop)] and stopped.finish_reason == "stop"
    assert cancelled.completion_tokens < 200
    assert long.run() == alone(tiny_llama_dir, None, ids[3], 12)


def test_a_request_arriving_mid_run_joins_the_batch_and_ends_first(engine, adapters):
    tokenizer = engine.tokenizer("tiny")
    ids = tokenizer(PROMPTS[0])["input_ids"]
    long = Generation(engine, target(None, adapters), ids, Sampling(max_tokens=300, temperature=1.0, seed=0))
    pieces = long.pieces()
    next(pieces)  # the long one is running
    short = Generation(engine, target("a", adapters), ids, greedy(2))
    short.run()
    assert long.completion_tokens < 300, "the short request did not wait for the long one"
    list(pieces)


def test_adapters_that_cannot_share_a_batch_take_turns_and_stay_exact(engine, adapters, tiny_llama_dir):
    tokenizer = engine.tokenizer("tiny")
    ids = tokenizer(PROMPTS[1])["input_ids"]
    sizes = []
    engine.schedulers[0].on_step = sizes.append
    gate = held(engine)
    dora = Generation(engine, target("dora", adapters), ids, greedy(8))
    base = Generation(engine, target(None, adapters), ids, greedy(8))
    gate.set()
    assert dora.run() == alone(tiny_llama_dir, adapters["dora"], ids, 8)
    assert base.run() == alone(tiny_llama_dir, None, ids, 8)
    assert max(sizes) == 1, "PEFT does not mix DoRA rows with others: they run one batch after another"


def reference(model, prompt_ids, max_tokens, frequency_penalty=0.0, presence_penalty=0.0, bias=None):
    """OpenAI's definition computed directly, a whole forward pass a token: greedy on the logits less the
    penalties of the completion's counts, plus the bias; with log_softmax of the raw logits of each token."""
    ids, tokens, logprobs = list(prompt_ids), [], []
    counts = torch.zeros(model.config.vocab_size)
    with torch.no_grad():
        for _ in range(max_tokens):
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            scores = logits - counts * frequency_penalty - (counts > 0) * presence_penalty
            for token, value in (bias or {}).items():
                scores[token] += value
            token = int(scores.argmax())
            tokens.append(token)
            logprobs.append(logits.log_softmax(-1))
            counts[token] += 1
            ids.append(token)
    return tokens, logprobs


def submit(engine, prompt_ids, max_tokens, **options):
    """A row straight to the scheduler: its tokens and their logprobs, once `done` is set."""
    row = {"tokens": [], "logprobs": [], "done": threading.Event()}

    def on_token(token, logprob):
        row["tokens"].append(token)
        row["logprobs"].append(logprob)

    request = SequenceRequest(
        prompt_ids, max_tokens, on_token, lambda reason, error: row["done"].set(), **options
    )
    engine.schedulers[0].submit(request)
    return row


def test_penalties_bias_and_logprobs_apply_per_row_in_one_batch(engine, tiny_llama_dir):
    tokenizer = engine.tokenizer("tiny")
    model = load_model(str(tiny_llama_dir))[0].eval()
    ids = tokenizer("tokyo")["input_ids"]
    plain, raw = reference(model, ids, 10)
    assert len(set(plain)) < len(plain), "greedy repeats itself here: a penalty has something to change"
    settings = {
        "plain": {},
        "frequency": {"frequency_penalty": 2.0},
        "presence": {"presence_penalty": 1.5, "frequency_penalty": -0.5},
        "bias": {"logit_bias": {plain[1]: -100.0, 42: 3.0}},
    }
    sizes = []
    engine.schedulers[0].on_step = sizes.append
    gate = held(engine)
    rows = {name: submit(engine, ids, 10, logprobs=3, **options) for name, options in settings.items()}
    forced = submit(engine, ids, 6, logit_bias={57: 100.0})
    gate.set()
    for row in [*rows.values(), forced]:
        assert row["done"].wait(60)
    assert max(sizes) == len(settings) + 1, "all rows decoded in one batch"
    assert forced["tokens"] == [57] * 6 and forced["logprobs"] == [None] * 6
    for name, options in settings.items():
        tokens, logprobs = reference(
            model, ids, 10, options.get("frequency_penalty", 0.0), options.get("presence_penalty", 0.0),
            options.get("logit_bias"),
        )  # fmt: skip
        assert rows[name]["tokens"] == tokens, name
        for token, got, expected in zip(tokens, rows[name]["logprobs"], logprobs, strict=True):
            assert got.logprob == pytest.approx(float(expected[token]), abs=1e-4)  # the raw logits'
            best = expected.topk(3)
            assert [t for t, _ in got.top] == best.indices.tolist()
            assert [v for _, v in got.top] == pytest.approx(best.values.tolist(), abs=1e-4)
    assert rows["frequency"]["tokens"] != plain and rows["presence"]["tokens"] != plain
    assert rows["plain"]["tokens"] == plain and plain[1] not in rows["bias"]["tokens"]


LONG = "the quick brown fox jumps over the lazy dog and then the dog wakes up and runs after the fox"


def test_the_prefix_cache_gives_the_tokens_of_no_cache_and_never_crosses_adapters(
    engine, adapters, tiny_llama_dir
):
    tokenizer = engine.tokenizer("tiny")
    first, second = tokenizer(LONG + " one")["input_ids"], tokenizer(LONG + " two three four")["input_ids"]
    other = tokenizer("tokyo city")["input_ids"]
    shared = next(i for i, (x, y) in enumerate(zip(first, second, strict=False)) if x != y)
    seen = Generation(engine, target(None, adapters), first, greedy(6))
    assert seen.run() == alone(tiny_llama_dir, None, first, 6) and seen.cached_tokens == 0
    # hits of two lengths, the same prompt on an adapter and a miss, prefilled together
    rows = [(None, second), (None, first), ("a", first), ("b", other)]
    gate = held(engine)
    generations = [Generation(engine, target(name, adapters), ids, greedy(6)) for name, ids in rows]
    gate.set()
    for (name, ids), generation in zip(rows, generations, strict=True):
        assert generation.run() == alone(tiny_llama_dir, adapters.get(name), ids, 6), name
    assert [g.cached_tokens for g in generations] == [shared, len(first) - 1, 0, 0]
    again = Generation(engine, target("a", adapters), first, greedy(6))
    assert again.run() == generations[2].text and again.cached_tokens == len(first) - 1
    engine.unload("a")  # its KV goes with it: the name may come back with other weights
    assert not [key for key in engine.schedulers[0].prefix_cache.entries if key[0] == "a"]


def test_the_choices_of_one_prompt_share_one_prefill(engine, adapters, monkeypatch):
    from tunelab.inference import scheduler

    prefilled = []
    real_prefill = scheduler.prefill
    monkeypatch.setattr(
        scheduler,
        "prefill",
        lambda m, prompts, *a: prefilled.append(len(prompts)) or real_prefill(m, prompts, *a),
    )
    ids = engine.tokenizer("tiny")(PROMPTS[1])["input_ids"]
    gate = held(engine)
    choices = [Generation(engine, target("b", adapters), ids, greedy(5)) for _ in range(3)]
    seeded = Generation(engine, target("b", adapters), ids, Sampling(max_tokens=5, temperature=1.0, seed=1))
    gate.set()
    assert len({g.run() for g in choices}) == 1 and seeded.run()
    assert prefilled == [1], "four rows on one prompt: one prompt prefilled"


@pytest.mark.parametrize("cache", ["prefix cache", "no prefix cache"])
def test_a_long_prompt_is_prefilled_a_chunk_between_decode_steps_and_gives_its_tokens(
    engine, adapters, tiny_llama_dir, monkeypatch, cache
):
    from tunelab.inference import scheduler as batching

    batch = engine.schedulers[0]
    batch.prefill_chunk = 16
    if cache == "no prefix cache":
        batch.prefix_cache.max_bytes = 0
    events = []  # ("prefill", tokens computed) and ("step", rows), in order
    real_prefill = batching.prefill

    def logged_prefill(model, prompts, hits, extra):
        events.append(("prefill", len(prompts[0]) - (hits[0].tokens if hits[0] else 0)))
        return real_prefill(model, prompts, hits, extra)

    monkeypatch.setattr(batching, "prefill", logged_prefill)
    batch.on_step = lambda rows: events.append(("step", rows))
    tokenizer = engine.tokenizer("tiny")
    no_end = {tokenizer.eos_token_id: -100.0}
    running = Generation(
        engine, target(None, adapters), tokenizer("tokyo")["input_ids"], greedy(300, logit_bias=no_end)
    )
    pieces = running.pieces()
    next(pieces)  # it decodes while the long prompt comes
    ids = tokenizer(" ".join([LONG] * 3))["input_ids"]
    assert len(ids) > 3 * 16
    events.clear()
    long = Generation(engine, target("a", adapters), ids, greedy(6))
    assert long.run() == alone(tiny_llama_dir, adapters["a"], ids, 6)
    chunks = [tokens for kind, tokens in events if kind == "prefill"]
    assert len(chunks) == -(-len(ids) // 16) and max(chunks) == 16 and sum(chunks) == len(ids)
    at = [i for i, (kind, _) in enumerate(events) if kind == "prefill"]
    between = [kind for kind, _ in events[at[0] : at[-1] + 1]]
    assert between == ["prefill", "step"] * (len(chunks) - 1) + ["prefill"], "a decode step after each chunk"
    if cache == "prefix cache":  # a longer prompt on it: chunks from where the stored KV ends
        more = ids + tokenizer(" and more")["input_ids"]
        again = Generation(engine, target("a", adapters), more, greedy(6))
        assert again.run() == alone(tiny_llama_dir, adapters["a"], more, 6)
        assert again.cached_tokens == len(ids)
    running.cancel()
    list(pieces)
    assert running.completion_tokens < 300
