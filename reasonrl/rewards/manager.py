"""RewardManager: runs the configured reward functions, weights them, and never hands back made-up zeros.

A row whose check failed or timed out is NaN, counted, and explained in `errors`; if every row is NaN the
manager raises `RewardError`, because training on a batch of silent zeros teaches the model nothing and hides
the bug (the failure mode of math-verify timeouts off the main thread in other trainers).
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from reasonrl.config import RewardConfig, RewardSpec
from reasonrl.rewards.math import math_verifier
from reasonrl.rewards.pool import VerifierPool
from reasonrl.rewards.registry import RewardFunc, get_reward

logger = logging.getLogger("reasonrl")

MAX_ERRORS = 5  # messages kept in RewardResult.errors


class RewardError(RuntimeError):
    """Every row of a batch got a NaN reward: nothing trustworthy to train on. `result` has the details."""

    def __init__(self, message: str, result: RewardResult):
        super().__init__(message)
        self.result = result


@dataclass
class RewardResult:
    total: list[float]  # weighted sum per row; NaN if any component is NaN for that row
    components: dict[str, list[float]]
    failed: int = 0  # component rows that raised or returned something unusable
    timeout: int = 0  # component rows that did not finish in time
    errors: list[str] = field(default_factory=list)  # the first few messages, "name: message"


@dataclass
class _Func:
    name: str
    fn: RewardFunc
    weight: float
    takes_verifier: bool


class RewardManager:
    """Scores completions with weighted reward functions.

    Specs are `RewardSpec`s or `(name_or_callable, weight)` pairs; a name is a registered reward or a
    'module:func' / 'file.py:func' reference. Every function is called as `fn(prompts, completions, **fields)`
    with all fields, so it must accept `**kwargs`. Functions with a `verifier` parameter (`accuracy`) get
    the manager's math-verify process pool and enforce per-item timeouts themselves; any other function runs
    in a daemon thread and its rows become NaN (`timeout`) if it has not returned within `timeout` seconds.
    """

    def __init__(
        self,
        specs: Sequence[RewardSpec | tuple[str | Callable[..., Any], float]],
        timeout: float = 5.0,
        num_workers: int = 1,
        verifier: VerifierPool | None = None,
    ):
        if not specs:
            raise ValueError("RewardManager needs at least one reward function")
        self.timeout = timeout
        self.funcs: list[_Func] = []
        for spec in specs:
            ref, weight = (spec.name, spec.weight) if isinstance(spec, RewardSpec) else spec
            fn = get_reward(ref) if isinstance(ref, str) else ref
            name = ref if isinstance(ref, str) else getattr(fn, "__name__", type(fn).__name__)
            if any(f.name == name for f in self.funcs):
                name = f"{name}_{len(self.funcs)}"
            params = _parameters(fn)
            if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                raise ValueError(
                    f"reward function {name!r} must accept **kwargs: every function receives all fields "
                    "(answer, meta, completion_ids, finished, ...)"
                )
            self.funcs.append(_Func(name, fn, float(weight), params is not None and "verifier" in params))
        self._owns_verifier = verifier is None
        self.verifier = verifier or math_verifier(timeout, num_workers)  # workers start on first use

    @classmethod
    def from_config(cls, cfg: RewardConfig) -> RewardManager:
        return cls(cfg.funcs, timeout=cfg.timeout, num_workers=cfg.num_workers)

    def score(self, prompts: list[str], completions: list[str], fields: dict[str, Any]) -> RewardResult:
        """Run every function on the batch. List fields are per row; other values are passed through as-is."""
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions")
        for key, value in fields.items():
            if isinstance(value, list) and len(value) != n:
                raise ValueError(f"field {key!r} has {len(value)} rows for {n} completions")
        result = RewardResult([0.0] * n, {})
        errors = []
        for f in self.funcs:
            values, status, messages = self._call(f, prompts, completions, fields, n)
            result.components[f.name] = values
            result.total = [t + f.weight * v for t, v in zip(result.total, values)]
            result.failed += status.count("failed")
            result.timeout += status.count("timeout")
            errors += [f"{f.name}: {m}" for m in messages]
        result.errors = errors[:MAX_ERRORS]
        if n and all(math.isnan(t) for t in result.total):
            names = ", ".join(f"{f.name} (weight {f.weight:g})" for f in self.funcs)
            raise RewardError(
                f"all {n} rows have a NaN reward ({result.failed} failed, {result.timeout} timed out) "
                f"from reward functions {names}; first errors: {result.errors}",
                result,
            )
        if result.failed or result.timeout:
            logger.warning(
                "rewards: %d failed and %d timed-out component rows are NaN; first error: %s",
                result.failed,
                result.timeout,
                result.errors[0] if result.errors else "?",
            )
        return result

    def close(self) -> None:
        """Stop the verifier workers this manager started (not a pool that was passed in)."""
        if self._owns_verifier:
            self.verifier.close()

    def __enter__(self) -> RewardManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self, f: _Func, prompts: list[str], completions: list[str], fields: dict[str, Any], n: int
    ) -> tuple[list[float], list[str], list[str]]:
        """(values, per-row status, messages) for one function; never raises for the function's faults."""
        try:
            if f.takes_verifier:
                out = f.fn(prompts, completions, verifier=self.verifier, **fields)
            else:
                out = self._in_thread(f, prompts, completions, fields)
        except TimeoutError as e:
            return [math.nan] * n, ["timeout"] * n, [str(e)]
        except Exception as e:
            return [math.nan] * n, ["failed"] * n, [f"raised {type(e).__name__}: {e}"]
        return _check(out, n)

    def _in_thread(self, f: _Func, prompts: list[str], completions: list[str], fields: dict[str, Any]) -> Any:
        """Call in a daemon thread: a hung call cannot be killed, but it no longer blocks training."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["out"] = f.fn(prompts, completions, **fields)
            except BaseException as e:
                box["error"] = e

        thread = threading.Thread(target=target, name=f"reward-{f.name}", daemon=True)
        thread.start()
        thread.join(self.timeout)
        if thread.is_alive():
            logger.warning(
                "reward %r did not return within %gs; its rows are NaN (the call is left running in a daemon thread)",
                f.name,
                self.timeout,
            )
            raise TimeoutError(f"no result within {self.timeout:g}s")
        if "error" in box:
            raise box["error"]
        return box["out"]


def _parameters(fn: Callable[..., Any]) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # some C callables have no signature: trust them
        return None


def _check(out: Any, n: int) -> tuple[list[float], list[str], list[str]]:
    """Validate a function's return value row by row; a `Scores` return keeps its own timeout/failed status."""
    if isinstance(out, (str, bytes, dict)) or not hasattr(out, "__len__"):
        return [math.nan] * n, ["failed"] * n, [f"returned {type(out).__name__}, not a list of {n} floats"]
    if len(out) != n:
        return [math.nan] * n, ["failed"] * n, [f"returned {len(out)} values for {n} rows"]
    given = getattr(out, "status", None)
    values, status, messages = [], [], list(getattr(out, "errors", []))
    for i, v in enumerate(out):
        try:
            x = math.nan if isinstance(v, (str, bytes)) else float(v)
        except (TypeError, ValueError):
            x = math.nan
        if given is not None and given[i] != "ok":
            values.append(math.nan)
            status.append(given[i])
        elif math.isfinite(x):
            values.append(x)
            status.append("ok")
        else:
            values.append(math.nan)
            status.append("failed")
            messages.append(f"row {i}: returned {v!r}, not a finite number")
    return values, status, messages
