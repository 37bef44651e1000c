"""The vLLM server engine (rollout/vllm_server.py) against a fake `vllm serve` on CPU (tests/fake_vllm.py): what it
asks for, how it puts the answers back together, and that every way a server can fail is one clear error.

The engine contract itself (layout, stopping, log-probs equal to the trainer's, greedy argmax) runs in
tests/test_engine_contract.py. The weight push is checked up to NCCL: the HTTP routes, their order and bodies, and
which tensors are broadcast, with vLLM's communicator faked on CPU. The NCCL transfer itself needs GPUs: untested.
"""

import re
import socket
import sys
import types

import pytest
import torch
from fake_vllm import FakeVLLMServer

from reasonrl.config import ConfigError, load_config
from reasonrl.models import encode_prompt, load_model
from reasonrl.rollout.base import SamplingParams
from reasonrl.rollout.factory import make_engine
from reasonrl.rollout.fast import FastEngine
from reasonrl.rollout.vllm_server import VLLMServerEngine, VLLMServerError
from reasonrl.trainer import Trainer

PROMPTS = ["Compute 3+4.", "Compute 12+30.", "Compute 25+61.", "7+8?", "Compute 40+2. Think step by step."]


@pytest.fixture(scope="module")
def student():
    return load_model("student", device="cpu")


@pytest.fixture
def server(student):
    model, tok = student
    fake = FakeVLLMServer(FastEngine(model, tok), tok)
    yield fake
    fake.close()


def engine_for(server, **kwargs) -> VLLMServerEngine:
    return VLLMServerEngine(server.url, server.tokenizer, **{"timeout": 10.0, **kwargs})


def prompts_of(tok) -> list[list[int]]:
    return [encode_prompt(tok, p) for p in PROMPTS]


