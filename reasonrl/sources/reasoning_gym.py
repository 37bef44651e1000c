"""reasoning-gym generators as a data source (`reasoning_gym:NAME`): entries become Examples whose meta lets
`reasoning_gym_score` regenerate the original entry and score an answer with the generator's own scorer."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from typing import Any

from reasonrl.data import DataError, Example

# Train and eval datasets are seeded this far apart: generators seed entry i with `seed + i`, so nearby
# seeds would share entries.
RG_EVAL_SEED_OFFSET = 1_000_000_000
RG_TRAIN_SIZE = 10_000  # entries a training stream cycles through, generated as they are read
RG_PROMPT_SUFFIX = " Put the final answer in \\boxed{}."


def load_reasoning_gym(name: str, size: int, seed: int) -> list[Example]:
    """`size` entries of a reasoning-gym generator, with what `reasoning_gym_score` needs to regenerate each."""
    return [_rg_example(name, size, seed, i) for i in range(size)]


def train_stream_item(name: str, seed: int) -> Callable[[int], Example]:
    """Entry i of a training stream's `RG_TRAIN_SIZE`-entry dataset; an unknown generator fails here, not at the
    first read."""
    _rg_dataset(name, RG_TRAIN_SIZE, seed)
    return functools.partial(_rg_example, name, RG_TRAIN_SIZE, seed)


def reasoning_gym_score(answer_text: str, meta: dict[str, Any]) -> float:
    """Score an extracted answer with the generator's own scorer, against the regenerated original entry."""
    try:
        name, size, seed, index = meta["rg_name"], meta["rg_size"], meta["rg_seed"], meta["rg_index"]
    except KeyError as e:
        raise DataError(f"not a reasoning_gym example: meta has no {e.args[0]!r}") from e
    dataset = _rg_dataset(name, size, seed)
    return float(dataset.score_answer(answer_text, _rg_entry(name, size, seed, index)))


@functools.lru_cache(maxsize=64)
def _rg_dataset(name: str, size: int, seed: int) -> Any:
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        close = difflib.get_close_matches(name, list(DATASETS), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see reasoning_gym.factory.DATASETS"
        raise DataError(f"unknown reasoning_gym generator {name!r}{hint}")
    try:
        return reasoning_gym.create_dataset(name, size=size, seed=seed)
    except (AssertionError, ValueError, TypeError) as e:  # generators validate their configs with asserts
        raise DataError(f"reasoning_gym:{name} (size {size}, seed {seed}): {e}") from e


@functools.lru_cache(maxsize=65_536)  # scoring regenerates entries; a step scores each one many times
def _rg_entry(name: str, size: int, seed: int, index: int) -> dict[str, Any]:
    return _rg_dataset(name, size, seed)[index]


def _rg_example(name: str, size: int, seed: int, index: int) -> Example:
    entry = _rg_entry(name, size, seed, index)
    meta = {"source": "reasoning_gym", "rg_name": name, "rg_seed": seed, "rg_size": size, "rg_index": index}
    meta["rg_entry"] = _jsonable(entry)
    answer = entry.get("answer")
    return Example(prompt=entry["question"] + RG_PROMPT_SUFFIX, answer="" if answer is None else str(answer), meta=meta)


_DROP = object()


def _jsonable(x: Any) -> Any:
    """A JSON-serialisable copy: tuples become lists, numpy values plain ones, anything else is dropped."""
    if x is None or isinstance(x, (str, bool, int, float)):
        return x
    if hasattr(x, "tolist"):  # numpy scalars and arrays
        return _jsonable(x.tolist())
    if isinstance(x, dict):
        return {str(k): v for k, v in ((k, _jsonable(v)) for k, v in x.items()) if v is not _DROP}
    if isinstance(x, (list, tuple)):
        return [v for v in map(_jsonable, x) if v is not _DROP]
    return _DROP
