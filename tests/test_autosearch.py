"""AutoSearch: every reward term on hand-made episodes against hand-computed values, t_c on hand-made probe outcomes,
the per-turn estimator on shaped rewards by hand, probes that leave episodes and gradients exactly as they were,
search metrics during training, and config errors."""

import json

import pytest
import torch

from reasonrl.algos.autosearch import PROBE, AutoSearch, AutoSearchConfig, self_answer_probe, shape_rollouts
from reasonrl.algos.batch import rollout_advantages
from reasonrl.algos.common import build_sequences
from reasonrl.algos.losses import policy_loss
from reasonrl.config import ConfigError, TurnLimits, load_config
from reasonrl.data import Example
from reasonrl.envs.base import StepResult
from reasonrl.envs.render import ChatRenderer
from reasonrl.modeling.logprobs import completion_logprobs
from reasonrl.models import load_model
from reasonrl.rewards.search import (
    SearchShaping,
    capability_depth,
    f1_gains,
    query_cosine,
    self_answer,
    turn_rewards,
)
from reasonrl.rollout.base import SamplingParams
from reasonrl.rollout.episodes import Episode, Turn, run_episodes, to_rollouts
from reasonrl.rollout.fast import FastEngine

S = "<search>{}</search>"
A = "<answer>{}</answer>"


def totals(terms: dict[str, list[float]]) -> list[float]:
    return [sum(v[t] for v in terms.values()) for t in range(len(terms["em"]))]


def test_format_terms_and_the_outcome_by_hand():
    shaping = SearchShaping(mode="outcome")
    actions = [S.format("Bamek Parik"), S.format(" bamek  parik "), "junk " + S.format("Cavel"), A.format("Cavel")]
    terms = turn_rewards(actions, ["Bamek Parik", "bamek  parik", "Cavel", None], 1.0, [], [], shaping)
    # s/8 = 0.025: a new well-formed search +, a repeat -, text outside the tags -; f = 0.1 on a clean answer
    assert terms["format"] == pytest.approx([0.025, -0.025, -0.025, 0.1])
    assert terms["em"] == [0.0, 0.0, 0.0, 1.0] and terms["depth"] == [0.0] * 4 and terms["f1_gain"] == [0.0] * 4
    # an episode that never answers: its last turn gets -0.5 instead of its search format
    terms = turn_rewards([S.format("a"), S.format("b")], ["a", "b"], 0.0, [], [], shaping)
    assert terms["format"] == pytest.approx([0.025, -0.5])
    # the uniform per-search penalty of the ablation, and the paper's <think> requirement
    uniform = SearchShaping(mode="outcome", search_penalty=0.05)
    assert turn_rewards([S.format("a"), A.format("x")], ["a", None], 1.0, [], [], uniform)["search"] == [-0.05, 0.0]
    think = SearchShaping(mode="outcome", require_think=True)
    with_think = ["<think>find a</think>" + S.format("a"), "<think>ok</think>" + A.format("x")]
    assert turn_rewards(with_think, ["a", None], 1.0, [], [], think)["format"] == pytest.approx([0.025, 0.1])
    assert turn_rewards([S.format("a"), A.format("x")], ["a", None], 1.0, [], [], think)["format"] == pytest.approx(
        [-0.025, -0.5]
    )


def test_query_cosine_and_self_answers_by_hand():
    assert query_cosine("Bamek Parik", "parik BAMEK") == pytest.approx(1.0)
    assert query_cosine("Bamek Parik", "Bamek Tosar") == pytest.approx(0.5)  # 1 / (sqrt 2 * sqrt 2)
    assert query_cosine("Bamek Parik", "Parik Bamek Cavel") == pytest.approx(2 / 6**0.5)  # 0.816 > 0.8: a repeat
    assert query_cosine("", "x") == 0.0
    assert self_answer("<answer> Cavel </answer> more") == "Cavel"
    assert self_answer("<answer><answer>Cavel</answer>") == "Cavel"  # the model repeated the forced tag
    assert self_answer("<answer>Cav") == "Cav" and self_answer("Cavel") is None