def test_prompts_split_over_requests_come_back_in_the_interface_layout(server):
    engine = engine_for(server, prompts_per_request=2, concurrent_requests=3)
    prompts = prompts_of(server.tokenizer)
    responses = []
    server.tamper = responses.append
    torch.manual_seed(0)
    out = engine.generate(prompts, 3, SamplingParams(max_new_tokens=16, temperature=0.8))
    assert sorted(len(r["prompt"]) for r in server.requests) == [1, 2, 2]  # 5 prompts, at most 2 per request
    assert out.prompt_ids == [p for p in prompts for _ in range(3)]
    assert out.group == [g for g in range(5) for _ in range(3)]
    # Row i*3+j holds exactly the tokens, log-probs and finish the server sent for sample j of prompt i.
    sent = {}
    for request, response in zip(server.requests, responses):
        for choice in response["choices"]:
            prompt = request["prompt"][choice["index"] // 3]
            sent.setdefault(tuple(prompt), []).append(choice)
    for row, prompt in enumerate(out.prompt_ids):
        choice = sent[tuple(prompt)][row % 3]
        assert out.completion_ids[row] == choice["token_ids"]
        assert out.logprobs[row] == choice["logprobs"]["token_logprobs"]
        assert out.finished[row] == (choice["finish_reason"] == "stop")
    assert any(out.finished) and not all(out.finished)


def test_sampling_and_greedy_requests_carry_vllms_fields(server):
    engine, tok = engine_for(server), server.tokenizer
    prompts = prompts_of(tok)[:2]
    engine.generate(prompts, 2, SamplingParams(max_new_tokens=8, temperature=0.7, top_p=0.9, top_k=0))
    sampling = server.requests[-1]
    assert sampling == {
        "model": "student",
        "prompt": prompts,
        "n": 2,
        "max_tokens": 8,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": -1,
        "stop_token_ids": [tok.eos_token_id],
        "return_token_ids": True,
        "logprobs": 0,
    }
    out = engine.generate(prompts, 1, SamplingParams(max_new_tokens=8, top_k=5, greedy=True))
    greedy = server.requests[-1]
    assert greedy["temperature"] == 0.0 and greedy["top_k"] == 5 and "logprobs" not in greedy
    assert out.logprobs == [[], []] and all(out.completion_ids)


def test_no_prompts_sends_no_request(server):
    out = engine_for(server).generate([], 4, SamplingParams())
    assert len(out) == 0 and server.requests == []


def test_unreachable_server_is_one_clear_error():
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(VLLMServerError, match=rf"cannot reach the vLLM server at {url}/v1/models"):
        VLLMServerEngine(url, None, timeout=5.0)


def drop_token_ids(response):
    del response["choices"][1]["token_ids"]


def drop_a_choice(response):
    response["choices"].pop()


def abort(response):
    response["choices"][0]["finish_reason"] = "abort"


def short_logprobs(response):
    response["choices"][0]["logprobs"]["token_logprobs"].pop()


def text_token(response):
    response["choices"][0]["token_ids"][0] = "7"


def repeat_index(response):
    response["choices"][1]["index"] = 0


def no_choices(response):
    response.pop("choices")


@pytest.mark.parametrize(
    "tamper, message",
    [
        (drop_token_ids, r"choices\[1\] has no token_ids"),
        (drop_a_choice, r"3 choices for 2 prompts x n=2"),
        (abort, r"finish_reason is 'abort'"),
        (short_logprobs, r"log-probs for"),
        (text_token, r"token_ids holds a non-number"),
        (repeat_index, r"index 0 is out of range or repeated"),
        (no_choices, r"response.choices is missing"),
    ],
)
def test_malformed_answers_are_errors_naming_the_url(server, tamper, message):
    engine = engine_for(server)
    server.tamper = tamper
    with pytest.raises(VLLMServerError, match=rf"{server.url}/v1/completions .*{message}"):
        engine.generate(prompts_of(server.tokenizer)[:2], 2, SamplingParams(max_new_tokens=6))


@pytest.mark.parametrize(
    "raw, message",
    [
        ((500, b'{"error": {"message": "CUDA out of memory"}}'), r"answered HTTP 500 .*CUDA out of memory"),
        ((200, b"<html>not json"), r"answered with invalid JSON"),
    ],
)
def test_failed_answers_are_errors_naming_the_url(server, raw, message):
    engine = engine_for(server)
    server.raw = raw
    with pytest.raises(VLLMServerError, match=rf"{server.url}/v1/completions {message}"):
        engine.generate(prompts_of(server.tokenizer)[:1], 1, SamplingParams(max_new_tokens=4))


def test_a_slow_server_times_out(server):
    engine = engine_for(server, timeout=0.2)
    server.delay = 0.6
    with pytest.raises(VLLMServerError, match=rf"{server.url}/v1/completions did not answer within 0.2 s"):
        engine.generate(prompts_of(server.tokenizer)[:1], 1, SamplingParams(max_new_tokens=4))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_weight_push_without_cuda_is_one_clear_error(server, student):
    engine = engine_for(server)
    engine.sync_weights(student[0])
    with pytest.raises(RuntimeError, match="over NCCL, which needs a CUDA GPU"):
        engine.generate(prompts_of(server.tokenizer)[:1], 1, SamplingParams(max_new_tokens=4))
    assert server.requests == []  # the push comes before generation, so no stale-weight rollout was made


class FakeNCCL:
    """vLLM's StatelessProcessGroup and PyNcclCommunicator as the engine uses them, on CPU, recording what was sent."""

    def __init__(self):
        self.rendezvous: list[dict] = []
        self.sent: list[tuple[torch.Tensor, int]] = []
        fake = self

        class StatelessProcessGroup:
            @staticmethod
            def create(**kwargs):
                fake.rendezvous.append(kwargs)
                return "group"

        class PyNcclCommunicator:
            def __init__(self, group, device):
                assert group == "group" and device == 0
                self.device = torch.device("cpu")

            def broadcast(self, tensor, src):
                fake.sent.append((tensor.clone(), src))

        self.modules = {
            "vllm": None,
            "vllm.distributed": None,
            "vllm.distributed.device_communicators": None,
            "vllm.distributed.device_communicators.pynccl": PyNcclCommunicator,
            "vllm.distributed.utils": StatelessProcessGroup,
        }

    def install(self, monkeypatch) -> None:
        for name, cls in self.modules.items():
            module = types.ModuleType(name)
            if cls is not None:
                setattr(module, cls.__name__, cls)
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_weight_push_drives_vllms_transfer_routes_before_the_next_generation(server, student, monkeypatch):
    nccl = FakeNCCL()
    nccl.install(monkeypatch)
    model, tok = student
    engine, greedy = engine_for(server), SamplingParams(max_new_tokens=4, greedy=True)
    engine.sync_weights(model)
    engine.sync_weights(model)  # two updates between generations: one push
    engine.generate(prompts_of(tok)[:1], 1, greedy)
    engine.generate(prompts_of(tok)[:1], 1, greedy)  # no update since: no push
    engine.sync_weights(model)
    engine.generate(prompts_of(tok)[:1], 1, greedy)
    update = ["/pause", "/start_weight_update", "/update_weights", "/finish_weight_update", "/resume"]
    assert [path for path, _ in server.calls] == [
        "/v1/models",
        "/get_world_size",
        "/init_weight_transfer_engine",
        *update,
        "/v1/completions",
        "/v1/completions",
        *update,
        "/v1/completions",
    ]
    bodies = dict(server.calls)  # the last body of each route
    init = bodies["/init_weight_transfer_engine"]["init_info"]
    assert init == {
        "master_address": "127.0.0.1",
        "master_port": init["master_port"],
        "rank_offset": 1,
        "world_size": 2,
    }
    assert nccl.rendezvous == [{"host": "127.0.0.1", "port": init["master_port"], "rank": 0, "world_size": 2}]
    assert bodies["/start_weight_update"] == {"is_checkpoint_format": True}
    state = model.state_dict()
    assert bodies["/update_weights"]["update_info"] == {
        "names": list(state),
        "dtype_names": ["float32"] * len(state),
        "shapes": [list(t.shape) for t in state.values()],
    }
    assert len(nccl.sent) == 2 * len(state)  # every tensor, in the announced order, from rank 0, at each push
    for (tensor, src), expected in zip(nccl.sent, [*state.values(), *state.values()]):
        assert src == 0 and torch.equal(tensor, expected)


def test_a_failed_weight_update_stops_generation_and_resumes_the_server(server, student, monkeypatch):
    FakeNCCL().install(monkeypatch)
    engine = engine_for(server)
    server.failing = {"/update_weights"}
    engine.sync_weights(student[0])
    with pytest.raises(VLLMServerError, match=rf"{server.url}/update_weights answered HTTP 500"):
        engine.generate(prompts_of(server.tokenizer)[:1], 1, SamplingParams(max_new_tokens=4))
    assert [path for path, _ in server.calls][-2:] == ["/update_weights", "/resume"] and server.requests == []


def test_config_selects_the_server_engine_and_checks_its_keys(server, student, tmp_path):
    model, tok = student
    config = load_config(
        None, ["rollout.engine=vllm-server", f"rollout.vllm.server_url={server.url}", "rollout.vllm.server_timeout=30"]
    )
    engine = make_engine(config, model, tok, tmp_path)
    assert isinstance(engine, VLLMServerEngine) and engine.url == server.url and engine.timeout == 30.0
    bad = {
        "rollout.vllm.server_url=localhost:8000": "rollout.vllm.server_url='localhost:8000' is not an http",
        "rollout.vllm.server_timeout=0": "rollout.vllm.server_timeout must be > 0",
        "rollout.vllm_server_url=http://x:1": "rollout.vllm_server_url was renamed rollout.vllm.server_url",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):  # at load time, before any weights are read
            load_config(None, ["rollout.engine=vllm-server", override])
    with pytest.raises(ValueError, match="choose auto, hf, replay, vllm or vllm-server"):
        make_engine(load_config(None, ["rollout.engine=vllm_server"]), model, tok, tmp_path)
    with pytest.raises(ConfigError, match=re.escape("did you mean 'rollout.vllm.server_url'")):
        load_config(None, ["rollout.vllm.server_uri=http://localhost:8000"])


def test_trainer_stops_before_the_run_starts_when_the_server_is_down(quick_config, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = quick_config("rollout.engine=vllm-server", f"rollout.vllm.server_url=http://127.0.0.1:{port}")
    with pytest.raises(VLLMServerError, match="cannot reach"):
        Trainer(config)
    assert not (tmp_path / "run").exists()
