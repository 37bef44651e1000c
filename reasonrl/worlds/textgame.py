"""The `textgame` world: procedurally generated households in ALFWorld's grammar (a mini-ALFWorld for D2Skill).

One room of 8-10 receptacles (cabinet 1-2, drawer 1-2, fridge 1, microwave 1, sinkbasin 1, countertop 1, shelf 1,
desk 1 with desklamp 1; cabinets, drawers, fridge and microwave open and close) and 6-10 objects of 11 types. Six task
types, ALFWorld's: put, clean, heat, cool, look (at an object under the desklamp) and two (put two); `level` is the
task type (1-6, in that order). Rules and phrasing: envs/textgame.py.

The hidden **house style**: per world seed, every object type has a preferred receptacle type (apples in the fridge,
books on the shelf ...) where `style` (0.7) of its objects are put; the rest go to the type's other plausible
receptacles. Prompts never show it, so an agent (or a skill bank) can only learn it from episodes.

Households are split by a hash of the whole household (eval 20%, train 80%), so no household is in both splits.
Two planners make demonstrations: `oracle_plan` knows where every object is; `explore_plan` does not and sweeps the
receptacles in their listed order from a seeded random start (opening closed ones, remembering what it saw), so its
episodes are longer.
"""

from __future__ import annotations

import json
import random
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from reasonrl.config import TextgameConfig
from reasonrl.data import Example
from reasonrl.envs.textgame import APPLIANCE, LAMP, OPENABLE, TextGameEnv, kind, parse_action, task_text
from reasonrl.rollout.episodes import Untrained
from reasonrl.skills.prompt import SkilledEnv

TASK_TYPES = ("put", "clean", "heat", "cool", "look", "two")  # level k = TASK_TYPES[k - 1]
FIXED_RECEPTACLES = ("countertop 1", "desk 1", "fridge 1", "microwave 1", "shelf 1", "sinkbasin 1")
# object type -> (what can be done with it, the receptacle types it plausibly lies in)
OBJECTS = {
    "apple": ({"clean", "heat", "cool"}, ("fridge", "countertop", "cabinet", "shelf")),
    "tomato": ({"clean", "heat", "cool"}, ("fridge", "countertop", "cabinet", "shelf")),
    "potato": ({"clean", "heat", "cool"}, ("fridge", "countertop", "cabinet", "drawer")),
    "egg": ({"heat", "cool"}, ("fridge", "countertop", "cabinet", "shelf")),
    "mug": ({"clean", "heat", "cool", "look"}, ("cabinet", "countertop", "shelf", "desk")),
    "plate": ({"clean", "heat", "cool"}, ("cabinet", "countertop", "shelf", "drawer")),
    "knife": ({"clean"}, ("drawer", "countertop", "cabinet", "desk")),
    "spoon": ({"clean"}, ("drawer", "countertop", "cabinet", "shelf")),
    "book": ({"look"}, ("shelf", "desk", "drawer", "countertop")),
    "cellphone": ({"look"}, ("desk", "drawer", "shelf", "countertop")),
    "pen": ({"look"}, ("desk", "drawer", "shelf", "cabinet")),
}
TARGETS = ("countertop", "shelf", "desk", "cabinet", "drawer", "fridge")  # where a task may ask to put things
PER_RECEPTACLE = 3  # objects at most per receptacle (keeps observations inside the tiny models' context)
EVAL_SHARE = 5  # a household whose hash is 0 mod 5 is an eval household


def house_style(seed: int) -> dict[str, str]:
    """The hidden per-seed style: object type -> its preferred receptacle type."""
    rng = random.Random(f"textgame-style/{seed}")
    return {obj: rng.choice(places) for obj, (_, places) in OBJECTS.items()}


def style_skill(object_type: str, style: dict[str, str]) -> dict[str, str]:
    """The correct step skill the house style implies for finding `object_type` (as D2Skill's bank would learn it)."""
    place = style[object_type]
    return {
        "skill_id": f"style_{object_type}",
        "title": f"Where to find a {object_type}",
        "principle": f"When looking for a {object_type}, check the {place} first.",
        "receptacle": place,
    }


def household_split(house: dict[str, Any]) -> str:
    """eval or train, fixed by a hash of the whole household (layout, objects and task)."""
    return "eval" if zlib.crc32(json.dumps(house, sort_keys=True).encode()) % EVAL_SHARE == 0 else "train"


