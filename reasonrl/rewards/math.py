"""The `accuracy` reward: the completion's last `\\boxed{...}` against the gold answer.

Plain numbers are compared exactly in-process (most GSM8K-style rows); everything else goes to math-verify in
a worker process (see pool.py) so a hung sympy call costs one timeout, never the run. Rows whose `meta` says
`source == "reasoning_gym"` are scored by that task's own checker.
"""

from __future__ import annotations

import logging
import re
import threading
from decimal import Decimal

from reasonrl.rewards.pool import VerifierPool
from reasonrl.rewards.registry import Scores, register_reward

_BOX = re.compile(r"\\boxed\s*\{")
_NUMBER = re.compile(r"[+-]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)")


def find_last_boxed(text: str) -> tuple[int, int] | None:
    """(start, end) of the last `\\boxed{...}`'s content, `end` being its closing brace; None if absent or unclosed."""
    starts = [m.end() for m in _BOX.finditer(text)]
    if not starts:
        return None
    depth, j = 1, starts[-1]
    while j < len(text):
        c = text[j]
        if c == "\\":  # `\{` and `\}` are literal braces (sets), not grouping
            j += 2
            continue
        depth += (c == "{") - (c == "}")
        if depth == 0:
            return starts[-1], j
        j += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (nested braces handled), stripped; None if there is none."""
    span = find_last_boxed(text)
    return None if span is None else text[span[0] : span[1]].strip()


def normalize_gold(answer: str) -> str:
    """The gold answer itself: after `####` (GSM8K, commas dropped), inside `\\boxed{}` (MATH), or as given."""
    if "####" in answer:
        return answer.rsplit("####", 1)[1].strip().replace(",", "")
    boxed = extract_boxed(answer)
    return (boxed if boxed is not None else answer).strip().strip("$").strip()


def numeric_match(pred: str, gold: str) -> bool | None:
    """Exact comparison when both are plain decimal numbers (sign, commas allowed); None when either is not."""
    if not (_NUMBER.fullmatch(pred) and _NUMBER.fullmatch(gold)):
        return None
    return Decimal(pred.replace(",", "")) == Decimal(gold.replace(",", ""))


def verify_answer(gold: str, pred: str) -> bool:
    """math-verify equivalence of two answers; runs in a pool worker, so math-verify's signal timeouts are off."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # Its "timeout disabled" warning is moot here: the pool kills workers that overrun.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    # Wrapped in \boxed{} because a bare "(x+1)^2" extracts to nothing.
    gold_parsed = parse(f"\\boxed{{{gold}}}", configs, parsing_timeout=None)
    if not gold_parsed:
        raise ValueError(f"gold answer {gold!r} does not parse")  # a data problem, not a wrong completion
    pred_parsed = parse(f"\\boxed{{{pred}}}", configs, parsing_timeout=None)
    return bool(pred_parsed) and verify(gold_parsed, pred_parsed, timeout_seconds=None)


def math_verifier(timeout: float = 5.0, num_workers: int = 1) -> VerifierPool:
    """A pool running `verify_answer` with a per-item timeout in seconds."""
    return VerifierPool(verify_answer, timeout, num_workers, warmup=("x+1", "1+x"))


_default_verifier: VerifierPool | None = None
_default_lock = threading.Lock()


def default_verifier() -> VerifierPool:
    """The process-wide pool `accuracy` uses when called without one (started on first use)."""
    global _default_verifier
    with _default_lock:
        if _default_verifier is None:
            _default_verifier = math_verifier()
        return _default_verifier


@register_reward("accuracy")
def accuracy(
    prompts: list[str],
    completions: list[str],
    answer: list[str],
    meta: list[dict] | None = None,
    verifier: VerifierPool | None = None,
    **fields,
) -> Scores:
    """1.0 if the last `\\boxed{}` equals the gold `answer`, else 0.0; NaN where the check failed or timed out."""
    n = len(completions)
    values, status, errors = [0.0] * n, ["ok"] * n, []
    golds = [normalize_gold(str(a)) for a in answer]
    preds = [extract_boxed(c) for c in completions]
    to_verify = []
    for i, pred in enumerate(preds):
        row_meta = meta[i] if meta is not None else None
        if isinstance(row_meta, dict) and row_meta.get("source") == "reasoning_gym":
            values[i], status[i], error = _reasoning_gym(pred, row_meta)
            if error:
                errors.append(f"row {i}: {error}")
        elif pred:
            quick = numeric_match(pred, golds[i])
            if quick is None:
                to_verify.append(i)
            else:
                values[i] = float(quick)
    if to_verify:
        pool = verifier or default_verifier()
        for i, outcome in zip(to_verify, pool.run([(golds[i], preds[i]) for i in to_verify])):
            if outcome.status == "ok":
                values[i] = float(bool(outcome.value))
            else:
                values[i], status[i] = float("nan"), outcome.status
                errors.append(f"row {i}: {outcome.error}")
    return Scores(values, status, errors)


def _reasoning_gym(pred: str | None, meta: dict) -> tuple[float, str, str | None]:
    from reasonrl.sources.reasoning_gym import reasoning_gym_score  # lazy: imports reasoning_gym when called

    if pred is None:
        return 0.0, "ok", None
    try:
        return float(reasoning_gym_score(pred, meta)), "ok", None
    except Exception as e:
        return float("nan"), "failed", f"reasoning_gym_score: {type(e).__name__}: {e}"
