"""Household episodes in ALFWorld's grammar: receptacles that open and close, objects to take and put, a sink, a
microwave and a fridge to clean, heat and cool with, and a desklamp to look at things under.

`TextGameEnv` plays one household (a dict made by worlds/textgame.py, kept in `Example.meta`). Every observation
ends with the admissible actions; an action that is not admissible answers "Nothing happens." and costs
`invalid_penalty`; reaching the goal ends the episode with `win_reward`; so does the step limit, without it.
"""

from __future__ import annotations

import re
from typing import Any

from reasonrl.data import Example
from reasonrl.envs.base import StepResult

OPENABLE = frozenset({"cabinet", "drawer", "fridge", "microwave"})
APPLIANCE = {"clean": "sinkbasin", "heat": "microwave", "cool": "fridge"}  # verb -> the receptacle type it needs
STATE_OF = {"clean": "clean", "heat": "hot", "cool": "cool"}
LAMP = "desklamp 1"
ACTION_TAG = re.compile(r"<action>(.*?)</action>", re.DOTALL)


def kind(name: str) -> str:
    """'cabinet 2' -> 'cabinet'."""
    return name.rsplit(" ", 1)[0]


def listing(items: list[str]) -> str:
    """ALFWorld's list phrasing: 'a apple 1, a knife 1, and a mug 2' (the article is always 'a', as in ALFWorld)."""
    named = [f"a {x}" for x in items]
    if len(named) <= 1:
        return "".join(named) or "nothing"
    return ", ".join(named[:-1]) + f", and {named[-1]}"


def task_text(task: dict[str, Any]) -> str:
    """The goal sentence, ALFWorld's phrasing: 'put a clean apple in cabinet.'"""
    obj, target = task["object"], task.get("target", "")
    return {
        "put": f"put a {obj} in {target}.",
        "clean": f"put a clean {obj} in {target}.",
        "heat": f"put a hot {obj} in {target}.",
        "cool": f"put a cool {obj} in {target}.",
        "look": f"look at {obj} under the desklamp.",
        "two": f"put two {obj} in {target}.",
    }[task["type"]]


def parse_action(text: str) -> str:
    """The command in a policy turn: the content of <action>..</action> when present, else the turn's first line;
    lowercased, whitespace collapsed, a trailing period dropped."""
    found = ACTION_TAG.search(text)
    line = found.group(1) if found else (text.strip().splitlines() or [""])[0]
    return " ".join(line.lower().split()).rstrip(".")