def make_household(task_type: str, style: dict[str, str], strength: float, rng: random.Random) -> dict[str, Any]:
    """A household and its task; objects are placed by the house style. Redrawn until the task is not already
    solved at the start (no object of the task's type lies in a receptacle of the target type)."""
    while True:
        receptacles = sorted(
            [f"cabinet {i}" for i in range(1, rng.randint(1, 2) + 1)]
            + [f"drawer {i}" for i in range(1, rng.randint(1, 2) + 1)]
            + list(FIXED_RECEPTACLES)
        )
        contents: dict[str, list[str]] = {r: [] for r in receptacles}
        numbers: dict[str, int] = defaultdict(int)
        wanted = rng.choice([o for o, (can, _) in OBJECTS.items() if task_type in ("put", "two") or task_type in can])
        types = [wanted] * (2 if task_type == "two" else 1)
        types += [rng.choice(list(OBJECTS)) for _ in range(rng.randint(6, 10) - len(types))]
        for obj_type in types:
            places = OBJECTS[obj_type][1]
            others = [p for p in places if p != style[obj_type]]
            rtype = style[obj_type] if rng.random() < strength else rng.choice(others)
            free = [r for r in receptacles if kind(r) == rtype and len(contents[r]) < PER_RECEPTACLE]
            free = free or [r for r in receptacles if kind(r) in places and len(contents[r]) < PER_RECEPTACLE]
            numbers[obj_type] += 1
            contents[rng.choice(free)].append(f"{obj_type} {numbers[obj_type]}")
        holding = {kind(r) for r, objs in contents.items() if any(kind(o) == wanted for o in objs)}
        targets = [t for t in TARGETS if t not in holding and not (task_type == "cool" and t == "fridge")]
        if task_type != "look" and not targets:
            continue
        task = {"type": task_type, "object": wanted}
        if task_type != "look":
            task["target"] = rng.choice(targets)
        locs = rng.sample(range(1, len(receptacles) + 1), len(receptacles))
        return {
            "receptacles": receptacles,
            "contents": contents,
            "locs": dict(zip(receptacles, locs)),
            "lamp_at": "desk 1",
            "task": task,
        }


class _Planner:
    """Plays a household's task on a private env and records the actions. With `order` None it is the oracle (it
    reads where objects are); else it searches receptacles in that order and knows only what it has seen."""

    def __init__(self, house: dict[str, Any], order: Sequence[str] | None):
        self.env = TextGameEnv(house, max_steps=10**9)
        self.house, self.order, self.actions = house, order, []
        self.seen: dict[str, list[str]] = {}

    def do(self, command: str) -> None:
        assert command in self.env.admissible(), f"planner: {command!r} is not admissible"
        self.env.step(command)
        self.actions.append(command)
        if self.env.at is not None and self.env.accessible(self.env.at):
            self.seen[self.env.at] = list(self.env.contents[self.env.at])  # what the observation showed

    def go(self, receptacle: str, open_it: bool = True) -> None:
        if self.env.at != receptacle:
            self.do(f"go to {receptacle}")
        if open_it and kind(receptacle) in OPENABLE and receptacle not in self.env.opened:
            self.do(f"open {receptacle}")

    def locate(self, wanted: str) -> tuple[str, str]:
        """A receptacle holding an object of type `wanted` that is not placed yet, and that object."""
        target = self.house["task"].get("target")
        known = self.env.contents if self.order is None else self.seen
        for r in self.house["receptacles"]:
            for obj in known.get(r, []):
                if kind(obj) == wanted and kind(r) != target:
                    return r, obj
        for r in self.order or ():
            if r not in self.seen:
                self.go(r)
                if r in self.seen:  # it was accessible: the observation listed its contents
                    found = [o for o in self.seen[r] if kind(o) == wanted and kind(r) != target]
                    if found:
                        return r, found[0]
        raise ValueError(f"planner: no {wanted} left in household {self.house}")

    def run(self) -> list[str]:
        task = self.house["task"]
        for _ in range(2 if task["type"] == "two" else 1):
            where, obj = self.locate(task["object"])
            self.go(where)
            self.do(f"take {obj} from {where}")
            if task["type"] in APPLIANCE:
                appliance = next(r for r in self.house["receptacles"] if kind(r) == APPLIANCE[task["type"]])
                self.go(appliance, open_it=False)
                self.do(f"{task['type']} {obj} with {appliance}")
            if task["type"] == "look":
                self.go(self.house["lamp_at"])
                self.do(f"use {LAMP}")
                break
            target = next(r for r in self.house["receptacles"] if kind(r) == task["target"])
            self.go(target)
            self.do(f"put {obj} in/on {target}")
        assert self.env.won, f"planner did not solve {task}"
        return self.actions


