"""`tunelab serve --engine vllm` without a GPU: a stand-in for vLLM's few classes checks what tunelab hands
it (the base folder, each `ft:` model as a LoRARequest with a stable id, sampling settings, aborts) and that
its tokens come back through the same OpenAI API. The real engine runs only where vLLM and CUDA are."""

import importlib.machinery
import importlib.util
import sys
import types
from types import SimpleNamespace

import pytest
import torch
from fastapi.testclient import TestClient
from peft import IA3Config, LoraConfig

from test_service_api import K1, chat, fake_fine_tuned_model, settings_for
from tunelab.errors import UserError
from tunelab.inference.generation import chat_prompt_ids
from tunelab.service import ServiceSettings, create_app

ANSWER = "bob paris london"


class FakeAsyncLLMEngine:
    made: list = []

    def __init__(self, args):
        self.args, self.requests, self.aborted = args, [], []

    @classmethod
    def from_engine_args(cls, args):
        FakeAsyncLLMEngine.made.append(cls(args))
        return FakeAsyncLLMEngine.made[-1]

    async def generate(self, prompt, params, request_id, lora_request=None):
        self.requests.append((prompt, params, lora_request))
        tokens = self.tokenizer(ANSWER)["input_ids"][: params["max_tokens"]]
        for end in range(1, len(tokens) + 1):
            done = end == len(tokens)
            completion = SimpleNamespace(token_ids=tokens[:end], finish_reason="length" if done else None)
            if params.get("logprobs") is not None:  # vLLM's: the top ones by rank and the chosen one
                completion.logprobs = [vllm_logprobs(token) for token in tokens[:end]]
            yield SimpleNamespace(outputs=[completion], finished=done)

    async def abort(self, request_id):
        self.aborted.append(request_id)


def vllm_logprobs(token):
    """As vLLM reports a token: the chosen one ranked 3rd here, behind ids 1 and 2."""
    return {
        1: SimpleNamespace(logprob=-0.5, rank=1),
        2: SimpleNamespace(logprob=-1.0, rank=2),
        token: SimpleNamespace(logprob=-2.0, rank=3),
    }


def module(name, **attributes):
    made = types.ModuleType(name)
    made.__spec__ = importlib.machinery.ModuleSpec(name, None)
    made.__dict__.update(attributes)
    return made


@pytest.fixture
def fake_vllm(monkeypatch, tiny_tokenizer):
    FakeAsyncLLMEngine.made = []
    FakeAsyncLLMEngine.tokenizer = tiny_tokenizer
    keywords = lambda **kwargs: kwargs  # noqa: E731  (vLLM's argument classes, as plain dicts)
    modules = {
        "vllm": module(
            "vllm", AsyncEngineArgs=keywords, AsyncLLMEngine=FakeAsyncLLMEngine, SamplingParams=keywords
        ),
        "vllm.inputs": module("vllm.inputs", TokensPrompt=keywords),
        "vllm.lora": module("vllm.lora"),
        "vllm.lora.request": module("vllm.lora.request", LoRARequest=lambda *args: args),
    }
    for name, fake in modules.items():
        monkeypatch.setitem(sys.modules, name, fake)
    return FakeAsyncLLMEngine


