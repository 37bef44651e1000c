"""Multi-turn episodes: token-exact sequences with loss masks, budgets and stop reasons, env failures that end only
their episode, window mode, Rollouts rows (save/load), zero gradient on env tokens, GRPO collecting episodes; stop ids
in the HF and vLLM-server engines, the stateless session, and record/replay of episodes."""

import json
import math
import re
from collections import Counter
from dataclasses import replace

import pytest
import torch
from fake_vllm import FakeVLLMServer

from reasonrl.algos.common import build_sequences
from reasonrl.algos.losses import policy_loss
from reasonrl.config import TurnLimits
from reasonrl.data import Example
from reasonrl.envs.base import StepResult
from reasonrl.envs.render import ChatRenderer, InlineRenderer, WindowRenderer
from reasonrl.modeling.logprobs import completion_logprobs
from reasonrl.models import arith_tokenizer, encode_prompt, load_model
from reasonrl.rollout.base import Rollouts, SamplingParams
from reasonrl.rollout.episodes import STOP_REASONS, episode_metrics, play_demonstrations, run_episodes, to_rollouts
from reasonrl.rollout.hf import HFEngine
from reasonrl.rollout.replay import RecordingEngine, ReplayEngine
from reasonrl.rollout.session import StatelessSession, open_session
from reasonrl.rollout.vllm_server import VLLMServerEngine
from reasonrl.worlds.guess import GuessEnv, GuessWorld

PAIR = re.compile(r"guess (\d+)(?:<\|im_end\|>)?\W*(?:<\|im_start\|>user\W*|<information>|Observation: )(higher|lower)")


class ScriptEngine:
    """A deterministic engine: the completion is `reply(decoded prompt)` + EOS, cut at max_new_tokens and at the
    first stop id (kept), with log-prob -0.5 per token. Records every prompt it was given."""

    def __init__(self, tok, reply):
        self.tok, self.reply, self.prompts = tok, reply, []

    def sync_weights(self, model):
        pass

    def generate(self, prompt_ids, n, params):
        out = Rollouts([], [], [], [], [])
        stops = {self.tok.eos_token_id, *params.stop_ids}
        for g, p in enumerate(prompt_ids):
            self.prompts.append(list(p))
            for _ in range(n):
                ids = self.tok(self.reply(self.tok.decode(p)), add_special_tokens=False)["input_ids"]
                ids.append(self.tok.eos_token_id)
                end = next(k for k, t in enumerate(ids) if t in stops)
                ids = ids[: min(end + 1, params.max_new_tokens)]
                out.prompt_ids.append(list(p))
                out.completion_ids.append(ids)
                out.logprobs.append([] if params.greedy else [-0.5] * len(ids))
                out.finished.append(ids[-1] in stops)
                out.group.append(g)
        return out


def binary(text: str) -> str:
    """Binary search from the feedback in the text so far."""
    low, high = 1, int(re.search(r"from 1 to (\d+)", text)[1])
    for guess, feedback in PAIR.findall(text):
        low, high = (int(guess) + 1, high) if feedback == "higher" else (low, int(guess) - 1)
    return f"guess {(low + high) // 2}"


@pytest.fixture(scope="module")
def tok():
    return arith_tokenizer()


def play(tok, reply, limits, examples=None, make_env=None, renderer=None, n=2, context=None, greedy=False):
    world = GuessWorld()
    examples = examples or world.eval_set([1, 2, 3])
    if renderer is None:
        renderer = WindowRenderer(tok, limits.history) if limits.context == "window" else ChatRenderer(tok)
    engine = ScriptEngine(tok, reply)
    params = SamplingParams(greedy=greedy)
    episodes = run_episodes(engine, examples, make_env or world.make_env, renderer, tok, params, limits, n, context)
    return episodes, engine, examples


