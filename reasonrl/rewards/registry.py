"""The reward registry: names (`accuracy`, `format`, ...) and user references (`pkg.mod:fn`, `file.py:fn`).

A reward function is a plain callable `fn(prompts, completions, **fields) -> list[float]`; `fields` holds
per-row lists (`answer`, `level`, `meta`, `completion_ids`, `finished`, ...) and every function receives all of
them, so it must accept `**kwargs` for the ones it does not use.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

RewardFunc = Callable[..., list[float]]

REWARD_FUNCS: dict[str, RewardFunc] = {}


class Scores(list):
    """A reward list that also says why its NaN rows are NaN: `status[i]` is 'ok', 'failed' or 'timeout'.

    Built-in rewards return it so the manager can count timeouts apart from failures; it is still a
    plain `list[float]` to anyone else.
    """

    def __init__(self, values: list[float], status: list[str], errors: list[str]):
        super().__init__(values)
        self.status = status
        self.errors = errors


def register_reward(name: str) -> Callable[[RewardFunc], RewardFunc]:
    """Decorator: make `fn` available to configs as `name`."""

    def deco(fn: RewardFunc) -> RewardFunc:
        if name in REWARD_FUNCS and REWARD_FUNCS[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered ({REWARD_FUNCS[name]!r})")
        REWARD_FUNCS[name] = fn
        return fn

    return deco


def get_reward(name_or_path: str) -> RewardFunc:
    """A registered reward, or a user function given as 'package.module:func' or 'path/to/file.py:func'."""
    if name_or_path in REWARD_FUNCS:
        return REWARD_FUNCS[name_or_path]
    if ":" not in name_or_path:
        close = difflib.get_close_matches(name_or_path, list(REWARD_FUNCS), n=3)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown reward {name_or_path!r}.{hint} Known rewards: {sorted(REWARD_FUNCS)}; "
            "user functions are given as 'package.module:func' or 'path/to/file.py:func'."
        )
    where, _, attr = name_or_path.rpartition(":")
    module = _load_file(where) if where.endswith(".py") else _import(where, name_or_path)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward {name_or_path!r}: {where!r} has no function {attr!r}")
    return fn


def _import(module: str, ref: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"reward {ref!r}: cannot import module {module!r} ({e})") from e


def _load_file(path: str):
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"reward file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"reasonrl_user_reward_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