def test_capability_depth_on_hand_made_probe_outcomes():
    assert capability_depth([0.0, 1.0, 1.0]) == 1
    assert capability_depth([1.0, 0.0, 0.0]) == 0
    assert capability_depth([0.0, 0.0, 1.0]) is None  # the probe after the last search never sets t_c
    assert capability_depth([0.0, 0.0, 1.0], exclude_last=False) == 2
    assert capability_depth([1.0]) is None and capability_depth([1.0], exclude_last=False) == 0
    assert capability_depth([]) is None
    assert f1_gains([0.5, 0.4, 1.0]) == pytest.approx([0.5, 0.0, 0.5])
    assert f1_gains([0.5, 0.4, 1.0], upto=0) == pytest.approx([0.5, 0.0, 0.0])


def three_searches(em: float):
    actions = [S.format("Bamek Parik"), S.format("Gavoren"), S.format("Cavel"), A.format("Aldera")]
    return actions, ["Bamek Parik", "Gavoren", "Cavel", None], em


def test_an_episode_that_searched_past_t_c_by_hand():
    actions, queries, em = three_searches(1.0)
    terms = turn_rewards(actions, queries, em, [0.0, 1.0, 1.0], [0.5, 1.0, 1.0], SearchShaping())
    # t_c = search 1 (0-based): F1 gains 0.5, 0.5 up to it; depth 0.5 * (0.4 / 2 - 0.05) = 0.075 on turns 0-1;
    # -0.05 on every turn after t_c (added: the answer keeps its EM)
    assert terms["f1_gain"] == pytest.approx([0.5, 0.5, 0.0, 0.0])
    assert terms["depth"] == pytest.approx([0.075, 0.075, 0.0, 0.0])
    assert terms["over_search"] == pytest.approx([0.0, 0.0, -0.05, -0.05])
    assert totals(terms) == pytest.approx([0.6, 0.6, -0.025, 1.05])
    overwrite = turn_rewards(
        actions, queries, em, [0.0, 1.0, 1.0], [0.5, 1.0, 1.0], SearchShaping(over_search_mode="overwrite")
    )
    assert totals(overwrite) == pytest.approx([0.6, 0.6, -0.05, -0.05])  # the authors' code: the EM is lost too


def test_depth_bonus_without_t_c_when_wrong_and_when_answered_directly():
    actions, queries, _ = three_searches(1.0)
    terms = turn_rewards(actions, queries, 1.0, [0.0, 0.0, 1.0], [0.0, 0.5, 1.0], SearchShaping())
    # right, no t_c: 0.5 * (0.4 / (T - 1) - 0.05) = 0.5 * (0.4 / 3 - 0.05) on all four turns; gains 0, 0.5, 0.5
    assert terms["depth"] == pytest.approx([0.5 * (0.4 / 3 - 0.05)] * 4)
    assert terms["f1_gain"] == pytest.approx([0.0, 0.5, 0.5, 0.0]) and terms["over_search"] == [0.0] * 4
    # wrong: +0.0125 on every turn whose format is not negative (the repeated search is left out)
    repeat = [S.format("Bamek Parik"), S.format("Bamek Parik"), A.format("Orvane")]
    terms = turn_rewards(repeat, ["Bamek Parik", "Bamek Parik", None], 0.0, [0.0, 1.0], [0.0, 1.0], SearchShaping())
    assert terms["depth"] == pytest.approx([0.0125, 0.0, 0.0125])
    assert terms["over_search"] == [0.0] * 3  # the only right probe followed the last search: no t_c
    # right without a search: +0.2 on the answer turn: 1 + 0.1 + 0.2
    assert totals(turn_rewards([A.format("Orvane")], [None], 1.0, [], [], SearchShaping())) == pytest.approx([1.3])


def hand_episode(group: int, turn_lengths: list[tuple[int, int]], actions: list[str], probes: list[str]) -> Episode:
    """An episode of turns with (policy tokens, env tokens) lengths; probe answers on the search turns."""
    tokens, mask, turns, position = [], [], [], 0
    for (policy, env), action in zip(turn_lengths, actions):
        turn = Turn((position, position + policy), (position + policy, position + policy + env), action, "")
        if action.startswith("<search>"):
            turn.info["query"] = action[8:-9]
        tokens += [5] * (policy + env)
        mask += [1] * policy + [0] * env
        position += policy + env
        turns.append(turn)
    for turn, answer in zip(turns, probes):
        turn.info[PROBE] = answer
    em = float(actions[-1] == A.format("Aldera"))
    return Episode([1, 2], tokens, mask, [], turns, group, {"reward": em, "em": em}, "done")


