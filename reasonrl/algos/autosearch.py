"""AutoSearch: a search agent rewarded for searching as deep as the question needs and no deeper (docs/autosearch.md).

Sun et al., "AutoSearch: Adaptive Search Depth for Efficient Agentic RAG via RL" (ACL 2026 Findings,
arXiv:2604.17337). Per step, as GRPO (algos/grpo.py) on search episodes, plus:
  1. after every search that got documents, a self-answer probe: the episode's session is forked, the probe prefix
     (`<answer>`) appended and the policy asked to answer now; the fork is thrown away, so probe tokens never enter
     an episode or the loss, and the episode goes on from the unforked session;
  2. from the probes' EM and F1 against the gold answers: the capability-aware depth t_c (Eq. 6: the first search
     after which the agent's own answer was already right), F1-gain process rewards, a depth bonus that prefers
     shallow sufficient depths, and a penalty on every turn after t_c (rewards/search.py: `turn_rewards`);
  3. advantages from the per-turn rewards: `algo.advantage=process` (default; DeepSeekMath's process supervision
     over turns) or an episode-level estimator (grpo, rloo, reinforce_pp) on each episode's summed reward.
The paper trains PPO with a critic (GAE, gamma = lambda = 1); this is the GRPO form of the design brief (§6).
`algo.shaping.mode=outcome` drops probes and depth terms: Search-R1's reward (EM + format), the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from reasonrl.algos.base import register_algorithm
from reasonrl.algos.collect import collect_episodes
from reasonrl.algos.grpo import GRPO, GRPOConfig
from reasonrl.data import Example
from reasonrl.models import decode_completion, model_context
from reasonrl.rewards.qa import exact_match, f1_score
from reasonrl.rewards.search import SearchShaping, capability_depth, self_answer, turn_rewards
from reasonrl.rollout.base import Rollouts, SamplingParams
from reasonrl.rollout.episodes import Episode

PROBE = "probe_answer"  # Turn.info key: the self-answer after that turn's search (None: no room in the context)


@dataclass
class AutoSearchConfig(GRPOConfig):
    name: str = "autosearch"
    advantage: str = "process"  # process (per-turn credit) | grpo | rloo | reinforce_pp (on the episode's sum)
    probe_prefix: str = "<answer>"  # forced at the start of a probe (design brief; the paper re-prompts instead)
    probe_max_tokens: int = 16
    probe_temperature: float = 1.0  # the paper's 1.0; 0 = greedy probes
    shaping: SearchShaping = field(default_factory=SearchShaping)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.probe_max_tokens < 1 or not self.probe_prefix:
            raise ValueError(
                f"algo.probe_max_tokens must be >= 1 and algo.probe_prefix not empty, got {self.probe_max_tokens}, "
                f"{self.probe_prefix!r}"
            )
        if not (math.isfinite(self.probe_temperature) and self.probe_temperature >= 0):
            raise ValueError(f"algo.probe_temperature must be >= 0 (0: greedy), got {self.probe_temperature}")


@register_algorithm(autosearch=AutoSearchConfig)
class AutoSearch(GRPO):
    def __init__(self, config):
        super().__init__(config)
        self.cfg: AutoSearchConfig = config.algo
        if getattr(self.world, "name", None) not in ("kb", "search"):
            raise ValueError(
                f"algo=autosearch plays search episodes: data.train must be world:kb or a QA file with "
                f"data.retriever.corpus/url, got {config.data.train!r}"
            )
        if config.rollout.turns.context != "append":
            raise ValueError("algo=autosearch forks episode sessions for its probes: set rollout.turns.context=append")

    def _collect(self, ctx) -> tuple[Rollouts, dict[str, float]]:
        examples = ctx.stream.next(self.prompts_per_step)
        probe = None
        if self.cfg.shaping.mode == "autosearch":
            probe = self_answer_probe(ctx.tokenizer, model_context(ctx.model), self.cfg)
        rollouts, episodes = collect_episodes(ctx, examples, self.num_generations, self.params, self.make_env, probe)
        with ctx.timer.section("reward"):
            probe_metrics = shape_rollouts(rollouts, episodes, examples, self.cfg.shaping)
        return rollouts, self.round_metrics(examples, rollouts, episodes) | probe_metrics


def self_answer_probe(tokenizer, context: int | None, cfg: AutoSearchConfig) -> Callable:
    """run_episodes' `after_observations`: one self-answer probe per row whose last turn was a search, on a fork of
    the session (the rows themselves are never touched), within the model's `context`; the probe's answer lands in
    that turn's info[PROBE] (None when the probe did not fit)."""
    prefix = tokenizer(cfg.probe_prefix, add_special_tokens=False)["input_ids"]
    greedy = cfg.probe_temperature == 0
    params = SamplingParams(
        cfg.probe_max_tokens,
        1.0 if greedy else cfg.probe_temperature,
        greedy=greedy,
        stop_ids=(tokenizer.eos_token_id,),
    )

    def probe(session, rows: list[int], episodes: list[Episode]) -> None:
        rows = [r for r in rows if "query" in episodes[r].turns[-1].info]
        room = [
            r for r in rows if not context or len(session.tokens(r)) + len(prefix) + params.max_new_tokens <= context
        ]
        for r in set(rows) - set(room):
            episodes[r].turns[-1].info[PROBE] = None
        if not room:
            return
        fork = session.fork(room)
        try:
            fork.append(range(len(room)), [prefix] * len(room))
            samples = fork.generate(range(len(room)), params)
        finally:
            fork.close()
        for r, sample in zip(room, samples):
            episodes[r].turns[-1].info[PROBE] = self_answer(cfg.probe_prefix + decode_completion(tokenizer, sample.ids))

    return probe


