"""Embedded verifiable worlds: procedurally generated tasks with gold answers and demonstrations."""

from reasonrl.worlds.arith import ArithWorld
from reasonrl.worlds.shortcut import ShortcutWorld

WORLDS = {"arith": ArithWorld, "shortcut": ShortcutWorld}


def get_world(name: str, **kwargs) -> ArithWorld:
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; known worlds: {sorted(WORLDS)}")
    return WORLDS[name](**kwargs)
