"""Preference pairs: the offline pairs file of `algo=dpo`, and DPO-VP's verifiable pairs built from scored samples.

DPO-VP (Tu et al. 2025, arXiv:2503.12854; code TU2021/DPO-VP, evaluation/VR_score.py) scores every sample
    v = +1  correct and boxed,   0  boxed but wrong (or an empty box),   -1  no closed \\boxed{} at all
and builds at most one pair per prompt (evaluation/divide_dataset.py::get_dpo_data_vr):
    chosen:   the longest v=+1 sample shorter than max_tokens (none shorter: the longest v=+1);
              else the longest v=0;  else no pair
    rejected: a uniformly random v=-1;  else, if chosen is v=+1, a random v=0;
              else, if chosen is v=0, a random v=0 other than the chosen;  else no pair
So prompts whose samples are all correct, all unboxed, or a single boxed-wrong one among correct ones give no pair.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reasonrl.data import DataError, Example, load_jsonl
from reasonrl.rewards.math import extract_boxed

WRONG_PAIRS = ("all", "unboxed", "none")  # which pairs with a wrong chosen sample to keep (see select_pair)


@dataclass
class Pair:
    """One preference pair as token ids; `ref_logps` = (log pi_ref(chosen|x), log pi_ref(rejected|x)) once computed."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    ref_logps: tuple[float, float] | None = None


def vr_score(completion: str, reward: float) -> int | None:
    """The verifiable score v of one sample: +1, 0 or -1 as above; None when its verification failed (NaN reward),
    so the sample is neither chosen nor rejected. `reward` >= 1 means the verifier fully accepted the answer."""
    if math.isnan(reward):
        return None
    boxed = extract_boxed(completion)
    if boxed is None:
        return -1
    return 1 if boxed and reward >= 1.0 else 0


def select_pair(
    scores: list[int | None], lengths: list[int], rng: random.Random, max_tokens: int, wrong_pairs: str = "all"
) -> tuple[int, int] | None:
    """(chosen, rejected) indices into one prompt's samples by the rules above, or None for no pair.

    `lengths` are response lengths in tokens; "longest" ties go to the earlier sample. `wrong_pairs` drops pairs
    whose chosen is wrong: "all" keeps them (the official code: 0 vs -1 and 0 vs 0), "unboxed" keeps only 0 vs -1
    (boxed-wrong preferred to unboxed teaches the format), "none" keeps only pairs with a correct chosen.
    """
    if wrong_pairs not in WRONG_PAIRS:
        raise ValueError(f"wrong_pairs must be one of {WRONG_PAIRS}, got {wrong_pairs!r}")
    by_score = {v: [i for i, s in enumerate(scores) if s == v] for v in (1, 0, -1)}

    def longest_first(idx: list[int]) -> list[int]:
        return sorted(idx, key=lambda i: -lengths[i])  # stable: ties keep their order

    correct, wrong, unboxed = longest_first(by_score[1]), longest_first(by_score[0]), by_score[-1]
    if correct:
        chosen = next((i for i in correct if lengths[i] < max_tokens), correct[0])
    elif wrong and wrong_pairs != "none":
        chosen = wrong[0]
    else:
        return None
    if unboxed:
        return chosen, rng.choice(unboxed)
    if correct and wrong:
        return chosen, rng.choice(wrong)
    if not correct and len(wrong) > 1 and wrong_pairs == "all":
        return chosen, rng.choice(wrong[1:])
    return None


def load_pairs_file(path: str | os.PathLike) -> list[tuple[Example, str, str]]:
    """(prompt as an Example, chosen text, rejected text) per row of a JSONL with `prompt`, `chosen` and `rejected`.

    Any malformed row is one DataError naming the file, the line and the field; other fields are ignored, so a
    DPO-VP round file (RUN_DIR/pairs/round_001.jsonl) is a valid pairs file too.
    """
    examples = load_jsonl(path, require_answer=False, string_fields=("chosen", "rejected"))
    return [(ex, ex.meta["chosen"], ex.meta["rejected"]) for ex in examples]


def save_round_pairs(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write a round's pairs as JSON lines atomically (temp file, then rename): a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    os.replace(tmp, path)


def load_round_pairs(path: Path) -> list[Pair]:
    """The token-level pairs of a round file written by `save_round_pairs`, to resume a run mid-round exactly
    (token ids as sampled, never re-tokenized text; reference log-probs as computed at the round's start)."""
    pairs = []
    try:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                try:
                    row = json.loads(line)
                    pairs.append(
                        Pair(
                            list(row["prompt_ids"]),
                            list(row["chosen_ids"]),
                            list(row["rejected_ids"]),
                            (float(row["ref_chosen_logp"]), float(row["ref_rejected_logp"])),
                        )
                    )
                except (ValueError, KeyError, TypeError) as e:
                    raise DataError(f"{path}, line {line_no}: not a DPO-VP round record ({e!r})") from None
    except OSError as e:
        raise DataError(f"cannot resume DPO-VP mid-round: the round's pairs file is unreadable ({e})") from e
    return pairs