def check_invariants(ep, limits, context=None):
    assert ep.stop_reason in STOP_REASONS
    assert len(ep.tokens) == len(ep.loss_mask) == len(ep.logprobs)
    assert len(ep.turns) <= limits.max_turns
    assert all(t.span[1] - t.span[0] <= limits.max_turn_tokens for t in ep.turns)
    if limits.context == "append":
        assert len(ep.tokens) <= limits.max_episode_tokens
        assert context is None or len(ep.prompt_ids) + len(ep.tokens) <= context
        assert ep.policy_tokens == sum(t.span[1] - t.span[0] for t in ep.turns)
        for t in ep.turns:
            assert set(ep.loss_mask[t.span[0] : t.span[1]]) <= {1} and set(ep.loss_mask[slice(*t.obs_span)]) <= {0}
            assert t.obs_span[1] - t.obs_span[0] <= limits.max_obs_tokens + 16  # body cut + template overhead
    else:
        assert len(ep.tokens) <= limits.max_episode_tokens and all(ep.loss_mask)
        assert context is None or all(len(t.prompt_ids) + t.span[1] - t.span[0] <= context for t in ep.turns)


@pytest.mark.parametrize("renderer", ["chat", "inline"])
def test_binary_search_episodes_are_token_exact(tok, renderer):
    limits = TurnLimits(max_turns=6, max_episode_tokens=400)
    r = ChatRenderer(tok) if renderer == "chat" else InlineRenderer(tok)
    episodes, engine, examples = play(tok, binary, limits, renderer=r)
    world = GuessWorld()
    for i, ep in enumerate(episodes):
        check_invariants(ep, limits)
        example = examples[i // 2]
        assert ep.group == i // 2 and ep.stop_reason == "done" and ep.score["success"] == 1.0
        assert [t.action for t in ep.turns] == world.demonstration(example)
        assert ep.logprobs == [-0.5 if m else 0.0 for m in ep.loss_mask]
        assert ep.loss_mask[-1] == 1  # the final observation ("correct") is never appended
        assert [t.observation for t in ep.turns[:-1]] == [
            "higher" if int(t.action.split()[1]) < example.meta["secret"] else "lower" for t in ep.turns[:-1]
        ]
    # The stateless session re-submitted each episode's exact token list: prompt + every token so far.
    ep = max(episodes, key=lambda e: len(e.turns))
    for t in ep.turns:
        assert ep.prompt_ids + ep.tokens[: t.span[0]] in engine.prompts
    if renderer == "chat":
        text = tok.decode(ep.prompt_ids + ep.tokens)
        assert text.count("<|im_start|>user\n") == len(ep.turns) and text.endswith("<|im_end|>")


def test_window_mode_rows_hold_the_last_turns(tok):
    limits = TurnLimits(max_turns=6, context="window", history=8)
    episodes, _, _ = play(tok, binary, limits)
    assert all(ep.stop_reason == "done" for ep in episodes)
    rows = to_rollouts(episodes, "window", tok)
    assert len(rows) == sum(len(ep.turns) for ep in episodes)
    assert rows.episode == [i for i, ep in enumerate(episodes) for _ in ep.turns]
    assert all(all(m) for m in rows.loss_mask) and rows.rewards == [1.0] * len(rows)
    ep = max(episodes, key=lambda e: len(e.turns))
    assert ep.turns[0].prompt_ids == ep.prompt_ids
    last = tok.decode(ep.turns[-1].prompt_ids)
    assert f"Last {len(ep.turns) - 1} of {len(ep.turns) - 1} steps" in last
    assert all(f"Action: {t.action}\nObservation: {t.observation}" in last for t in ep.turns[:-1])
    short = play(tok, binary, TurnLimits(max_turns=6, context="window", history=1))[0]
    assert max(len(e.turns) for e in short) > 2  # a history of 1 still plays (and may stop early)


LIMIT_CASES = [
    # (reply, limits, context, expected stop reason of every episode with a secret > 1)
    (lambda t: "guess 1", TurnLimits(max_turns=3), None, "max_turns"),
    (lambda t: "I am thinking about numbers " * 5, TurnLimits(max_turn_tokens=5), None, "no_action"),
    (binary, TurnLimits(max_turns=8, max_episode_tokens=20), None, "max_tokens"),
    (binary, TurnLimits(max_turns=8, max_episode_tokens=400), 120, "context"),  # the prompt is 87 tokens
    (binary, TurnLimits(max_turns=8, max_episode_tokens=400, context="window", max_turn_tokens=3), None, "no_action"),
    (lambda t: "guess 1", TurnLimits(max_turns=9, max_episode_tokens=20, context="window"), None, "max_tokens"),
    (lambda t: "guess 1", TurnLimits(max_turns=9, context="window", history=9), 150, "context"),
]


@pytest.mark.parametrize("case", range(len(LIMIT_CASES)))
def test_budgets_are_never_exceeded_and_each_episode_has_its_stop_reason(tok, case):
    reply, limits, context, reason = LIMIT_CASES[case]
    world = GuessWorld()
    examples = [world.to_example(3, s) for s in (2, 9, 16)]
    episodes, _, _ = play(tok, reply, limits, examples, context=context)
    for ep in episodes:
        check_invariants(ep, limits, context)
        assert ep.stop_reason == reason, (ep.stop_reason, [t.action for t in ep.turns])
        assert reason == "done" or len(ep.turns) > 1 or ep.stop_reason == "no_action"  # the limit bit mid-episode


def test_a_turn_cut_at_its_token_limit_without_an_action_is_penalised(tok):
    limits = TurnLimits(max_turn_tokens=5, no_action_penalty=0.5)
    episodes, _, _ = play(tok, lambda t: "I am thinking about numbers " * 5, limits)
    rows = to_rollouts(episodes, "append")
    for ep, rewards in zip(episodes, rows.token_rewards):
        (turn,) = ep.turns
        assert turn.span == (0, 5) and not turn.info["stopped"] and turn.reward == -0.5
        assert rewards == [0.0, 0.0, 0.0, 0.0, -0.5]  # on the last policy token of the turn
    assert rows.finished == [True] * len(rows) and rows.rewards == [0.0] * len(rows)


class Faulty(GuessEnv):
    """Secret 2 raises in step, 3 in reset, 4 answers with a 100k-character observation."""

    def reset(self, example):
        if self.secret == 3:
            raise RuntimeError("reset exploded")
        return super().reset(example)

    def step(self, action):
        if self.secret == 2:
            raise KeyError("step exploded")
        result = super().step(action)
        return StepResult("lower " * 20_000, 0.0, False, {}) if self.secret == 4 and not result.done else result


def test_env_errors_and_huge_observations_end_only_their_episode(tok, caplog):
    limits = TurnLimits(max_turns=4, max_obs_tokens=24)
    world = GuessWorld()
    examples = world.eval_set([1])
    episodes, _, _ = play(tok, binary, limits, examples, make_env=lambda ex: Faulty(ex.meta["secret"], 4))
    by_secret = {ex.meta["secret"]: episodes[2 * i : 2 * i + 2] for i, ex in enumerate(examples)}
    for ep in by_secret[2]:
        assert ep.stop_reason == "env_error" and ep.meta["error"] == "KeyError: 'step exploded'" and len(ep.turns) == 1
    for ep in by_secret[3]:
        assert ep.stop_reason == "env_error" and "reset exploded" in ep.meta["error"] and ep.tokens == []
    for ep in by_secret[4]:
        check_invariants(ep, limits)
        assert ep.turns[0].info["obs_cut"] and len(ep.turns) >= 2
        assert ep.turns[0].obs_span[1] - ep.turns[0].obs_span[0] <= 24 + ChatRenderer(tok).overhead
    assert all(ep.stop_reason == "done" for ep in by_secret[1])
    assert "step exploded" in caplog.text and "reset exploded" in caplog.text
    rows = to_rollouts(episodes, "append")
    assert [math.isnan(r) for r in rows.rewards] == [ep.stop_reason == "env_error" for ep in episodes]
    metrics = episode_metrics(episodes)
    assert metrics["episodes/stop_reason/env_error"] == 0.5


def test_episode_rollouts_save_and_load_token_for_token(tok, tmp_path):
    for mode in ("append", "window"):
        limits = TurnLimits(max_turns=6, context=mode)
        episodes, _, _ = play(tok, binary, limits)
        rows = to_rollouts(episodes, mode, tok)
        rows.save(tmp_path / f"{mode}.jsonl")
        assert Rollouts.load(tmp_path / f"{mode}.jsonl") == rows
        assert [sum(m) for m in rows.loss_mask] != [len(c) for c in rows.completion_ids] or mode == "window"


def test_env_tokens_get_exactly_zero_gradient(tok):
    model, tok = load_model("student", device="cpu")
    limits = TurnLimits(max_turns=6)
    episodes, _, _ = play(tok, binary, limits, GuessWorld().eval_set([2])[:3])
    rows = to_rollouts(episodes, "append")
    seq = build_sequences(rows.prompt_ids, rows.completion_ids, tok.pad_token_id, rows.loss_mask)
    mask = seq["completion_mask"]
    assert float(mask.sum()) == sum(ep.policy_tokens for ep in episodes)
    logp, _ = completion_logprobs(model, seq)
    logp.retain_grad()
    totals = {"num_tokens": float(mask.sum()), "num_seqs": float(len(rows)), "max_completion_length": 48.0}
    advantages = torch.linspace(-1.0, 1.0, len(rows))
    loss, _ = policy_loss(logp, logp.detach(), advantages, mask, loss_type="dapo", totals=totals)
    loss.backward()
    real = torch.zeros_like(mask, dtype=torch.bool)
    for i, c in enumerate(rows.completion_ids):
        real[i, : len(c)] = True
    env = real & (mask == 0)
    assert env.sum() > 0 and (logp.grad[env] == 0).all()
    assert (logp.grad[mask.bool()] != 0).all()


@pytest.mark.parametrize("mode", ["append", "window"])
def test_grpo_collects_episodes_on_a_multi_turn_world(quick_config, mode):
    from reasonrl.algos.grpo import GRPO
    from reasonrl.trainer import Trainer

    cfg = quick_config(
        "data.train=world:guess", "rollout.engine=hf", "rollout.turns.max_turns=3", f"rollout.turns.context={mode}"
    )
    trainer = Trainer(cfg)
    algo = trainer.algo
    assert isinstance(algo, GRPO) and algo.make_env is not None
    batch = algo.gather(trainer.ctx)
    rows = batch.extra["rollouts"]
    policy = sum(sum(m) for m in rows.loss_mask)
    assert batch.totals["num_tokens"] == batch.metrics["num_tokens"] == policy
    assert batch.metrics["completions/mean_length"] == policy / len(rows)
    assert batch.totals["max_completion_length"] == (3 * 48 if mode == "append" else 48)
    assert len(rows.episode) == (len(rows) if mode == "window" else 0)
    assert "turns/mean" in batch.metrics and "episodes/stop_reason/done" in batch.metrics
    assert sum(batch.metrics[f"episodes/stop_reason/{r}"] for r in STOP_REASONS) == pytest.approx(1.0)
    metrics = trainer._eval()
    assert "eval/accuracy" in metrics and "eval/turns" in metrics and "eval/stop_reason/no_action" in metrics


@pytest.fixture(scope="module")
def student():
    return load_model("student", device="cpu")


def prompts_of(tok):
    return [encode_prompt(tok, p) for p in ("Compute 3+4.", "Compute 12+30.", "Compute 25+61.")]


def test_hf_engine_ends_a_completion_at_the_first_stop_id(student):
    model, tok = student
    engine, prompts = HFEngine(model, tok), prompts_of(tok)
    torch.manual_seed(3)
    free = engine.generate(prompts, 2, SamplingParams(max_new_tokens=24))
    stop = Counter(t for c in free.completion_ids for t in c[1:-1]).most_common(1)[0][0]
    torch.manual_seed(3)
    out = engine.generate(prompts, 2, SamplingParams(max_new_tokens=24, stop_ids=(stop,)))
    cut = 0
    for full, ids, logprobs, finished, done in zip(
        free.completion_ids, out.completion_ids, out.logprobs, out.finished, free.finished
    ):
        end = full.index(stop) + 1 if stop in full else len(full)
        assert ids == full[:end] and len(logprobs) == len(ids)  # same samples up to the stop id, kept last
        assert finished == (stop in full or done)
        cut += stop in full
    assert cut > 0


def test_vllm_server_engine_sends_stop_ids_and_stops_there(student):
    model, tok = student
    prompts = prompts_of(tok)
    greedy = SamplingParams(max_new_tokens=24, greedy=True)
    free = HFEngine(model, tok).generate(prompts, 1, greedy)
    stop = Counter(t for c in free.completion_ids for t in c[1:-1]).most_common(1)[0][0]
    params = replace(greedy, stop_ids=(stop,))
    server = FakeVLLMServer(HFEngine(model, tok), tok)
    try:
        out = VLLMServerEngine(server.url, tok).generate(prompts, 1, params)
        assert server.requests[-1]["stop_token_ids"] == [tok.eos_token_id, stop]
    finally:
        server.close()
    assert out.completion_ids == HFEngine(model, tok).generate(prompts, 1, params).completion_ids
    assert any(c[-1] == stop for c in out.completion_ids)


def test_stateless_session_generates_appends_and_forks(student):
    model, tok = student
    engine, prompts = HFEngine(model, tok), prompts_of(tok)[:2]
    session = open_session(engine, prompts, 2)
    assert isinstance(session, StatelessSession)
    greedy = SamplingParams(max_new_tokens=6, greedy=True)
    first = session.generate([0, 3], greedy)
    assert session.tokens(0) == prompts[0] + first[0].ids and session.tokens(3) == prompts[1] + first[1].ids
    assert session.tokens(1) == prompts[0]
    session.append([3], [[5, 6]])
    child = session.fork([3])
    child.append([0], [[7]])
    assert child.tokens(0) == session.tokens(3) + [7] and session.tokens(3)[-2:] == [5, 6]
    again = session.generate([3], greedy)[0]
    direct = engine.generate([prompts[1] + first[1].ids + [5, 6]], 1, greedy).completion_ids[0]
    assert again.ids == direct and again.stopped == (direct[-1] == tok.eos_token_id)

    class Opens:
        def open(self, prompt_ids, n):
            return ("kv", len(prompt_ids), n)

    assert open_session(Opens(), prompts, 3) == ("kv", 2, 3)


class Echo:
    """Answers "ok" to anything; done after three turns."""

    def __init__(self):
        self.turns = 0

    def reset(self, example):
        return str(example.prompt)

    def step(self, action):
        self.turns += 1
        return StepResult("ok", float(self.turns), self.turns == 3, {})

    def score(self):
        return {"reward": float(self.turns)}


def test_recorded_episodes_replay_token_for_token(student, tmp_path):
    model, tok = student
    examples = [Example("Compute 3+4.", "7"), Example("Compute 12+30.", "42")]
    limits = TurnLimits(max_turns=3, max_turn_tokens=12)
    params = SamplingParams(max_new_tokens=12)

    def run(engine):
        return run_episodes(engine, examples, lambda ex: Echo(), ChatRenderer(tok), tok, params, limits, 2)

    torch.manual_seed(0)
    recorded = run(RecordingEngine(HFEngine(model, tok), tmp_path))
    assert len(list(tmp_path.glob("call_*.jsonl"))) == 3  # one call per turn
    torch.manual_seed(1)  # replay does not sample: a different seed changes nothing
    replayed = run(ReplayEngine(tmp_path, live=HFEngine(model, tok)))
    assert replayed == recorded
    assert all(len(ep.turns) == 3 and ep.stop_reason == "done" and ep.env_tokens > 0 for ep in recorded)
    assert to_rollouts(replayed, "append").token_rewards == to_rollouts(recorded, "append").token_rewards


def test_demonstrations_play_through_env_and_renderer_into_episodes(tok):
    world = GuessWorld()
    examples = world.eval_set([1, 2, 3])
    limits = TurnLimits(max_turns=6, max_episode_tokens=400)
    episodes = play_demonstrations(world, examples, ChatRenderer(tok), tok, limits)
    scripted = play(tok, binary, limits, examples, n=1, greedy=True)[0]
    for ep, same in zip(episodes, scripted):
        assert ep.stop_reason == "done" and ep.score["success"] == 1.0
        assert (ep.prompt_ids, ep.tokens, ep.loss_mask) == (same.prompt_ids, same.tokens, same.loss_mask)
    window = TurnLimits(max_turns=6, context="window", history=6)  # the scripted policy reads every pair
    steps = play_demonstrations(world, examples, WindowRenderer(tok, window.history), tok, window)
    for group, (ep, same) in enumerate(zip(steps, play(tok, binary, window, examples, n=1, greedy=True)[0])):
        assert ep.stop_reason == "done" and ep.group == group and ep.score["success"] == 1.0
        assert [t.prompt_ids for t in ep.turns] == [t.prompt_ids for t in same.turns] and ep.tokens == same.tokens


def test_sft_on_a_multi_turn_world_trains_policy_tokens_only(quick_config):
    from reasonrl.trainer import Trainer

    trainer = Trainer(quick_config("algo.name=sft", "data.train=world:guess", "rollout.turns.max_turns=6"))
    batch = trainer.algo.gather(trainer.ctx)
    assert batch.metrics["episodes/stop_reason/done"] == 1.0
    mask = batch.tensors["completion_mask"]
    assert (
        batch.totals["num_tokens"]
        == float(mask.sum())
        < float((batch.tensors["attention_mask"][:, -mask.shape[1] :]).sum())
    )
    final = trainer.train()
    assert 0.0 <= final["eval/accuracy"] <= 1.0 and final["eval/turns"] >= 1.0


def test_reasonrl_eval_plays_greedy_episodes_on_a_multi_turn_world(capsys):
    from reasonrl.cli import main

    assert main(["eval", "model.path=student", "data.train=world:guess", "data.levels=[1,2]", "data.eval_n=3"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == 6 and 0.0 <= summary["accuracy"] <= 1.0 and summary["turns"] >= 1.0
    assert sum(summary[f"stop_reason/{r}"] for r in STOP_REASONS) == pytest.approx(1.0)
    assert "guesses" in summary and "accuracy/level_2" in summary


def test_a_recorded_multi_turn_run_replays_to_the_same_metrics(quick_config, tmp_path):
    from reasonrl.trainer import Trainer

    base = ["data.train=world:guess", "train.steps=2", "rollout.turns.max_turns=3", "rollout.turns.max_turn_tokens=8"]
    Trainer(quick_config(*base, "rollout.save_rollouts=true"), run_dir=tmp_path / "rec").train()
    replay = quick_config(*base, "rollout.engine=replay", f"rollout.replay_dir={tmp_path / 'rec' / 'rollouts'}")
    torch.manual_seed(123)  # nothing is sampled in a replay
    Trainer(replay, run_dir=tmp_path / "rep").train()
    rows = {}
    for name in ("rec", "rep"):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        rows[name] = {r["step"]: r for r in map(json.loads, lines) if "loss" in r}
    for step in (1, 2):
        for key in ("loss", "reward", "num_tokens", "turns/mean", "env_tokens/mean"):
            assert rows["rec"][step][key] == pytest.approx(rows["rep"][step][key], rel=1e-6), key


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_metrics_on_the_guess_world(nano_dir, tmp_path):
    from test_reliability import comparable, finish, launch, training_step_logged, wait_until

    from reasonrl.config import load_config, main_job_config
    from reasonrl.tracking import read_metrics
    from reasonrl.trainer import Trainer

    overrides = [
        f"model.path={nano_dir}",
        "data.train=world:guess",
        "data.eval_n=2",
        "rollout.num_generations=4",
        "rollout.turns.max_turns=3",
        "rollout.turns.max_turn_tokens=8",
        "train.prompts_per_step=2",
        "train.micro_batch_size=16",
        "train.steps=6",
        "train.save_every=1",
        "optim.lr=1e-3",
        "train.progress=false",
    ]
    # `reasonrl train` without --config starts from the main job's settings: the reference run does too.
    Trainer(load_config(None, overrides, base=main_job_config()), run_dir=tmp_path / "whole").train()
    run, log = tmp_path / "run", tmp_path / "output.log"
    proc = launch(["train", "--output-dir", str(run), *overrides], log)
    assert wait_until(proc, training_step_logged(run, 3, None), log), log.read_text()[-3000:]
    proc.kill()
    proc.wait()
    proc = launch(["train", "--resume", str(run)], log)
    assert finish(proc, log) == 0, log.read_text()[-3000:]
    records = read_metrics(run)
    assert [r["step"] for r in records if "reward" in r] == [1, 2, 3, 4, 5, 6]
    assert comparable(records) == comparable(read_metrics(tmp_path / "whole"))
    assert any("turns/mean" in r for r in records)
