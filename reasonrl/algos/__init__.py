"""Algorithms, one file each, registered by name: `algo.name` in the config picks one."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from reasonrl.config import ALGO_CONFIGS

if TYPE_CHECKING:
    from reasonrl.algos.base import Algorithm
    from reasonrl.config import Config

ALGORITHMS: dict[str, Callable[[Config], Algorithm]] = {}


def register_algorithm(*names: str):
    """Class decorator: make the algorithm constructible by `make_algorithm` under each of `names`."""

    def wrap(cls):
        for name in names:
            ALGORITHMS[name] = cls
        return cls

    return wrap


def make_algorithm(config: Config) -> Algorithm:
    name = config.algo.name
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; known: {sorted(ALGORITHMS)}")
    options = ALGO_CONFIGS.get(name)
    if options is not None and not isinstance(config.algo, options):  # e.g. the default, loaded before registration
        raise ValueError(
            f"config.algo is a {type(config.algo).__name__}, not {name}'s {options.__name__}: the config "
            f"was loaded before reasonrl.algos registered it; import reasonrl.algos before load_config"
        )
    return ALGORITHMS[name](config)


from reasonrl.algos import (  # noqa: E402,F401  (registration)
    autothink,
    dpo,
    dpo_vp,
    grpo,
    opd,
    pretrain,
    sft,
    srft,
)
