"""Segments as text for language-model labellers (RL-SaLLM-F, Tu et al. 2024, arXiv 2412.16878): the evaluator and
trajectory-generation prompts, parsing their answers, and rebuilding full observations from an imagined trajectory.

A task names the observation fields a model reads. MetaWorld v3 (39-dim observation): `tcp` (end-effector xyz,
obs[0:3]) and `obj` (object xyz, obs[4:7]) per step, `target` (goal xyz, obs[36:39]) once; reach-v3 shows no `obj`.
Other gymnasium tasks show the whole observation as `obs` per step. Numbers are written with 4 decimals and no
spaces, as the paper's code does. The evaluator's answer is 1 (trajectory 1 better), 2 (trajectory 2) or 0 (unsure,
no clear difference). An imagined trajectory supplies only these fields: rebuilding copies every other dimension
from the worse real segment, and MetaWorld's previous-frame copies of tcp and obj (obs[18:21], obs[22:25]) become
the imagined values shifted by one step, row 0 keeping the worse segment's (the paper's `convert_trajdist_to_traj`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

METAWORLD_STEP = 0.01  # MetaWorld moves the hand at most about 1 cm per step (action scale 1/100)


@dataclass(frozen=True)
class Field:
    """One quantity shown to the labeller: where it lives in the observation, per step or once per segment."""

    name: str
    index: slice
    meaning: str
    per_step: bool = True  # False: one value for the whole segment, read at its first step (the goal)
    previous: slice | None = None  # where the observation keeps this field's previous-frame copy (MetaWorld)

    @property
    def dim(self) -> int:
        return self.index.stop - self.index.start


@dataclass(frozen=True)
class TaskText:
    """What a text labeller is told about a task: its goal sentence and the fields of a segment it reads."""

    name: str
    goal: str | None  # None: no sentence known for this task; text labellers need feedback.goal then
    fields: tuple[Field, ...]
    metaworld: bool = False  # positions in MetaWorld's layout: the scripted labeller can imagine trajectories
    carries_object: bool = False  # the task moves an object to the target (every MetaWorld task but reach)


# RL-SaLLM-F's task prompts, reworded: (goal, what obj is, what target is); reach has no object to show.
METAWORLD_TASKS = {
    "reach-v3": ("move the robot's tool centre point (TCP) to a goal position", None, "the goal position"),
    "button-press-v3": (
        "press a button with the TCP",
        "the button the TCP must touch and push in",
        "where the pressed button ends",
    ),
    "drawer-open-v3": (
        "open a drawer",
        "the drawer handle; the TCP must pull it out, so its coordinates change",
        "where the handle ends when the drawer is open",
    ),
    "drawer-close-v3": (
        "close a drawer",
        "the drawer handle; the TCP must push it in, so its coordinates change",
        "where the handle ends when the drawer is closed",
    ),
    "door-open-v3": (
        "open a door that turns on a revolving joint",
        "the door handle; the TCP must pull it to swing the door open, so its coordinates change",
        "where the handle ends when the door is open",
    ),
    "window-open-v3": (
        "push a window open",
        "the window handle; the TCP must push it sideways, so its coordinates change",
        "where the handle ends when the window is open",
    ),
    "door-unlock-v3": (
        "unlock a door by turning its lock counter-clockwise",
        "the lock; the TCP must turn it, so its coordinates change",
        "where the lock ends when the door is unlocked",
    ),
    "handle-pull-v3": (
        "pull a handle up",
        "the handle; the TCP must hold it from below and lift it, so its coordinates change",
        "where the handle ends when it is pulled up",
    ),
    "coffee-push-v3": (
        "push a mug under a coffee machine",
        "the mug; the TCP must touch it first, then push it, so its coordinates change",
        "the spot under the coffee machine",
    ),
}
GYM_TASKS = {
    "Pendulum-v1": (
        "swing the pendulum up and keep it upright, with little angular velocity",
        "[cos(angle), sin(angle), angular velocity] of the pendulum; angle 0 is upright",
    ),
}


def task_text(env_id: str, obs_dim: int, goal: str | None = None) -> TaskText:
    """The text description of `env_id` (a gymnasium id or metaworld:TASK); `goal` replaces the built-in sentence."""
    if env_id.startswith("metaworld:"):
        name = env_id.removeprefix("metaworld:")
        known_goal, obj, target = METAWORLD_TASKS.get(name, (None, "the object the TCP must move", "its goal"))
        tcp = Field("tcp", slice(0, 3), "the position (x, y, z) of the robot's end effector (TCP)", True, slice(18, 21))
        shown = [tcp]
        if name != "reach-v3":
            shown.append(Field("obj", slice(4, 7), f"the position (x, y, z) of {obj}", True, slice(22, 25)))
        shown.append(Field("target", slice(36, 39), f"{target} (x, y, z)", per_step=False))
        return TaskText(name, goal or known_goal, tuple(shown), metaworld=True, carries_object=name != "reach-v3")
    known_goal, meaning = GYM_TASKS.get(env_id, (None, f"the {obs_dim}-dim observation vector"))
    return TaskText(env_id, goal or known_goal, (Field("obs", slice(0, obs_dim), meaning),))


def format_numbers(values: np.ndarray) -> str:
    """[[0.1234,-0.5],...] with 4 decimals and no spaces (RL-SaLLM-F's text format)."""
    if values.ndim == 1:
        return "[" + ",".join(f"{v:.4f}" for v in values.tolist()) + "]"
    return "[" + ",".join(format_numbers(row) for row in values) + "]"


def render_segment(task: TaskText, obs: np.ndarray) -> str:
    """One segment (H, obs_dim) as `name: [...]` lines, per-step fields as H rows, once-fields from step 0."""
    return "\n".join(
        f"{f.name}: {format_numbers(obs[:, f.index] if f.per_step else obs[0, f.index])}" for f in task.fields
    )


def render_start(task: TaskText, obs: np.ndarray) -> str:
    """A segment's first state, every field as one vector: where an imagined trajectory must begin."""
    return "\n".join(f"{f.name}: {format_numbers(obs[0, f.index])}" for f in task.fields)


def _field_list(task: TaskText) -> str:
    return "\n".join(f"({i}) `{f.name}` is {f.meaning};" for i, f in enumerate(task.fields, 1))


def evaluator_prompt(task: TaskText, obs0: np.ndarray, obs1: np.ndarray) -> str:
    """RL-SaLLM-F's evaluator prompt: two segments (shown as trajectories 1 and 2), analysis, then 1, 2 or 0."""
    return (
        "You are an expert evaluator of robot motion, judging how well a robot's trajectory achieves a goal.\n"
        f"The goal is to {task.goal}.\n"
        f"Below are two trajectories of {len(obs0)} steps each, where:\n{_field_list(task)}\n\n"
        f"Trajectory 1:\n{render_segment(task, obs0)}\n\nTrajectory 2:\n{render_segment(task, obs1)}\n\n"
        "Answer these two questions step by step:\n"
        "1. Do Trajectory 1 and Trajectory 2 differ in how well they achieve the goal? Give your analysis.\n"
        "2. Which trajectory achieves the goal better? End with a single line holding only a number: 1 if "
        "Trajectory 1 achieves it better, 2 if Trajectory 2 does, or 0 if you are unsure or there is no "
        "significant difference."
    )


def generation_prompt(task: TaskText, better_obs: np.ndarray) -> str:
    """RL-SaLLM-F's follow-up: imagine a better trajectory from the better segment's first state, same format."""
    names = ", ".join(f.name for f in task.fields)
    if task.carries_object:
        rules = (
            "1. The TCP moves smoothly, as physics allows, without sudden jumps in its coordinates;\n"
            "2. The TCP first goes to obj (their coordinates become close), then moves obj with it until obj "
            "reaches the target;\n"
        )
    elif task.metaworld:
        rules = "1. The TCP moves smoothly, as physics allows, without sudden jumps, and reaches the target quickly;\n"
    else:
        rules = "1. Every quantity changes smoothly, as the task's physics allows, without sudden jumps;\n"
    return (
        "Based on your analysis, generate a new trajectory that starts from the initial state of the better "
        "trajectory and achieves the goal better than it. Reply with the new trajectory only.\n"
        f"It must meet these conditions:\n{rules}"
        f"{len(rules.splitlines()) + 1}. It has the same format as the trajectories above ({names}) and "
        f"{len(better_obs)} steps, and starts with\n{render_start(task, better_obs)}"
    )


# a whole reply that is just the verdict, possibly decorated ("**2**", "Answer: 2."), else its last integer
_VERDICT_LINE = re.compile(r"^\W*(?:answer\W*)?([012])\W*$", re.IGNORECASE)
_INTEGER = re.compile(r"(?<![\d.])(\d+)(?![\d.]*\d)")


def parse_answer(text: str | None) -> float | None:
    """The evaluator's verdict as a label: 1 -> 0.0 (segment 0 preferred), 2 -> 1.0, 0 -> nan (ambiguous);
    None when the reply holds no verdict. The last line that is only 0, 1 or 2 decides; failing that the reply's
    last integer (the paper's rule), so decimals such as 0.1234 are never read as verdicts."""
    if not text:
        return None
    for line in reversed(text.strip().splitlines()):
        if m := _VERDICT_LINE.match(line.strip()):
            return {"1": 0.0, "2": 1.0, "0": math.nan}[m.group(1)]
    integers = _INTEGER.findall(text)
    if integers and integers[-1] in ("0", "1", "2"):
        return {"1": 0.0, "2": 1.0, "0": math.nan}[integers[-1]]
    return None


_NUMBER = re.compile(r"-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


def _bracketed(text: str, start: int) -> str | None:
    """The text of the bracket group opening at `start`, brackets included; None when it never closes."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"[": 1, "]": -1}.get(text[i], 0)
        if depth == 0:
            return text[start : i + 1]
    return None


def parse_trajectory(task: TaskText, text: str | None, length: int) -> dict[str, np.ndarray] | None:
    """The imagined trajectory in a reply: per-step fields as (length, dim) arrays (longer ones cut to `length`,
    as the paper does), once-fields as (dim,); None when a field is missing, short, misshapen or not finite. The
    last `name: [...]` of each field counts: a reply may restate the start state before the trajectory."""
    if not text:
        return None
    out = {}
    for f in task.fields:
        heads = list(re.finditer(rf"(?<![A-Za-z_])[\"']?{f.name}[\"']?\s*:\s*(?=\[)", text))
        group = _bracketed(text, heads[-1].end()) if heads else None
        if group is None:
            return None
        values = np.array([float(v) for v in _NUMBER.findall(group)], np.float32)
        if len(values) == 0 or len(values) % f.dim or not np.isfinite(values).all():
            return None
        rows = values.reshape(-1, f.dim)
        if f.per_step:
            if len(rows) < length:
                return None
            out[f.name] = rows[:length]
        else:
            if len(rows) != 1:
                return None
            out[f.name] = rows[0]
    return out


def rebuild_states(task: TaskText, worse_obs: np.ndarray, trajectory: dict[str, np.ndarray]) -> np.ndarray:
    """Full observations (H, obs_dim) of an imagined trajectory: its fields written into a copy of the worse
    segment, previous-frame copies shifted by one step (row 0 keeps the worse segment's)."""
    obs = worse_obs.copy()
    for f in task.fields:
        obs[:, f.index] = trajectory[f.name]
        if f.previous is not None:
            obs[1:, f.previous] = trajectory[f.name][:-1]
    return obs


def _towards(a: np.ndarray, b: np.ndarray, step: float) -> np.ndarray:
    """The move from a towards b, at most `step` long."""
    gap = b - a
    dist = float(np.linalg.norm(gap))
    return gap if dist <= step else gap * (step / dist)


def scripted_imagination(task: TaskText, better_obs: np.ndarray, step: float = METAWORLD_STEP) -> dict[str, np.ndarray]:
    """A trajectory a scripted labeller imagines on a MetaWorld task: from the better segment's first state the TCP
    heads straight for the target (reach) or for obj, then carries obj to the target, `step` per step."""
    fields = {f.name: f for f in task.fields}
    start = better_obs[0]
    tcp, target = start[fields["tcp"].index].copy(), start[fields["target"].index].copy()
    obj = start[fields["obj"].index].copy() if task.carries_object else None
    tcps, objs = [tcp.copy()], [None if obj is None else obj.copy()]
    for _ in range(len(better_obs) - 1):
        if obj is None:
            tcp += _towards(tcp, target, step)
        elif np.linalg.norm(obj - tcp) > step:
            tcp += _towards(tcp, obj, step)
        else:  # touching: the object moves with the hand
            move = _towards(obj, target, step)
            tcp, obj = tcp + move, obj + move
        tcps.append(tcp.copy())
        objs.append(None if obj is None else obj.copy())
    out = {"tcp": np.stack(tcps), "target": target}
    if obj is not None:
        out["obj"] = np.stack(objs)
    return out
