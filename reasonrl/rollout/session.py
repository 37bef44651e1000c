"""Sessions: multi-turn generation over a batch of episodes, token-in/token-out.

A session holds one growing token sequence per row (an episode): `generate` samples the policy's next turn for some
rows and appends it, `append` adds environment tokens (an observation) to some rows without sampling, `fork` copies
rows into a new session for probes that must not touch the originals (AutoSearch's self-answers). Nothing is ever
decoded and re-encoded: a row's sequence is exactly the tokens the model saw. See docs/agents.md.

Engines that keep KV caches open their own session (FastEngine: observations cost one forward over the new tokens);
every other engine gets `StatelessSession`, which re-submits each row's full token list per turn (vLLM's prefix cache
makes that cheap on GPUs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from reasonrl.rollout.base import RolloutEngine, SamplingParams


@dataclass
class TurnSample:
    """One policy turn of one row, as sampled."""

    ids: list[int]
    logprobs: list[float]  # under the sampling policy; empty for greedy turns
    stopped: bool  # ended at EOS or a stop id (kept as the last token); False: cut at max_new_tokens


class Session(Protocol):
    """A batch of rows (episodes), each one token sequence that only grows."""

    def generate(self, rows: Sequence[int], params: SamplingParams) -> list[TurnSample]:
        """Sample one turn for each of `rows` (in that order) and append it to the row."""
        ...

    def append(self, rows: Sequence[int], ids: Sequence[Sequence[int]]) -> None:
        """Append `ids[i]` (environment tokens) to row `rows[i]`."""
        ...

    def fork(self, rows: Sequence[int]) -> Session:
        """A new session whose row i is a copy of this session's row `rows[i]`."""
        ...

    def tokens(self, row: int) -> list[int]:
        """Row `row`'s whole sequence: its prompt and everything generated or appended since."""
        ...

    def close(self) -> None:
        """Free what the session holds (KV caches)."""
        ...


class StatelessSession:
    """A session over any engine: each `generate` re-submits the rows' full token lists, one sample each.

    Correct on every engine (HF recomputes the history; vLLM's prefix cache makes it cheap); FastEngine's own
    session appends observations without recomputing. Recording and replay see one ordinary call per turn."""

    def __init__(self, engine: RolloutEngine, prompt_ids: Sequence[Sequence[int]], n: int):
        self.engine = engine
        self.rows = [list(p) for p in prompt_ids for _ in range(n)]  # row i*n+j: sample j of prompt i

    def generate(self, rows: Sequence[int], params: SamplingParams) -> list[TurnSample]:
        if not rows:
            return []
        out = self.engine.generate([self.rows[r] for r in rows], 1, params)
        samples = []
        for r, ids, logprobs, stopped in zip(rows, out.completion_ids, out.logprobs, out.finished):
            self.rows[r] += ids
            samples.append(TurnSample(list(ids), list(logprobs), bool(stopped)))
        return samples

    def append(self, rows: Sequence[int], ids: Sequence[Sequence[int]]) -> None:
        for r, new in zip(rows, ids, strict=True):
            self.rows[r] += list(new)

    def fork(self, rows: Sequence[int]) -> StatelessSession:
        child = StatelessSession(self.engine, [], 0)
        child.rows = [list(self.rows[r]) for r in rows]
        return child

    def tokens(self, row: int) -> list[int]:
        return list(self.rows[row])

    def close(self) -> None:
        self.rows = []


def open_session(engine: RolloutEngine, prompt_ids: Sequence[Sequence[int]], n: int) -> Session:
    """`engine.open(prompt_ids, n)` when the engine keeps KV caches across turns (FastEngine), else a
    StatelessSession. Row i*n+j starts as prompt i."""
    opener = getattr(engine, "open", None)
    return opener(prompt_ids, n) if opener is not None else StatelessSession(engine, prompt_ids, n)