def oracle_plan(house: dict[str, Any]) -> list[str]:
    """The shortest-minded expert: it knows every object's receptacle."""
    return _Planner(house, None).run()


def explore_plan(house: dict[str, Any], rng: random.Random, first: Sequence[str] = ()) -> list[str]:
    """An expert without location knowledge: it sweeps the receptacles in the order the room lists them, from a
    random start and wrapping round (types in `first` before the rest, which is how a known house style would be
    used), opening closed ones, taking the first object of the wanted type. A sweep, not a random order: with a
    window of the last two steps, "the receptacle after the one just searched" is something a policy can see, while
    which of a random order's receptacles were already searched is not (a student of random orders loops)."""
    listed = list(house["receptacles"])
    start = rng.randrange(len(listed))
    order = listed[start:] + listed[:start]
    order.sort(key=lambda r: first.index(kind(r)) if kind(r) in first else len(first))
    return _Planner(house, order).run()


def with_mistakes(
    house: dict[str, Any], plan: Sequence[str], rate: float, max_steps: int, rng: random.Random
) -> list[str]:
    """`plan` with, before each step after the first and with chance `rate`, the previous command repeated as an
    `Untrained` turn when it is no longer admissible (so the env answers "Nothing happens." and nothing changes: the
    plan still wins), as long as the episode stays within `max_steps`."""
    env = TextGameEnv(house, max_steps=10**9)
    out: list[str] = []
    for k, command in enumerate(plan):
        room = len(out) + 1 + len(plan) - k <= max_steps
        if k and room and rng.random() < rate and parse_action(plan[k - 1]) not in env.admissible():
            out.append(Untrained(plan[k - 1]))
        env.step(command)
        out.append(command)
    return out