def test_the_per_turn_estimator_on_shaped_rewards_by_hand():
    examples = [Example(prompt="q", answer="Aldera", meta={"answers": ["Aldera"]})]
    # episode 0: search, search, right answer; both probes wrong -> T=3, no t_c; episode 1: right answer at once
    one = hand_episode(0, [(2, 3), (2, 3), (1, 0)], [S.format("a b"), S.format("c"), A.format("Aldera")], ["x", "y"])
    two = hand_episode(0, [(3, 0)], [A.format("Aldera")], [])
    rows = to_rollouts([one, two], "append")
    metrics = shape_rollouts(rows, [one, two], examples, SearchShaping())
    d = 0.5 * (0.4 / 2 - 0.05)  # 0.075
    r1 = [0.025 + d, 0.025 + d, 1 + 0.1 + d]
    assert rows.token_rewards[0] == pytest.approx([0, r1[0], 0, 0, 0, 0, r1[1], 0, 0, 0, r1[2]])
    assert rows.token_rewards[1] == pytest.approx([0, 0, 1.3])
    assert rows.rewards == pytest.approx([sum(r1), 1.3])
    assert metrics["autosearch/tc_found"] == 0.0 and metrics["autosearch/probes"] == 1.0
    # process supervision: the group's four turn rewards normalised together, a token's advantage = the sum over its
    # episode's turns from its own on
    values = torch.tensor(r1 + [1.3], dtype=torch.float64)
    z = ((values - values.mean()) / (values.std() + 1e-4)).tolist()
    adv = rollout_advantages(rows, "process", "group")
    want0 = [z[0] + z[1] + z[2]] * 2 + [0] * 3 + [z[1] + z[2]] * 2 + [0] * 3 + [z[2]]
    assert adv[0, :11].tolist() == pytest.approx(want0, abs=1e-5)
    assert adv[1, :3].tolist() == pytest.approx([z[3]] * 3, abs=1e-5)
    # the episode-level option: GRPO on each episode's summed reward
    episode = rollout_advantages(rows, "grpo", "group")
    sums = torch.tensor([sum(r1), 1.3], dtype=torch.float64)
    assert episode.tolist() == pytest.approx(((sums - sums.mean()) / (sums.std() + 1e-4)).tolist(), abs=1e-5)


class EchoSearchEnv:
    """Every turn is a search of its own text, answered with a fixed document; three turns."""

    def reset(self, example):
        return str(example.prompt)

    def step(self, action: str) -> StepResult:
        return StepResult("Bamek Parik: birthplace Cavel.", info={"query": action})

    def score(self):
        return {"reward": 0.0, "em": 0.0}


