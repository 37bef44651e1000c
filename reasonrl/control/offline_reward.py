"""The learned reward of offline runs: preference labels over dataset segments, the Bradley-Terry ensemble trained
on them, and DTR's ensemble normalisation.

Segments are H consecutive rows of one episode (a segment across an episode boundary would compare unrelated
steps). Labels come from a B-Pref scripted teacher on the true rewards (preferences.py), or from a file.
Preference file (.npz, what every run writes to RUN_DIR/preferences.npz): `start0`, `start1` (the dataset rows where
the two segments of each pair start), `labels` (1: segment 1 preferred, 0: segment 0, 0.5: equally preferable) and
`segment` (H, a 0-d int). Uni-RLHF's label files hold the same information (start indices and labels).
DTR's ensemble normalisation (Tu et al. 2024, arXiv 2412.09104) z-scores each member over all dataset transitions
before averaging:  r(s, a) = (1/E) Σ_e (r_e(s, a) - μ_e) / σ_e.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reasonrl.control.offline_data import OfflineDataset
from reasonrl.control.preferences import ScriptedTeacher
from reasonrl.control.reward_model import RewardEnsemble

PREFERENCE_KEYS = ("start0", "start1", "labels", "segment")


@dataclass
class Preferences:
    """Labelled pairs of dataset segments: start rows, labels y = P(segment 1 preferred), segment length."""

    start0: np.ndarray
    start1: np.ndarray
    labels: np.ndarray
    segment: int

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        np.savez(path, start0=self.start0, start1=self.start1, labels=self.labels, segment=np.array(self.segment))
        return path


def segment_starts(dataset: OfflineDataset, length: int) -> np.ndarray:
    """Rows i whose segment [i, i + length) lies inside one episode."""
    starts, ends = dataset.episode_bounds()
    return np.concatenate([np.arange(s, e - length + 1) for s, e in zip(starts, ends)] + [np.zeros(0, np.int64)])


def scripted_preferences(
    dataset: OfflineDataset, queries: int, length: int, teacher: ScriptedTeacher, rng: np.random.Generator
) -> Preferences:
    """`queries` uniformly drawn segment pairs labelled by `teacher` from the true rewards (skipped ones dropped)."""
    valid = segment_starts(dataset, length)
    if len(valid) < 2:
        episodes = len(dataset.episode_bounds()[0])
        raise ValueError(
            f"the dataset has fewer than two segments of pref.segment={length} steps inside one episode "
            f"({episodes} episodes, {len(dataset)} transitions); lower pref.segment"
        )
    start0, start1 = rng.choice(valid, queries), rng.choice(valid, queries)
    window = np.arange(length)
    r0, r1 = dataset.rewards[start0[:, None] + window], dataset.rewards[start1[:, None] + window]
    keep, labels = teacher.label(r0, r1, float(dataset.rewards.mean()) * length, rng)
    return Preferences(start0[keep], start1[keep], labels.astype(np.float32), length)


def load_preferences(path: str | Path, dataset: OfflineDataset) -> Preferences:
    """Read a preference file and check it against `dataset`; errors name the file and the problem."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"data.preferences={path}: not a readable .npz file ({e})") from e
    missing = [k for k in PREFERENCE_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"data.preferences={path}: missing key(s) {', '.join(missing)}; needs {PREFERENCE_KEYS}")
    start0, start1 = arrays["start0"].astype(np.int64), arrays["start1"].astype(np.int64)
    labels, length = arrays["labels"].astype(np.float32), int(arrays["segment"])
    if not len(start0) == len(start1) == len(labels) > 0:
        raise ValueError(f"data.preferences={path}: start0, start1 and labels must be non-empty, of equal length")
    if not np.isin(labels, (0.0, 0.5, 1.0)).all():
        raise ValueError(f"data.preferences={path}: labels must be 0, 0.5 or 1")
    valid = np.zeros(len(dataset), bool)
    valid[segment_starts(dataset, length)] = True
    inside = (start0 >= 0) & (start0 < len(dataset)) & (start1 >= 0) & (start1 < len(dataset))
    bad = ~inside | ~valid[np.where(inside, start0, 0)] | ~valid[np.where(inside, start1, 0)]
    if bad.any():
        raise ValueError(
            f"data.preferences={path}: {int(bad.sum())} pair(s) start outside the dataset or cross an episode end "
            f"(segment {length}, {len(dataset)} rows), first at pair {int(np.argmax(bad))}"
        )
    return Preferences(start0, start1, labels, length)


def train_reward_model(
    model: RewardEnsemble,
    inputs: np.ndarray,
    true_rewards: np.ndarray,
    prefs: Preferences,
    epochs: int,
    batch_size: int,
    rng: np.random.Generator,
) -> dict[str, float]:
    """Fit `model` to the labelled pairs over `inputs` (N, in_dim), one row per transition; returns its metrics,
    with label and ensemble accuracy against the true-return order."""
    window = np.arange(prefs.segment)
    rows0, rows1 = prefs.start0[:, None] + window, prefs.start1[:, None] + window
    metrics = model.train_epochs(inputs[rows0], inputs[rows1], prefs.labels, epochs, batch_size, rng)
    ret0, ret1 = true_rewards[rows0].sum(1), true_rewards[rows1].sum(1)
    strict = (ret0 != ret1) & (prefs.labels != 0.5)
    truth = ret1 > ret0
    probs = model.preference_probs(inputs[rows0], inputs[rows1]).mean(0)
    return {
        **metrics,
        "pref/labels": len(prefs.labels),
        "pref/label_accuracy": float(((prefs.labels > 0.5) == truth)[strict].mean()) if strict.any() else 1.0,
        "pref/equal_share": float((prefs.labels == 0.5).mean()),
        "reward/true_accuracy": float(((probs > 0.5) == truth)[ret0 != ret1].mean()),
    }


@torch.no_grad()
def member_rewards(model: RewardEnsemble, inputs: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """(E, N): every member's reward of every transition."""
    parts = [model(torch.as_tensor(inputs[i : i + chunk])).numpy() for i in range(0, len(inputs), chunk)]
    return np.concatenate(parts, axis=1)


def ensemble_reward(rewards: np.ndarray, zscore: bool) -> np.ndarray:
    """The members' mean reward (E, N) -> (N,); with `zscore`, each member standardised over the N transitions first
    (DTR's ensemble normalisation; a member constant over the dataset contributes 0)."""
    if zscore:
        std = rewards.std(axis=1, keepdims=True)
        rewards = (rewards - rewards.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)
    return rewards.mean(0).astype(np.float32)