class TextGameWorld:
    """Households by task type (levels 1-6 = put, clean, heat, cool, look, two); `make_env` marks it multi-turn."""

    name = "textgame"
    levels = tuple(range(1, len(TASK_TYPES) + 1))
    config_sections = ("textgame",)  # DataConfig sections passed to the constructor (data.py)

    def __init__(
        self, levels: Sequence[int] = (1, 2, 3, 4, 5, 6), seed: int = 0, textgame: TextgameConfig | None = None
    ):
        if not levels or any(lv not in self.levels for lv in levels):
            raise ValueError(
                f"textgame levels (task types {dict(zip(self.levels, TASK_TYPES))}) must be a non-empty subset of "
                f"{list(self.levels)}, got {list(levels)}"
            )
        self.train_levels, self.seed = tuple(levels), seed
        self.cfg = textgame or TextgameConfig()
        self.style = house_style(seed)

    def household(self, split: str, key: str, level: int) -> Example:
        """The first household of task type `level` drawn from the stream `key` that belongs to `split`."""
        if split not in ("train", "eval"):
            raise ValueError(f"textgame splits are train and eval, got {split!r}")
        rng = random.Random(f"textgame/{self.seed}/{key}")
        task_type = TASK_TYPES[level - 1]
        while True:
            house = make_household(task_type, self.style, self.cfg.style, rng)
            if household_split(house) == split:
                break
        meta = {"world": self.name, "split": split, "uid": f"{split}/{key}", "house": house}
        if split == "train" and random.Random(f"textgame-skill/{self.seed}/{key}").random() < self.cfg.skill_demos:
            meta["skills"] = {"task": [], "step": [style_skill(house["task"]["object"], self.style)]}
        example = Example(prompt="", answer=task_text(house["task"]), level=level, meta=meta)
        example.prompt = self.make_env(example).reset(example)
        return example

    def with_style_skill(self, example: Example) -> Example:
        """`example` with the house style's correct step skill for its object in every prompt (the with-skill arm of
        an eval, or a skill-following demonstration)."""
        meta = dict(example.meta)
        meta["skills"] = {"task": [], "step": [style_skill(meta["house"]["task"]["object"], self.style)]}
        out = replace(example, meta=meta)
        out.prompt = self.make_env(out).reset(out)
        return out

    def example(self, index: int, split: str = "train") -> Example:
        level = random.Random(f"textgame/{self.seed}/{split}/level/{index}").choice(self.train_levels)
        return self.household(split, f"{split}/{index}", level)

    def eval_set(self, levels: Sequence[int] | None = None, n_per_level: int = 50) -> list[Example]:
        """`n_per_level` eval households per task type."""
        out = []
        for level in levels or self.train_levels:
            if level not in self.levels:
                raise ValueError(f"textgame has levels (task types) {list(self.levels)}, got {level}")
            out += [self.household("eval", f"eval/{level}/{i}", level) for i in range(n_per_level)]
        return out

    def make_env(self, example: Example) -> TextGameEnv | SkilledEnv:
        """The household's env; with the skills block on (data.textgame.skills_block) or skills in
        `meta["skills"]` ({"task": [...], "step": [...]}), wrapped in SkilledEnv as D2Skill's rollouts render it."""
        env = TextGameEnv(example.meta["house"], self.cfg.max_steps, self.cfg.invalid_penalty)
        skills = example.meta.get("skills")
        if skills is None and not self.cfg.skills_block:
            return env
        step = list((skills or {}).get("step", []))
        return SkilledEnv(env, list((skills or {}).get("task", [])), lambda task, observation: step)

    def oracle_commands(self, example: Example) -> list[str]:
        """The oracle planner's commands for the example's household: what D2Skill's template reflector contrasts a
        failed episode with when its group has no success (algo.reflector.oracle=true)."""
        return oracle_plan(example.meta["house"])

    def demonstration(self, example: Example) -> list[str]:
        """The policy turns of the oracle's or the explorer's plan (data.textgame.demo). An explorer's search order
        that would not finish within max_steps is redrawn (a demonstration must win); after 20 orders, the oracle's.
        The explorer follows the step skills in the prompt that name a receptacle type (style_skill): those first.
        With data.textgame.demo_mistakes, untrained repeated commands are mixed in (with_mistakes)."""
        house, uid = example.meta["house"], example.meta["uid"]
        plan = None
        if self.cfg.demo == "explorer":
            steps = example.meta.get("skills", {}).get("step", [])
            first = [s["receptacle"] for s in steps if isinstance(s, dict) and "receptacle" in s]
            rng = random.Random(f"textgame-explore/{self.seed}/{uid}")
            plans = (explore_plan(house, rng, first) for _ in range(20))
            plan = next((p for p in plans if len(p) <= self.cfg.max_steps), None)
        plan = plan or oracle_plan(house)
        if not self.cfg.demo_mistakes:
            return plan
        rng = random.Random(f"textgame-mistakes/{self.seed}/{uid}")
        return with_mistakes(house, plan, self.cfg.demo_mistakes, self.cfg.max_steps, rng)

    def episode_metrics(self, examples: Sequence[Example], episodes: Sequence[Any]) -> dict[str, float]:
        """Per task type: success/<type> and steps/<type>; invalid_rate (not-admissible actions / steps) and
        steps_won (mean steps of won episodes)."""
        by_type: dict[str, list[dict[str, float]]] = defaultdict(list)
        for ex, ep in zip(examples, episodes, strict=True):
            by_type[ex.meta["house"]["task"]["type"]].append(ep.score)
        out: dict[str, float] = {}
        for task_type in TASK_TYPES:
            scores = by_type.get(task_type)
            if scores:
                out[f"success/{task_type}"] = sum(s.get("success", 0.0) for s in scores) / len(scores)
                out[f"steps/{task_type}"] = sum(s.get("steps", 0.0) for s in scores) / len(scores)
        steps = sum(ep.score.get("steps", 0.0) for ep in episodes)
        out["invalid_rate"] = sum(ep.score.get("invalid", 0.0) for ep in episodes) / steps if steps else 0.0
        won = [ep.score["steps"] for ep in episodes if ep.score.get("success") == 1.0]
        out["steps_won"] = sum(won) / len(won) if won else 0.0
        return out