def shape_rollouts(
    rollouts: Rollouts, episodes: list[Episode], examples: list[Example], shaping: SearchShaping
) -> dict[str, float]:
    """Replace the rows' rewards by AutoSearch's: each turn's terms (rewards/search.py) plus its env reward on the
    turn's last policy token (`token_rewards`), their sum as the row reward; components as `shaping/<term>`. Returns
    the probe metrics: autosearch/probe_em (mean over probes), tc_found (share of episodes with a t_c), tc_depth
    (mean searches that sufficed, t_c + 1), over_search_tc_rate (correct episodes that searched past t_c + 1)."""
    probe_ems, found, depths, over, correct = [], 0, [], 0, 0
    for i, ep in enumerate(episodes):
        if math.isnan(rollouts.rewards[i]):  # env error: teaches nothing, stays out of every statistic
            continue
        example = examples[ep.group]
        golds = example.meta.get("answers") or [example.answer]
        answers = [t.info[PROBE] for t in ep.turns if PROBE in t.info]
        probe_em = [exact_match(a, golds) if a is not None else 0.0 for a in answers]
        probe_f1 = [f1_score(a, golds) if a is not None else 0.0 for a in answers]
        em = float(ep.score.get("em", 0.0))
        queries = [t.info.get("query") for t in ep.turns]
        terms = turn_rewards([t.action for t in ep.turns], queries, em, probe_em, probe_f1, shaping)
        totals = [sum(v[t] for v in terms.values()) + turn.reward for t, turn in enumerate(ep.turns)]
        row = [0.0] * len(rollouts.token_rewards[i])
        for turn, total in zip(ep.turns, totals):
            if turn.span[1] > turn.span[0]:
                row[turn.span[1] - 1] += total
        rollouts.token_rewards[i] = row
        rollouts.rewards[i] = sum(totals)
        for name, values in terms.items():
            rollouts.reward_components.setdefault(f"shaping/{name}", [math.nan] * len(rollouts))[i] = sum(values)
        probe_ems += probe_em
        tc = capability_depth(probe_em, shaping.tc_exclude_last) if shaping.mode == "autosearch" else None
        searches = sum(q is not None for q in queries)
        if tc is not None:
            found += 1
            depths.append(tc + 1)
        if em == 1.0:
            correct += 1
            over += tc is not None and searches > tc + 1
    if shaping.mode != "autosearch":
        return {}
    return {
        "autosearch/probe_em": sum(probe_ems) / len(probe_ems) if probe_ems else 0.0,
        "autosearch/probes": len(probe_ems) / max(1, len(episodes)),
        "autosearch/tc_found": found / max(1, len(episodes)),
        "autosearch/tc_depth": sum(depths) / len(depths) if depths else math.nan,
        "autosearch/over_search_tc_rate": over / correct if correct else 0.0,
    }