class TextGameEnv:
    """One household episode. Deterministic: the state is a pure function of the household and the actions.

    Score keys: reward (win_reward on success), success, steps, invalid (actions that were not admissible)."""

    def __init__(
        self, house: dict[str, Any], max_steps: int = 20, invalid_penalty: float = 1.0, win_reward: float = 10.0
    ):
        self.house, self.max_steps = house, max_steps
        self.invalid_penalty, self.win_reward = invalid_penalty, win_reward
        self.task = "Your task is to: " + task_text(house["task"])  # window mode shows it from step 2 on
        self.reset(None)

    # ---- state -------------------------------------------------------------------------------------------------
    def reset(self, example: Example | None) -> str:
        self.contents: dict[str, list[str]] = {r: list(objs) for r, objs in self.house["contents"].items()}
        self.opened: set[str] = set()
        self.states: dict[str, set[str]] = {}
        self.at: str | None = None
        self.holding: str | None = None
        self.lamp_on = False
        self.steps = self.invalid = 0
        self.won = False
        receptacles = listing(self.house["receptacles"])
        intro = f"You are in the middle of a room. Looking quickly around you, you see {receptacles}."
        return f"{intro}\n\n{self.task}\n{self.actions_line()}"

    def accessible(self, receptacle: str) -> bool:
        return kind(receptacle) not in OPENABLE or receptacle in self.opened

    def admissible(self) -> list[str]:
        """The commands that do something now, in ALFWorld's grammar."""
        out = [f"go to {r}" for r in self.house["receptacles"] if r != self.at]
        here = self.at
        if here is not None:
            if kind(here) in OPENABLE:
                out.append(f"close {here}" if here in self.opened else f"open {here}")
            if self.accessible(here):
                if self.holding is None:
                    out += [f"take {o} from {here}" for o in self.contents[here]]
                else:
                    out.append(f"put {self.holding} in/on {here}")
            if self.holding is not None:
                out += [f"{verb} {self.holding} with {here}" for verb, rt in APPLIANCE.items() if kind(here) == rt]
            if here == self.house["lamp_at"]:
                out.append(f"use {LAMP}")
        return out + ["inventory", "look"]

    def actions_line(self) -> str:
        return "Actions: " + ", ".join(self.admissible())

    # ---- rules ---------------------------------------------------------------------------------------------------
    def arrive(self, receptacle: str) -> str:
        self.at = receptacle
        loc = self.house["locs"][receptacle]
        if self.accessible(receptacle):
            what = listing(self.contents[receptacle] + ([LAMP] if receptacle == self.house["lamp_at"] else []))
            return f"You arrive at loc {loc}. On the {receptacle}, you see {what}."
        return f"You arrive at loc {loc}. The {receptacle} is closed."

    def apply(self, command: str) -> str:
        """The feedback sentence of an admissible command (ALFWorld's phrasing)."""
        verb, _, rest = command.partition(" ")
        here = self.at
        if verb == "go":
            return self.arrive(rest[len("to ") :])
        if verb == "open":
            self.opened.add(here)
            return f"You open the {here}. The {here} is open. In it, you see {listing(self.contents[here])}."
        if verb == "close":
            self.opened.discard(here)
            return f"You close the {here}."
        if verb == "take":
            obj = rest.split(" from ")[0]
            self.contents[here].remove(obj)
            self.holding = obj
            return f"You pick up the {obj} from the {here}."
        if verb == "put":
            obj, self.holding = self.holding, None
            self.contents[here].append(obj)
            return f"You put the {obj} in/on the {here}."
        if verb in APPLIANCE:
            self.states.setdefault(self.holding, set()).add(STATE_OF[verb])
            return f"You {verb} the {self.holding} using the {here}."
        if verb == "use":
            self.lamp_on = True
            return f"You turn on the {LAMP}."
        if verb == "inventory":
            return f"You are carrying: a {self.holding}." if self.holding else "You are not carrying anything."
        return f"You are facing the {here}." if here else "You are in the middle of a room."

    def goal_met(self) -> bool:
        task = self.house["task"]
        wanted = task["object"]
        if task["type"] == "look":
            held = self.holding is not None and kind(self.holding) == wanted
            return held and self.lamp_on and self.at == self.house["lamp_at"]
        need = STATE_OF.get(task["type"])
        placed = [
            o
            for r, objs in self.contents.items()
            if kind(r) == task["target"]
            for o in objs
            if kind(o) == wanted and (need is None or need in self.states.get(o, set()))
        ]
        return len(placed) >= (2 if task["type"] == "two" else 1)

    # ---- Env -----------------------------------------------------------------------------------------------------
    def step(self, action: str) -> StepResult:
        command = parse_action(action)
        self.steps += 1
        valid = command in self.admissible()
        if valid:
            feedback, reward = self.apply(command), 0.0
            self.won = self.goal_met()
        else:
            self.invalid += 1
            feedback, reward = "Nothing happens.", -self.invalid_penalty
        info = {"command": command, "invalid": not valid, "won": self.won}
        if self.won:
            return StepResult(feedback, reward + self.win_reward, True, info)
        done = self.steps >= self.max_steps
        return StepResult(feedback if done else f"{feedback}\n{self.actions_line()}", reward, done, info)

    def score(self) -> dict[str, float]:
        won = float(self.won)
        return {
            "reward": self.win_reward * won,
            "success": won,
            "steps": float(self.steps),
            "invalid": float(self.invalid),
        }
