"""A stand-in for `vllm serve` on CPU: vLLM's OpenAI-compatible `/v1/completions` and `/v1/models`, answered in
vLLM's documented response shape by one of reasonrl's own engines, so VLLMServerEngine can be tested without a GPU.

Like vLLM it rejects a request that names an unknown model or sends a malformed field (HTTP 400), and, stricter
than vLLM, fields it does not know: a misspelt field would otherwise be silently ignored.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from reasonrl.rollout.base import RolloutEngine, SamplingParams

MODEL = "student"
FIELDS = {
    "model",
    "prompt",
    "n",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "logprobs",
    "stop_token_ids",
    "return_token_ids",
}
TRANSFER_ROUTES = {
    "/init_weight_transfer_engine",
    "/pause",
    "/start_weight_update",
    "/update_weights",
    "/finish_weight_update",
    "/resume",
}


class FakeVLLMServer:
    """Serves on 127.0.0.1 from a background thread until `close()`. Faults for error tests:
    `raw = (status, bytes)` answers every request with exactly that; `tamper(response_dict)` edits a completion
    answer before it is sent; routes in `failing` answer HTTP 500; `delay` seconds pass before each answer.

    The weight-transfer routes (VLLM_SERVER_DEV_MODE) answer as vLLM's do, receiving nothing: the tensors would
    come over NCCL, which a test fakes on its own side."""

    def __init__(self, engine: RolloutEngine, tokenizer):
        self.engine, self.tokenizer = engine, tokenizer
        self.calls: list[tuple[str, dict | None]] = []  # (path, JSON body or None for a GET), in order
        self.raw: tuple[int, bytes] | None = None
        self.tamper: Callable[[dict], None] | None = None
        self.failing: set[str] = set()
        self.delay = 0.0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                fake._answer(self, None)

            def do_POST(self):
                fake._answer(self, json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))

            def log_message(self, *args):  # keep test output clean
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)  # one request at a time: the engine is not thread-safe
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)  # fast shutdown
        self.thread.start()

    @property
    def requests(self) -> list[dict]:
        """The bodies of the completion requests received."""
        return [body for path, body in self.calls if path == "/v1/completions"]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def _answer(self, handler: BaseHTTPRequestHandler, body: dict | None) -> None:
        time.sleep(self.delay)
        self.calls.append((handler.path, body))
        if self.raw is not None:
            status, payload = self.raw
        else:
            status, answer = self._route(handler.path, body)
            payload = json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        with contextlib.suppress(OSError):  # the client gave up waiting (the timeout test)
            handler.wfile.write(payload)

    def _route(self, path: str, body: dict | None) -> tuple[int, Any]:
        if path in self.failing:
            return 500, {"error": {"message": f"{path} failed", "type": "InternalServerError", "code": 500}}
        if path == "/v1/models" and body is None:
            return 200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
        if path == "/v1/completions" and body is not None:
            return self._complete(body)
        if path == "/get_world_size" and body is None:
            return 200, {"world_size": 1}
        if path in TRANSFER_ROUTES and body is not None:
            return 200, {"message": "ok"}
        return 404, {"error": {"message": f"no route {'POST' if body is not None else 'GET'} {path}", "code": 404}}

    def _complete(self, request: dict) -> tuple[int, dict]:
        problem = _check(request, self.tokenizer.eos_token_id)
        if problem:
            return 400, {"error": {"message": problem, "type": "BadRequestError", "code": 400}}
        greedy = request["temperature"] == 0
        params = SamplingParams(
            max_new_tokens=request["max_tokens"],
            temperature=request["temperature"] or 1.0,
            top_p=request["top_p"],
            top_k=max(request["top_k"], 0),
            greedy=greedy,
            stop_ids=tuple(request["stop_token_ids"][1:]),
        )
        out = self.engine.generate(request["prompt"], request["n"], params)
        choices = []
        for index in range(len(out)):  # vLLM numbers choices prompt by prompt: index i*n+j
            tokens = out.completion_ids[index]
            finished = out.finished[index]
            logprobs = None
            if request.get("logprobs") is not None:
                pieces = [self.tokenizer.decode([t]) for t in tokens]
                logprobs = {
                    "text_offset": [sum(map(len, pieces[:k])) for k in range(len(pieces))],
                    "token_logprobs": out.logprobs[index],
                    "tokens": pieces,
                    "top_logprobs": [{p: lp} for p, lp in zip(pieces, out.logprobs[index])],
                }
            choices.append(
                {
                    "index": index,
                    "text": self.tokenizer.decode(tokens, skip_special_tokens=True),
                    "logprobs": logprobs,
                    "finish_reason": "stop" if finished else "length",
                    "stop_reason": None,
                    "token_ids": tokens,
                    "prompt_token_ids": out.prompt_ids[index],
                }
            )
        usage = {
            "prompt_tokens": sum(map(len, request["prompt"])),
            "completion_tokens": sum(map(len, out.completion_ids)),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        response = {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": int(time.time()),
            "model": MODEL,
            "choices": choices,
            "usage": usage,
        }
        if self.tamper is not None:
            self.tamper(response)
        return 200, response


def _check(request: dict, eos: int) -> str | None:
    """What vLLM would refuse in `request` (or what this fake cannot serve), else None."""
    unknown = set(request) - FIELDS
    if unknown:
        return f"unknown fields {sorted(unknown)}"
    if request.get("model") != MODEL:
        return f"The model `{request.get('model')}` does not exist."
    prompt = request.get("prompt")
    if not (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(p, list) and p for p in prompt)
        and all(isinstance(t, int) and t >= 0 for p in prompt for t in p)
    ):
        return "this fake serves only batches of token-id prompts (list[list[int]])"
    if not request.get("return_token_ids"):
        return "this fake answers only with return_token_ids=true"
    stops = request.get("stop_token_ids")
    if not (isinstance(stops, list) and stops[:1] == [eos] and all(isinstance(t, int) and t >= 0 for t in stops)):
        return f"reasonrl's engines always stop at EOS: stop_token_ids must be [{eos}, *stop ids], got {stops!r}"
    if request.get("logprobs") not in (None, 0):
        return "this fake returns only the sampled token's log-prob (logprobs=0)"
    numbers = {"n": int, "max_tokens": int, "top_k": int, "temperature": (int, float), "top_p": (int, float)}
    for key, kind in numbers.items():
        if isinstance(request.get(key), bool) or not isinstance(request.get(key), kind):
            return f"{key} must be a number, got {request.get(key)!r}"
    if request["top_k"] == 0 or request["top_k"] < -1:
        return "this fake expects top_k=-1 for no top-k, as in vLLM's docs"
    return None
