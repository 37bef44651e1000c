"""One loopback JSON server for tests of clients that must survive a bad endpoint (retrievers, reflectors, LLM
backends): it answers POSTs with `answer(body)`, or as `mode` says: "error" (HTTP 500), "hang" (no answer until the
server closes) or "garbage" (200 with a body that is not JSON)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubHTTP:
    def __init__(self, answer: Callable[[dict], dict]):
        self.mode, self.answer, self.requests = "ok", answer, []
        self.release = threading.Event()  # set on close, so a hung handler thread ends
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((self.path, self.headers.get("Authorization"), body))
                if stub.mode == "hang":
                    stub.release.wait(10)
                    return
                if stub.mode == "error":
                    self.send_error(500, "internal error")
                    return
                raw = b"<html>not json" if stub.mode == "garbage" else json.dumps(stub.answer(body)).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except BrokenPipeError:  # the client gave up first
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.root = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def chat_completion(content: str, model: str = "stub") -> dict:
    """An OpenAI chat.completion body whose one choice says `content`."""
    return {
        "id": "stub",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
