"""Preference queries: segment sampling, B-Pref's scripted teachers, and the preference buffer.

Teachers (B-Pref, Lee et al. 2021, arXiv 2111.03026) label a pair of segments from their true rewards:
    skip:     a query whose two plain returns are both below  eps_skip × (the mean true return of an H-step window)
              is skipped (no label)
    myopic:   R = Σ_t γ^(H-1-t) r_t  (later steps weigh more; γ = 1 is the plain return)
    equal:    plain returns closer than  eps_equal × (the same scale)  give y = 0.5 (equally preferable)
    rational: y = 1[R¹ > R⁰] when beta <= 0 (oracle), else y ~ Bernoulli(σ(beta (R¹ - R⁰))) (stochastic, "noisy")
    mistake:  each label is flipped with probability eps_mistake
B-Pref's scale is the mean episode return × H / episode length; here it is the mean true reward of the replay
buffer × H, the same quantity measured on the data seen so far.
Sampling schemes (B-Pref): uniform; disagreement (the mb of `large_batch` × mb candidate pairs with the largest std
over members of P(segment 1 preferred)); entropy (largest entropy of the members' mean preference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reasonrl.control.buffer import ReplayBuffer

# MetaWorld v3's 39-dim observation sliced to RL-SaLLM-F's 17-dim reward input: tcp xyz, gripper, obj xyz, the
# previous frame's tcp xyz, gripper, obj xyz, and goal xyz.
METAWORLD17 = [0, 1, 2, 3, 4, 5, 6, 18, 19, 20, 21, 22, 23, 24, 36, 37, 38]
OBS_SLICES = {"metaworld17": METAWORLD17}

# B-Pref's named teachers: (beta, gamma, eps_mistake, eps_skip, eps_equal)
TEACHERS = {
    "oracle": (0.0, 1.0, 0.0, 0.0, 0.0),
    "stoch": (1.0, 1.0, 0.0, 0.0, 0.0),
    "mistake": (0.0, 1.0, 0.1, 0.0, 0.0),
    "skip": (0.0, 1.0, 0.0, 0.1, 0.0),
    "equal": (0.0, 1.0, 0.0, 0.0, 0.1),
    "myopic": (0.0, 0.9, 0.0, 0.0, 0.0),
}


@dataclass
class ScriptedTeacher:
    """A B-Pref teacher; `from_name` gives the named ones, and every knob can be set on its own."""

    beta: float = 0.0  # <= 0: perfectly rational; > 0: Bradley-Terry sampling with this inverse temperature
    gamma: float = 1.0  # myopic discount of earlier steps
    eps_mistake: float = 0.0
    eps_skip: float = 0.0
    eps_equal: float = 0.0

    @classmethod
    def from_name(cls, name: str) -> ScriptedTeacher:
        if name not in TEACHERS:
            raise ValueError(f"unknown scripted teacher {name!r}; choose one of {', '.join(TEACHERS)}")
        return cls(*TEACHERS[name])

    def label(
        self, rewards0: np.ndarray, rewards1: np.ndarray, scale: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(kept indices, labels y in {0, 0.5, 1}) for pairs of true-reward rows (n, H); `scale` is the mean true
        return of an H-step window, the unit of eps_skip and eps_equal."""
        length = rewards0.shape[1]
        plain0, plain1 = rewards0.sum(1), rewards1.sum(1)
        keep = np.arange(len(plain0))
        if self.eps_skip > 0:
            keep = keep[np.maximum(plain0, plain1) > self.eps_skip * scale]
        weights = self.gamma ** np.arange(length - 1, -1, -1)
        r0, r1 = (rewards0[keep] * weights).sum(1), (rewards1[keep] * weights).sum(1)
        if self.beta > 0:
            p1 = 1 / (1 + np.exp(-self.beta * (r1 - r0)))
            labels = (rng.random(len(keep)) < p1).astype(np.float32)
        else:
            labels = (r1 > r0).astype(np.float32)
        flip = rng.random(len(keep)) < self.eps_mistake
        labels[flip] = 1 - labels[flip]
        if self.eps_equal > 0:
            labels[np.abs(plain1[keep] - plain0[keep]) < self.eps_equal * abs(scale)] = 0.5
        return keep, labels


def reward_inputs(obs: np.ndarray, action: np.ndarray, obs_slice: list[int] | None, use_action: bool) -> np.ndarray:
    """The reward model's input: the sliced state, with the action appended when `use_action`."""
    x = obs[..., obs_slice] if obs_slice is not None else obs
    return np.concatenate([x, action], axis=-1).astype(np.float32) if use_action else x.astype(np.float32)


def sample_pairs(buffer: ReplayBuffer, n: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Start indices of `n` segment pairs drawn uniformly from the buffer's valid segment starts."""
    starts = buffer.segment_starts(length)
    if len(starts) < 2:
        raise ValueError(f"the replay buffer has no two segments of {length} steps yet")
    return rng.choice(starts, n), rng.choice(starts, n)


def select_queries(probs: np.ndarray, count: int, scheme: str) -> np.ndarray:
    """Indices of the `count` candidates to query from member probabilities (E, n) by `scheme`."""
    if scheme == "disagreement":
        score = probs.std(0)
    elif scheme == "entropy":
        p = probs.mean(0).clip(1e-8, 1 - 1e-8)
        score = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    else:
        raise ValueError(f"unknown sampling scheme {scheme!r}; choose uniform, disagreement or entropy")
    return np.argsort(-score, kind="stable")[:count]


class PreferenceBuffer:
    """Labelled pairs (seg0 inputs, seg1 inputs, y) up to `capacity`, with the true-return order's label for accuracy
    and a flag on imagined pairs (RL-SaLLM-F's self-augmentation), which have no true reward."""

    FIELDS = ("seg0", "seg1", "labels", "true_labels", "imagined")

    def __init__(self, capacity: int, length: int, in_dim: int):
        self.seg0 = np.zeros((capacity, length, in_dim), np.float32)
        self.seg1 = np.zeros((capacity, length, in_dim), np.float32)
        self.labels = np.zeros(capacity, np.float32)
        self.true_labels = np.zeros(capacity, np.float32)  # what the true returns say (1 for imagined pairs)
        self.imagined = np.zeros(capacity, bool)
        self.size = 0

    def add(
        self, seg0: np.ndarray, seg1: np.ndarray, labels: np.ndarray, true_labels: np.ndarray, imagined: bool = False
    ) -> int:
        """Store up to the remaining capacity; returns how many were stored."""
        n = min(len(labels), len(self.labels) - self.size)
        s = slice(self.size, self.size + n)
        self.seg0[s], self.seg1[s], self.labels[s], self.true_labels[s] = (
            seg0[:n],
            seg1[:n],
            labels[:n],
            true_labels[:n],
        )
        self.imagined[s] = imagined
        self.size += n
        return n

    def data(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.seg0[: self.size], self.seg1[: self.size], self.labels[: self.size]

    def state(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k)[: self.size] for k in self.FIELDS}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        n = len(arrays["labels"])
        if n > len(self.labels):
            raise ValueError(
                f"checkpoint holds {n} preference pairs, the preference buffer has room for {len(self.labels)}"
            )
        for k in self.FIELDS:
            getattr(self, k)[:n] = arrays[k]
        self.size = n