def test_ft_models_reach_vllm_as_lora_requests_and_answers_come_back(tmp_path, tiny_llama_dir, fake_vllm):
    settings = settings_for(tmp_path, tiny_llama_dir, engine="vllm", max_loaded_adapters=3)
    with TestClient(create_app(settings)) as client:
        lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        tuned = fake_fine_tuned_model(client, tiny_llama_dir, "ft:tiny:o::a", lora)
        service = client.app.state.service
        base_reply = chat(client, max_tokens=2).json()
        tuned_reply = chat(client, model=tuned, max_tokens=8, temperature=0.7, top_p=0.9, seed=3).json()
        again = chat(client, model=tuned, max_tokens=8).json()
        (engine,) = fake_vllm.made
        assert engine.args["model"] == str(tiny_llama_dir.resolve()) and engine.args["enable_lora"]
        assert engine.args["max_loras"] == 3
        (prompt, params, base_lora), (_, tuned_params, lora_request), (_, _, same) = engine.requests
        assert base_lora is None and params["temperature"] == 0.0 and params["max_tokens"] == 2
        folder = str(service.data.run_dir(service.store.get_model(tuned, service.keys["key-one"]).job_id))
        assert lora_request == (tuned, 1, folder) and same == lora_request  # one stable id per adapter
        assert tuned_params | {"stop_token_ids": None} == {
            "n": 1, "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "seed": 3, "stop_token_ids": None,
            "frequency_penalty": 0.0, "presence_penalty": 0.0, "logit_bias": None, "logprobs": None,
        }  # fmt: skip
        assert prompt["prompt_token_ids"] == chat_prompt_ids(
            fake_vllm.tokenizer, [{"role": "user", "content": "say bob"}]
        )
        assert tuned_reply["choices"][0]["message"]["content"] == ANSWER
        assert tuned_reply["usage"]["completion_tokens"] == len(fake_vllm.tokenizer(ANSWER)["input_ids"])
        assert again["choices"][0]["finish_reason"] == "length"
        two_tokens = fake_vllm.tokenizer.decode(fake_vllm.tokenizer(ANSWER)["input_ids"][:2])
        assert base_reply["choices"][0]["message"]["content"] == two_tokens.strip()


def test_adapters_vllm_cannot_serve_are_a_clear_400(tmp_path, tiny_llama_dir, fake_vllm):
    with TestClient(create_app(settings_for(tmp_path, tiny_llama_dir, engine="vllm"))) as client:
        ia3 = IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])
        name = fake_fine_tuned_model(client, tiny_llama_dir, "ft:tiny:o::ia3", ia3)
        reply = chat(client, model=name, max_tokens=2)
        assert reply.status_code == 400
        assert "IA3 adapter; vLLM serves plain LoRA only" in reply.json()["error"]["message"]


def test_engine_vllm_without_vllm_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed
    with pytest.raises(UserError, match="needs vLLM installed"):
        ServiceSettings(data_dir=str(tmp_path), engine="vllm")
    with pytest.raises(UserError, match="engine must be one of"):
        ServiceSettings(data_dir=str(tmp_path), engine="tgi")


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(),
    reason="vLLM's engine needs vLLM installed and a CUDA GPU",
)
def test_real_vllm_answers_through_the_api(tmp_path, tiny_llama_dir):
    with TestClient(create_app(settings_for(tmp_path, tiny_llama_dir, engine="vllm"))) as client:
        reply = chat(client, max_tokens=4, headers=K1)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1


def test_penalties_bias_and_logprobs_reach_vllm_and_its_logprobs_come_back(
    tmp_path, tiny_llama_dir, fake_vllm
):
    with TestClient(create_app(settings_for(tmp_path, tiny_llama_dir, engine="vllm"))) as client:
        options = dict(frequency_penalty=0.5, presence_penalty=-1.0, logit_bias={"5": 10, "7": -100})
        reply = chat(client, max_tokens=3, logprobs=True, top_logprobs=2, **options).json()
        legacy = client.post(
            "/v1/completions",
            headers=K1,
            json={"model": "tiny", "prompt": "say", "max_tokens": 3, "logprobs": 0},
        ).json()
        (engine,) = fake_vllm.made
        (_, params, _), (_, legacy_params, _) = engine.requests
        assert params["frequency_penalty"] == 0.5 and params["presence_penalty"] == -1.0
        assert params["logit_bias"] == {5: 10.0, 7: -100.0} and params["logprobs"] == 2
        assert legacy_params["logprobs"] == 0
        tokens = fake_vllm.tokenizer(ANSWER)["input_ids"][:3]
        content = reply["choices"][0]["logprobs"]["content"]
        assert [c["logprob"] for c in content] == [-2.0] * 3
        assert [c["token"] for c in content] == [fake_vllm.tokenizer.decode([t]) for t in tokens]
        assert [[t["logprob"] for t in c["top_logprobs"]] for c in content] == [[-0.5, -1.0]] * 3
        logprobs = legacy["choices"][0]["logprobs"]
        assert logprobs["token_logprobs"] == [-2.0] * 3
        assert [list(top.values()) for top in logprobs["top_logprobs"]] == [[-2.0]] * 3  # the chosen one only
