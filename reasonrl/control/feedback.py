"""RL-SaLLM-F's two mechanisms around any labeller, and the counts behind the feedback metrics.

double-check (feedback.double_check): every strict answer is asked again with the two segments swapped; the label
    stays only when the second answer mirrors the first, (y, y') in {(0, 1), (1, 0)}. Ties, failures and flips
    the other way are dropped (Tu et al. 2024, `get_vlm_label`).
self-augmentation (feedback.self_augment): for each label kept, the labeller imagines a trajectory better than the
    preferred segment, starting from its first state; rebuilt into full observations (trajectory_text.
    rebuild_states) it is stored as preferred over the worse real segment, with the worse segment's actions, and
    marked imagined so label accuracy leaves it out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from reasonrl.control.labellers import Answers, Labeller, Queries
from reasonrl.control.trajectory_text import TaskText, rebuild_states


@dataclass
class FeedbackCounts:
    """Cumulative counts over a run (checkpointed)."""

    queries: int = 0  # pairs asked (first asks)
    ambiguous: int = 0  # first answers without a strict preference: an LLM's 0, B-Pref's equal (0.5) or skip
    errors: int = 0  # calls that failed or timed out, swapped asks included
    unparsable: int = 0  # answers with no verdict, swapped asks included
    checked: int = 0  # strict first answers asked again, swapped
    rejected: int = 0  # ... whose swapped answer did not mirror the first
    imagine_asked: int = 0
    imagine_failed: int = 0  # no usable trajectory: a failed call or an unparsable one

    def count_failures(self, answers: Answers) -> None:
        self.errors += answers.failures.count("error")
        self.unparsable += answers.failures.count("unparsable")


@dataclass
class Labelled:
    """What one feedback round yields: labels for pairs `keep` of the queries, and the imagined pairs (the worse
    real segment and the imagined one, each with obs and action arrays (m, H, ...)); m = 0 without them."""

    keep: np.ndarray
    labels: np.ndarray
    imagined_worse: dict[str, np.ndarray]
    imagined_better: dict[str, np.ndarray]


def double_check(labeller: Labeller, queries: Queries, first: Answers) -> tuple[np.ndarray, Answers, np.ndarray]:
    """(labels with the unconfirmed ones set to nan, the swapped answers, indices of the strict first answers)."""
    strict = np.flatnonzero((first.labels == 0) | (first.labels == 1))
    second = labeller.label(queries.subset(strict).swapped())
    mirror = second.labels == 1 - first.labels[strict]  # nan (no answer) never mirrors
    labels = np.full(len(queries), np.nan, np.float32)
    labels[strict[mirror]] = first.labels[strict[mirror]]
    return labels, second, strict


class Labelling:
    """Asks a labeller about segment pairs, with the double-check and self-augmentation when enabled."""

    def __init__(self, labeller: Labeller, task: TaskText, double_checking: bool, self_augment: bool):
        self.labeller, self.task = labeller, task
        self.double_checking, self.self_augment = double_checking, self_augment
        self.counts = FeedbackCounts()

    def __call__(self, queries: Queries) -> Labelled:
        first = self.labeller.label(queries)
        c = self.counts
        c.queries += len(queries)
        c.count_failures(first)
        failed = np.array([f is not None for f in first.failures], bool)
        c.ambiguous += int(((np.isnan(first.labels) & ~failed) | (first.labels == 0.5)).sum())
        labels = first.labels
        if self.double_checking:
            labels, second, strict = double_check(self.labeller, queries, first)
            c.count_failures(second)
            c.checked += len(strict)
            c.rejected += int(np.isnan(labels[strict]).sum())
        keep = np.flatnonzero(~np.isnan(labels))
        worse: dict[str, list] = {"obs": [], "action": []}
        better: dict[str, list] = {"obs": [], "action": []}
        if self.self_augment:
            for i in keep[labels[keep] != 0.5]:
                preferred = int(labels[i])
                c.imagine_asked += 1
                trajectory, _ = self.labeller.imagine(queries, int(i), preferred, first.reply(int(i)))
                if trajectory is None:
                    c.imagine_failed += 1
                    continue
                other = (queries.seg0, queries.seg1)[1 - preferred]
                worse["obs"].append(other["obs"][i])
                worse["action"].append(other["action"][i])
                better["obs"].append(rebuild_states(self.task, other["obs"][i], trajectory))
                better["action"].append(other["action"][i])
        stack = lambda parts, like: np.stack(parts) if parts else np.zeros((0, *like.shape[1:]), like.dtype)  # noqa: E731
        return Labelled(
            keep,
            labels[keep],
            {k: stack(v, queries.seg0[k]) for k, v in worse.items()},
            {k: stack(v, queries.seg0[k]) for k, v in better.items()},
        )

    def metrics(self) -> dict[str, float]:
        c = self.counts
        return {
            "pref/ambiguous_rate": c.ambiguous / max(c.queries, 1),
            "pref/failures": c.errors + c.unparsable,
            "pref/errors": c.errors,
            "pref/unparsable": c.unparsable,
            "pref/double_check_rejected": c.rejected / max(c.checked, 1),
            "pref/imagine_failed": c.imagine_failed,
        }

    def state(self) -> dict:
        return {"counts": asdict(self.counts), "labeller": self.labeller.state()}

    def load_state(self, state: dict) -> None:
        self.counts = FeedbackCounts(**state["counts"])
        self.labeller.load_state(state["labeller"])
