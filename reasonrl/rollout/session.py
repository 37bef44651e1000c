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

from reasonrl.rollout.base import SamplingParams


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