def test_probe_tokens_have_exactly_zero_gradient():
    model, tok = load_model("student", device="cpu")
    examples = [Example(prompt=p, answer="Cavel") for p in ("Where was Bamek Parik born?", "Compute 3+4.")]
    limits = TurnLimits(max_turns=3, max_turn_tokens=8)
    cfg = AutoSearchConfig(probe_max_tokens=6, probe_temperature=1.0)
    played = []
    for probe in (None, self_answer_probe(tok, 512, cfg)):
        torch.manual_seed(0)
        engine = FastEngine(model, tok)
        params = SamplingParams(max_new_tokens=8, greedy=True)
        played.append(
            run_episodes(
                engine, examples, lambda ex: EchoSearchEnv(), ChatRenderer(tok), tok, params, limits, 2, 512, probe
            )
        )
    plain, probed = played
    assert [ep.tokens for ep in plain] == [ep.tokens for ep in probed]  # the episodes go on from the unforked session
    assert all(PROBE in t.info for ep in probed for t in ep.turns[:-1]) and not any(
        PROBE in t.info for ep in plain for t in ep.turns
    )
    grads = []
    for episodes in played:
        rows = to_rollouts(episodes, "append")
        seq = build_sequences(rows.prompt_ids, rows.completion_ids, tok.pad_token_id, rows.loss_mask)
        model.zero_grad()
        logp, _ = completion_logprobs(model, seq)
        mask = seq["completion_mask"]
        totals_ = {"num_tokens": float(mask.sum()), "num_seqs": float(len(rows)), "max_completion_length": 24.0}
        loss, _ = policy_loss(
            logp, logp.detach(), torch.linspace(-1, 1, len(rows)), mask, loss_type="dapo", totals=totals_
        )
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0 and torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("options", [[], ["algo.shaping.mode=outcome", "algo.advantage=grpo"]])
def test_autosearch_gathers_shaped_episodes_and_logs_search_metrics(nano_dir, tmp_path, options):
    from reasonrl.trainer import Trainer

    cfg = load_config(
        None,
        [
            f"model.path={nano_dir}",
            "algo.name=autosearch",
            "data.train=world:kb",
            "data.levels=[0,1]",
            "data.eval_n=2",
            "rollout.num_generations=2",
            "rollout.turns.max_turns=2",
            "rollout.turns.max_turn_tokens=8",
            "algo.probe_max_tokens=4",
            "train.prompts_per_step=2",
            "train.progress=false",
            f"train.output_dir={tmp_path}",
            *options,
        ],
    )
    trainer = Trainer(cfg)
    assert isinstance(trainer.algo, AutoSearch)
    batch = trainer.algo.gather(trainer.ctx)
    rows = batch.extra["rollouts"]
    outcome = bool(options)  # Search-R1's reward, no probes, one advantage per episode
    assert batch.tensors["advantages"].dim() == (1 if outcome else 2)  # the process estimator is the default
    assert "rewards/shaping/format/mean" in batch.metrics
    assert ("autosearch/probe_em" in batch.metrics) != outcome
    assert rows.reward_components["shaping/f1_gain"] == [0.0] * len(rows) or not outcome
    for key in ("episodes/searches", "episodes/over_search_rate", "episodes/duplicate_rate", "episodes/excess"):
        assert key in batch.metrics, key
    assert all(r == pytest.approx(sum(t)) for r, t in zip(rows.rewards, rows.token_rewards))


@pytest.mark.parametrize(
    "override, message",
    [
        ("algo.shaping.mode=ppo", "algo.shaping.mode"),
        ("algo.shaping.over_search_mode=replace", "over_search_mode"),
        ("algo.shaping.depth_budget=-1", "finite and >= 0"),
        ("algo.shaping.duplicate_threshold=1.5", "duplicate_threshold"),
        ("algo.shaping.depth_bonus=1", "unknown config key"),
        ("algo.probe_max_tokens=0", "probe_max_tokens"),
        ("algo.probe_temperature=-1", "probe_temperature"),
    ],
)
def test_bad_autosearch_keys_and_values_are_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["algo.name=autosearch", "data.train=world:kb", override])


def test_autosearch_refuses_worlds_without_search_and_window_mode():
    with pytest.raises(ValueError, match="plays search episodes"):
        AutoSearch(load_config(None, ["algo.name=autosearch", "data.train=world:guess"]))
    with pytest.raises(ValueError, match="context=append"):
        AutoSearch(load_config(None, ["algo.name=autosearch", "data.train=world:kb", "rollout.turns.context=window"]))
    with pytest.raises(ValueError, match=r"algo\.advantage"):
        AutoSearch(load_config(None, ["algo.name=autosearch", "data.train=world:kb", "algo.advantage=ppo"]))


def test_reasonrl_plot_draws_searches_per_episode_and_the_over_search_rate(tmp_path):
    from reasonrl.plot import plot_run
    from reasonrl.tracking import METRICS_FILE

    rows = [
        {
            "step": s,
            "reward": 0.5,
            "episodes/searches": 2.0 - s / 10,
            "episodes/searches/d_min_1": 1.5,
            "episodes/over_search_rate": 0.4 - s / 50,
            "autosearch/over_search_tc_rate": 0.3,
        }
        for s in range(1, 6)
    ]
    rows.append({"step": 5, "eval/searches": 1.2, "eval/searches/d_min_3": 2.5, "eval/under_search_rate": 0.1})
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    names = [p.name for p in plot_run(tmp_path)]
    assert names == ["reward.png", "searches.png", "over_search.png", "curves.png"]
