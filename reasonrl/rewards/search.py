"""Per-turn rewards of search episodes: Search-R1's format terms and AutoSearch's depth shaping (docs/autosearch.md).

AutoSearch (Sun et al., ACL 2026 Findings, arXiv:2604.17337; formulas reconstructed from the authors' code,
shared/specs/agentic-and-control-methods.md §2) rewards an episode of turns 0..T-1 (searches, then the answer turn)
turn by turn. After every search k a self-answer probe asks the policy for an answer now; its EM and F1 against the
gold answers give the capability-aware depth t_c (Eq. 6: the first search after which the probe was already right),
an F1-gain process reward, and the over-search signal (searches after t_c). Everything here is plain Python on
decoded turn texts and probe scores, so each term is checked against hand-computed values (tests/test_autosearch.py).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from reasonrl.rewards.qa import normalize_answer

SHAPING_MODES = ("autosearch", "outcome")
OVER_SEARCH_MODES = ("add", "overwrite")
_THINK = r"(?:<think>.*?</think>\s*)"


@dataclass
class SearchShaping:
    """algo.shaping: the reward terms and their constants (defaults: the authors' code; `ours` marks our choices)."""

    mode: str = "autosearch"  # autosearch (all terms, needs probes) | outcome (Search-R1: EM + format terms only)
    structure_format_score: float = 0.2  # s: a search turn gets +s/8 when well formed and new, else -s/8
    final_format_score: float = 0.1  # f: a well-formed answer turn gets +f
    final_format_penalty: float = 0.5  # a last turn that is not a well-formed answer gets -0.5
    require_think: bool = False  # ours: the paper's format needs <think>..</think> first; the tiny models never think
    duplicate_threshold: float = 0.8  # a query whose cosine with an earlier one exceeds this is a repeat (format -)
    f1_gain_weight: float = 1.0  # weight of g_k = max(0, F1_k - max_{j<k} F1_j) on search turn k
    encourage_search: float = 0.0125  # wrong final answer: + this on every turn with a non-negative format score
    direct_bonus: float = 0.2  # right answer without any search: + this on the answer turn
    depth_scale: float = 0.5  # depth bonus per turn: scale * (budget / depth - step), depth = searches that sufficed
    depth_budget: float = 0.4
    depth_step: float = 0.05
    over_search_penalty: float = 0.05  # on every turn after t_c
    over_search_mode: str = "add"  # ours: add (keeps the outcome) | overwrite (the code: the turn's reward := -0.05)
    tc_exclude_last: bool = True  # the code: the probe after the last search never sets t_c
    search_penalty: float = 0.0  # ours, 0 = off: minus this on every search turn (the uniform-penalty ablation)

    def __post_init__(self) -> None:
        if self.mode not in SHAPING_MODES:
            raise ValueError(f"algo.shaping.mode={self.mode!r}; choose one of {SHAPING_MODES}")
        if self.over_search_mode not in OVER_SEARCH_MODES:
            raise ValueError(f"algo.shaping.over_search_mode={self.over_search_mode!r}; choose add or overwrite")
        if not 0 <= self.duplicate_threshold <= 1:
            raise ValueError(f"algo.shaping.duplicate_threshold must be in [0, 1], got {self.duplicate_threshold}")
        numbers = {k: v for k, v in vars(self).items() if isinstance(v, float)}
        bad = {k: v for k, v in numbers.items() if not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"algo.shaping: constants must be finite and >= 0 (signs are in the formulas), got {bad}")


def query_cosine(a: str, b: str) -> float:
    """Cosine of the bag-of-words vectors of two normalised queries (ours: the code uses TF-IDF cosine fitted on the
    episode's few queries, where IDF is degenerate; a repeated query scores 1 under both)."""
    ca, cb = Counter(normalize_answer(a).split()), Counter(normalize_answer(b).split())
    dot = sum(ca[w] * cb[w] for w in ca)
    norm = math.sqrt(sum(v * v for v in ca.values()) * sum(v * v for v in cb.values()))
    return dot / norm if norm else 0.0


def _clean(text: str, tag: str, require_think: bool) -> re.Match | None:
    think = _THINK if require_think else _THINK + "?"
    return re.fullmatch(rf"\s*{think}<{tag}>(.*?)</{tag}>\s*", text, re.DOTALL)


def search_turn_ok(action: str, earlier_queries: Sequence[str], shaping: SearchShaping) -> bool:
    """A well-formed search turn: (<think>..</think>) <search>q</search> and nothing else, q not empty and not a
    near-repeat of an earlier query of the episode (cosine > duplicate_threshold)."""
    match = _clean(action, "search", shaping.require_think)
    if match is None or not match.group(1).strip():
        return False
    return all(query_cosine(match.group(1), q) <= shaping.duplicate_threshold for q in earlier_queries)


def answer_turn_ok(action: str, shaping: SearchShaping) -> bool:
    """A well-formed answer turn: (<think>..</think>) <answer>a</answer> and nothing else."""
    return _clean(action, "answer", shaping.require_think) is not None


def self_answer(text: str) -> str | None:
    """A probe's answer: what follows the last `<answer>` before the first `</answer>`, up to it or to the end (a
    probe cut at its token limit still answers; a repeated forced tag is skipped); None without `<answer>`."""
    match = re.search(r"<answer>((?:(?!<answer>).)*?)(?:</answer>|$)", text, re.DOTALL)
    return match.group(1).strip() if match else None


def capability_depth(probe_em: Sequence[float], exclude_last: bool = True) -> int | None:
    """t_c (Eq. 6), 0-based: the first search k whose probe answer was exactly right, None if none; with
    `exclude_last`, the probe after the episode's last search does not count (as in the authors' code)."""
    usable = len(probe_em) - 1 if exclude_last else len(probe_em)
    return next((k for k in range(max(0, usable)) if probe_em[k] == 1.0), None)


def f1_gains(probe_f1: Sequence[float], upto: int | None = None) -> list[float]:
    """g_k = max(0, F1_k - max_{j<k} F1_j) (F1 before any probe: 0), for the probes k <= upto (all when None);
    later probes gain nothing (the code stops at t_c)."""
    gains, best = [], 0.0
    for k, f1 in enumerate(probe_f1):
        gains.append(max(0.0, f1 - best) if upto is None or k <= upto else 0.0)
        best = max(best, f1)
    return gains


def turn_rewards(
    actions: Sequence[str],
    queries: Sequence[str | None],
    em: float,
    probe_em: Sequence[float],
    probe_f1: Sequence[float],
    shaping: SearchShaping,
) -> dict[str, list[float]]:
    """The reward terms of each turn of one episode, by name (their sum per turn is the turn's reward).

    `actions`: the decoded policy turns; `queries[t]`: turn t's search query (None: not a search); `em`: the final
    answer's EM; `probe_em[k]`, `probe_f1[k]`: the self-answer after search k (the searches that got documents, in
    order; empty in outcome mode). Terms: em (on the last turn), format, f1_gain, depth, over_search, search."""
    T = len(actions)
    zero = [0.0] * T
    terms = {name: list(zero) for name in ("em", "format", "f1_gain", "depth", "over_search", "search")}
    if T == 0:
        return terms
    terms["em"][-1] = em
    s = shaping
    searches = [t for t in range(T) if queries[t] is not None]
    for i, t in enumerate(searches):
        ok = search_turn_ok(actions[t], [queries[j] for j in searches[:i]], s)
        terms["format"][t] = s.structure_format_score / 8 * (1 if ok else -1)
        terms["search"][t] = -s.search_penalty
    last_ok = queries[-1] is None and answer_turn_ok(actions[-1], s)
    terms["format"][-1] = s.final_format_score if last_ok else -s.final_format_penalty
    if s.mode == "outcome":
        return terms
    if len(probe_em) > len(searches) or len(probe_f1) != len(probe_em):
        raise ValueError(f"{len(probe_em)} probe EMs, {len(probe_f1)} probe F1s for {len(searches)} searches")
    tc = capability_depth(probe_em, s.tc_exclude_last)
    for k, gain in enumerate(f1_gains(probe_f1, tc)):
        terms["f1_gain"][searches[k]] = s.f1_gain_weight * gain
    shaped = [t for t in range(T) if terms["format"][t] >= 0]  # depth shaping skips ill-formed turns
    if em != 1.0:
        for t in shaped:
            terms["depth"][t] = s.encourage_search
    elif T == 1:
        terms["depth"][0] = s.direct_bonus
    elif tc is not None:
        for t in shaped:
            if t <= searches[tc]:
                terms["depth"][t] = s.depth_scale * (s.depth_budget / (tc + 1) - s.depth_step)
    else:
        for t in shaped:
            terms["depth"][t] = s.depth_scale * (s.depth_budget / (T - 1) - s.depth_step)
    if tc is not None:
        for t in range(searches[tc] + 1, T):
            if s.over_search_mode == "overwrite":  # the turn's reward becomes exactly -penalty
                for name in terms:
                    terms[name][t] = 0.0
            terms["over_search"][t] = -s.over_search_penalty
    return terms
