"""A process pool with a hard per-item timeout, for checks that can hang (sympy simplification).

math-verify's own timeouts use `signal.alarm`, which works only in a process's main thread: called from any
other thread it raises, and trainers that catch the error score the row 0, so rewards silently vanish (see the
math-verify timeout issues of huggingface/trl and volcengine/verl). Here a check runs in a spawned worker
process; a worker that overruns its item's deadline is killed and replaced, and the item is reported as a
timeout. Spawned (not forked) workers are safe to start from any thread and never inherit CUDA state. A spawned
child normally re-imports the parent's `__main__`, which re-runs a user's whole training script when it has no
`if __name__ == "__main__":` guard; workers whose function lives in a library module are started with
`__main__` hidden, so user scripts need no guard.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, NamedTuple


class Outcome(NamedTuple):
    status: str  # ok | failed | timeout
    value: Any = None
    error: str | None = None


def _worker_main(conn: Connection, fn: Callable[..., Any], warmup: tuple | None) -> None:
    """Worker loop: answer each `(args)` message with an Outcome until the parent closes the pipe."""
    if warmup is not None:
        # Pay for imports and regex compilation before the first timed item. A broken fn is reported per item, with its
        # message, so its failure here is dropped.
        with contextlib.suppress(Exception):
            fn(*warmup)
    conn.send("ready")
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(Outcome("ok", fn(*args)))
        except Exception as e:
            conn.send(Outcome("failed", None, f"{type(e).__name__}: {e}"))


@contextmanager
def _main_hidden(hide: bool):
    """While a spawn child is started, make `__main__` look like an interactive session: the child then skips
    re-importing the parent's script (multiprocessing reads `__spec__` and `__file__` at `start()`)."""
    main = sys.modules.get("__main__")
    if not hide or main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if k in main.__dict__}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.update(saved)


@dataclass
class _Worker:
    proc: mp.process.BaseProcess
    conn: Connection


def _kill(workers: list[_Worker]) -> None:
    for w in workers:
        w.proc.kill()
        w.proc.join(timeout=5)
        w.conn.close()
    workers.clear()


class VerifierPool:
    """Runs `fn(*args)` for many `args` in `num_workers` spawned processes, each item limited to `timeout` s.

    `fn` must be a module-level function (it is pickled by reference). Workers start on first use, persist
    across calls, and are killed by `close()`, on garbage collection, or at interpreter exit.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        timeout: float = 5.0,
        num_workers: int = 1,
        warmup: tuple | None = None,
        start_timeout: float = 120.0,
    ):
        if timeout <= 0 or num_workers < 1:
            raise ValueError(f"need timeout > 0 and num_workers >= 1, got {timeout} and {num_workers}")
        self.fn, self.timeout, self.num_workers = fn, timeout, num_workers
        self.warmup, self.start_timeout = warmup, start_timeout
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()  # one batch at a time: items are matched to workers by pipe
        self._finalizer = weakref.finalize(self, _kill, self._workers)

    def run(self, items: list[tuple]) -> list[Outcome]:
        """One Outcome per item, in order. Thread-safe; concurrent calls are served one after another."""
        with self._lock:
            return self._run(items)

    def close(self) -> None:
        """Kill the workers; the next `run` starts fresh ones."""
        with self._lock:
            _kill(self._workers)

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, items: list[tuple]) -> list[Outcome]:
        out: list[Outcome | None] = [None] * len(items)
        if not items:
            return []
        if not self._workers:
            self._workers.extend(self._start(self.num_workers))
        todo = deque(enumerate(items))
        idle = list(self._workers)
        busy: dict[Connection, tuple[_Worker, int, float]] = {}
        while todo or busy:
            while todo and idle:
                w, (i, args) = idle.pop(), todo.popleft()
                try:
                    w.conn.send(args)
                except (BrokenPipeError, OSError):  # it died while idle: retry the item on a fresh worker
                    todo.appendleft((i, args))
                    idle.append(self._replace(w))
                    continue
                busy[w.conn] = (w, i, time.monotonic() + self.timeout)
            next_deadline = min(deadline for _, _, deadline in busy.values())
            for conn in wait(list(busy), timeout=max(0.0, next_deadline - time.monotonic())):
                w, i, _ = busy.pop(conn)
                try:
                    out[i] = conn.recv()
                    idle.append(w)
                except (EOFError, OSError):  # the worker died (segfault, OOM kill)
                    idle.append(self._replace(w))
                    out[i] = Outcome("failed", None, f"verifier worker died (exit code {w.proc.exitcode})")
            now = time.monotonic()
            for conn, (w, i, deadline) in list(busy.items()):
                if deadline <= now:
                    del busy[conn]
                    out[i] = Outcome("timeout", None, f"no answer within {self.timeout:g}s; worker killed")
                    idle.append(self._replace(w))
        return out

    def _replace(self, worker: _Worker) -> _Worker:
        self._workers.remove(worker)
        _kill([worker])
        (new,) = self._start(1)
        self._workers.append(new)
        return new

    def _start(self, n: int) -> list[_Worker]:
        ctx = mp.get_context("spawn")
        workers = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main, args=(child, self.fn, self.warmup), name="reasonrl-verifier", daemon=True
            )
            with _main_hidden(getattr(self.fn, "__module__", "__main__") != "__main__"):
                proc.start()
            child.close()
            workers.append(_Worker(proc, parent))
        deadline = time.monotonic() + self.start_timeout
        for w in workers:
            try:
                if w.conn.poll(max(0.0, deadline - time.monotonic())) and w.conn.recv() == "ready":
                    continue
                problem = f"did not start within {self.start_timeout:g}s"
            except (EOFError, OSError):
                problem = "exited while starting"
            _kill(workers)  # joins them, so the exit code is known
            name = getattr(self.fn, "__name__", repr(self.fn))
            raise RuntimeError(f"verifier worker for {name} {problem} (exit code {w.proc.exitcode})")
        return workers
