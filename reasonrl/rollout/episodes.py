"""Multi-turn episodes: the policy acts, an environment answers, token-exact, with budgets and one stop reason.

Append mode: one session row per episode; the policy's turns (loss mask 1) and the rendered observations (loss mask 0)
grow one token sequence, never decoded and re-encoded. Window mode: each step is a fresh prompt rendered from the
task and the last turns (WindowRenderer), one `engine.generate` per step for all active episodes; each step becomes
its own row. Both end as ordinary `Rollouts` rows (`to_rollouts`), so losses, micro-batching and record/replay work.

Budgets (config.TurnLimits) are checked before every generation, against the model's context too. An episode ends
with exactly one stop reason:
  done        the environment said so
  max_turns   max_turns policy turns taken (the last observation is dropped: nothing would read it)
  max_tokens  max_episode_tokens left no room for another turn, or for the next observation (dropped, not cut),
              or cut a turn short (a turn cut by the budget is kept as sampled but never sent to the env)
  context     the model's context left no room (checked like max_tokens)
  no_action   the env marked the turn `info["no_action"]` (no parsable action); TurnLimits.no_action_penalty applies
  env_error   make_env, reset, step or score raised: only that episode ends (logged); its reward is NaN, so GRPO
              drops its rows (a broken environment teaches nothing)
Observations are cut in the middle to min(max_obs_tokens, room left) tokens (envs/render.py).
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from reasonrl.config import TurnLimits
from reasonrl.data import Example
from reasonrl.envs.base import Env, StepResult
from reasonrl.models import decode_completion
from reasonrl.rollout.base import RolloutEngine, Rollouts, SamplingParams
from reasonrl.rollout.session import TurnSample, open_session

log = logging.getLogger(__name__)
STOP_REASONS = ("done", "max_turns", "max_tokens", "context", "no_action", "env_error")


@dataclass
class Turn:
    span: tuple[int, int]  # policy tokens [start, end) in Episode.tokens
    obs_span: tuple[int, int]  # env tokens that followed in Episode.tokens (append mode; empty in window mode)
    action: str  # the decoded policy turn, as the env received it
    observation: str  # the env's answer (cut as the model saw it); "" when dropped
    reward: float = 0.0  # env reward (+ no-action penalty); algorithms may add shaping before building the batch
    info: dict[str, Any] = field(default_factory=dict)
    prompt_ids: list[int] | None = None  # window mode: the rendered step prompt


@dataclass
class Episode:
    prompt_ids: list[int]
    tokens: list[int]  # append mode: every token after the prompt as the model saw it; window: the policy turns
    loss_mask: list[int]  # len(tokens); 1 on sampled tokens only
    logprobs: list[float]  # sampling log-probs, 0.0 on env tokens; empty for greedy episodes
    turns: list[Turn]
    group: int  # index of the example it plays
    score: dict[str, float] = field(default_factory=dict)  # env.score()
    stop_reason: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def policy_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def env_tokens(self) -> int:
        return len(self.loss_mask) - sum(self.loss_mask)


class _Driver:
    """State shared by both modes: the envs, their episodes, and how an episode ends."""

    def __init__(self, engine, examples, make_env, n, renderer, tokenizer, params, limits, context):
        self.engine, self.renderer, self.tokenizer, self.limits = engine, renderer, tokenizer, limits
        self.context = context
        stops = tuple(sorted(set(params.stop_ids) | set(renderer.stop_ids)))
        self.params = replace(params, stop_ids=stops)
        self.greedy = params.greedy
        self.examples = [ex for ex in examples for _ in range(n)]
        self.envs: list[Env | None] = []
        self.first: list[str | None] = []
        self.episodes: list[Episode] = []
        for row, example in enumerate(self.examples):
            ep = Episode([], [], [], [], [], row // n, meta={"answer": example.answer, "level": example.level})
            self.episodes.append(ep)
            env = first = None
            try:
                env = make_env(example)
                first = env.reset(example)
            except Exception as e:  # any env failure ends only this episode
                self._end(row, "env_error", e)
            self.envs.append(env)
            self.first.append(first)
        self.active = [r for r, ep in enumerate(self.episodes) if not ep.stop_reason]

    def _end(self, row: int, reason: str, error: Exception | None = None) -> None:
        ep = self.episodes[row]
        ep.stop_reason = reason
        if error is not None:
            ep.meta["error"] = f"{type(error).__name__}: {error}"
            log.warning("episode %d (example %d) ended with env_error: %s", row, ep.group, ep.meta["error"])

    def room(self, row: int) -> tuple[int, str]:
        """Append mode: tokens the episode may still add, and the budget that binds (max_tokens or context)."""
        ep = self.episodes[row]
        budget = self.limits.max_episode_tokens - len(ep.tokens)
        ctx = self.context - len(ep.prompt_ids) - len(ep.tokens) if self.context else budget
        return (budget, "max_tokens") if budget <= ctx else (ctx, "context")

    def sample(self, rows: list[int], caps: dict[int, int], generate) -> dict[int, TurnSample]:
        """One turn for each row, one call per distinct token cap (usually one: max_turn_tokens)."""
        by_cap: dict[int, list[int]] = defaultdict(list)
        for r in rows:
            by_cap[caps[r]].append(r)
        out = {}
        for cap, chunk in sorted(by_cap.items()):
            for r, s in zip(chunk, generate(chunk, replace(self.params, max_new_tokens=cap))):
                out[r] = s
        return out

    def take_turn(
        self, row: int, sample: TurnSample, prompt_ids: list[int] | None, cut_by: str | None
    ) -> tuple[Turn, StepResult | None]:
        """Record the policy's turn and step the env; ends the episode on done/no_action/env_error/max_turns. A turn
        that the episode budget or the context (`cut_by`) cut short ends the episode there, unseen by the env."""
        ep = self.episodes[row]
        start = len(ep.tokens)
        ep.tokens += sample.ids
        ep.loss_mask += [1] * len(sample.ids)
        ep.logprobs += [] if self.greedy else list(sample.logprobs)
        action = decode_completion(self.tokenizer, sample.ids)
        turn = Turn((start, len(ep.tokens)), (len(ep.tokens), len(ep.tokens)), action, "", prompt_ids=prompt_ids)
        turn.info["stopped"] = sample.stopped
        ep.turns.append(turn)
        if cut_by is not None and not sample.stopped:
            self._end(row, cut_by)
            return turn, None
        try:
            result = self.envs[row].step(action)
        except Exception as e:  # ends only this episode
            self._end(row, "env_error", e)
            return turn, None
        turn.reward, turn.info = float(result.reward), {**result.info, "stopped": sample.stopped}
        if result.info.get("no_action"):
            turn.reward -= self.limits.no_action_penalty
            self._end(row, "no_action")
        elif result.done:
            self._end(row, "done")
        elif len(ep.turns) >= self.limits.max_turns:
            self._end(row, "max_turns")
        return turn, result

    def finish(self) -> list[Episode]:
        for row, ep in enumerate(self.episodes):
            if ep.stop_reason == "env_error":
                continue
            try:
                ep.score = {k: float(v) for k, v in self.envs[row].score().items()}
            except Exception as e:  # ends only this episode
                self._end(row, "env_error", e)
        return self.episodes


def run_episodes(
    engine: RolloutEngine,
    examples: Sequence[Example],
    make_env: Callable[[Example], Env],
    renderer,
    tokenizer,
    params: SamplingParams,
    limits: TurnLimits,
    n: int = 1,
    context: int | None = None,
    after_observations: Callable[[Any, list[int], list[Episode]], None] | None = None,
) -> list[Episode]:
    """Play `n` episodes per example (episode i*n+j: sample j of example i, group i) to their stop reasons.

    `renderer` is an append-mode renderer (Inline/Chat) when limits.context == "append", a WindowRenderer otherwise;
    `context` is the model's context length (None: unchecked). Append mode only: `after_observations(session, rows,
    episodes)` runs after each round's observations were appended to session rows `rows` (row r plays episodes[r]);
    it may fork the session for probes (AutoSearch's self-answers) but must not change the rows themselves."""
    d = _Driver(engine, examples, make_env, n, renderer, tokenizer, params, limits, context)
    if limits.context == "window":
        return _run_window(d)
    prompts: list[list[int]] = []
    for i in range(len(examples)):
        firsts = [f for f in d.first[i * n : (i + 1) * n] if f is not None]
        if len(set(firsts)) > 1:
            raise ValueError(
                f"make_env(example {i}).reset gave different first observations: envs must be "
                f"deterministic given the example"
            )
        prompts.append(renderer.prompt(firsts[0] if firsts else str(examples[i].prompt)))
    for r, ep in enumerate(d.episodes):
        ep.prompt_ids = list(prompts[r // n])
    session = open_session(engine, prompts, n)
    try:
        while d.active:
            caps, cut_by = {}, {}
            for r in d.active:
                room, binding = d.room(r)
                if room < 1:
                    d._end(r, binding)
                else:
                    caps[r] = min(limits.max_turn_tokens, room)
                    cut_by[r] = binding if room < limits.max_turn_tokens else None
            rows = [r for r in d.active if r in caps]
            samples = d.sample(rows, caps, session.generate)
            appends: dict[int, list[int]] = {}
            for r in rows:
                turn, result = d.take_turn(r, samples[r], None, cut_by[r])
                if d.episodes[r].stop_reason:
                    continue
                ep = d.episodes[r]
                room, binding = d.room(r)
                limit = min(limits.max_obs_tokens, room - 1 - renderer.overhead)  # leave one token to act
                if limit < 1:  # the observation would not fit with a next turn: drop it, end here
                    d._end(r, binding)
                    continue
                ids, cut = renderer.observation(result.observation, limit)
                turn.observation = _obs_text(tokenizer, result.observation, ids, cut)
                turn.info["obs_cut"] = cut
                ep.tokens += ids
                ep.loss_mask += [0] * len(ids)
                ep.logprobs += [] if d.greedy else [0.0] * len(ids)
                turn.obs_span = (turn.span[1], len(ep.tokens))
                appends[r] = ids
            session.append(list(appends), list(appends.values()))
            if after_observations is not None and appends:
                after_observations(session, list(appends), d.episodes)
            d.active = [r for r in d.active if not d.episodes[r].stop_reason]
    finally:
        session.close()
    return d.finish()


def _obs_text(tokenizer, obs: str | list[int], ids: list[int], cut: bool) -> str:
    if isinstance(obs, str) and not cut:
        return obs
    return tokenizer.decode(ids, skip_special_tokens=True)


def _run_window(d: _Driver) -> list[Episode]:
    """Window mode: per step, one engine.generate over every active episode's freshly rendered step prompt."""
    history: list[list[tuple[str, str]]] = [[] for _ in d.episodes]
    while d.active:
        caps, prompts, cut_by = {}, {}, {}
        for r in d.active:
            ep = d.episodes[r]
            prompts[r] = d.renderer.window(d.first[r], history[r], getattr(d.envs[r], "task", None))
            if not ep.turns:
                ep.prompt_ids = list(prompts[r])
            budget = d.limits.max_episode_tokens - len(ep.tokens)  # policy tokens in window mode
            ctx = d.context - len(prompts[r]) if d.context else budget
            if min(budget, ctx) < 1:
                d._end(r, "max_tokens" if budget <= ctx else "context")
            else:
                caps[r] = min(d.limits.max_turn_tokens, budget, ctx)
                if caps[r] < d.limits.max_turn_tokens:
                    cut_by[r] = "max_tokens" if budget <= ctx else "context"
        rows = [r for r in d.active if r in caps]

        def generate(chunk: list[int], params: SamplingParams, prompts=prompts) -> list[TurnSample]:
            out = d.engine.generate([prompts[r] for r in chunk], 1, params)
            return [TurnSample(c, lp, f) for c, lp, f in zip(out.completion_ids, out.logprobs, out.finished)]

        for r, sample in d.sample(rows, caps, generate).items():
            turn, result = d.take_turn(r, sample, prompts[r], cut_by.get(r))
            if result is not None:
                turn.observation, turn.info["obs_cut"] = d.renderer.cut(result.observation, d.limits.max_obs_tokens)
                history[r].append((turn.action, turn.observation))
        d.active = [r for r in d.active if not d.episodes[r].stop_reason]
    return d.finish()


def episode_reward(ep: Episode) -> float:
    """The episode's reward for the algorithm: env.score()["reward"]; NaN for env errors (they teach nothing)."""
    return math.nan if ep.stop_reason == "env_error" else float(ep.score.get("reward", 0.0))


def to_rollouts(episodes: Sequence[Episode], mode: str, tokenizer=None) -> Rollouts:
    """Episodes as Rollouts rows: append mode one row per episode (completion = every token after the prompt, loss
    mask 1 on policy tokens), window mode one row per step (`episode` = the episode's index). Turn rewards sit on
    the last policy token of their turn (`token_rewards`); `rewards` is the episode reward on every row."""
    if mode not in ("append", "window"):
        raise ValueError(f"episode mode must be append or window, got {mode!r}")
    out = Rollouts([], [], [], [], [])
    keys = sorted({k for ep in episodes for k in ep.score if k != "reward"})
    for index, ep in enumerate(episodes):
        meta = {**ep.meta, "score": dict(ep.score), "stop_reason": ep.stop_reason, "turns": len(ep.turns)}
        if mode == "append":
            rows = [(ep.prompt_ids, 0, len(ep.tokens), ep.stop_reason not in ("max_tokens", "context"), ep.turns)]
        else:
            rows = [(t.prompt_ids, t.span[0], t.span[1], t.info.get("stopped", False), [t]) for t in ep.turns]
        for k, (prompt, start, end, finished, turns) in enumerate(rows):
            rewards = [0.0] * (end - start)
            for t in turns:
                if t.span[1] > t.span[0]:
                    rewards[t.span[1] - 1 - start] += t.reward
            out.prompt_ids.append(list(prompt))
            out.completion_ids.append(ep.tokens[start:end])
            out.loss_mask.append(ep.loss_mask[start:end])
            out.logprobs.append(ep.logprobs[start:end] if ep.logprobs else [])
            out.token_rewards.append(rewards)
            out.finished.append(bool(finished))
            out.group.append(ep.group)
            out.rewards.append(episode_reward(ep))
            for key in keys:
                out.reward_components.setdefault(key, []).append(float(ep.score.get(key, math.nan)))
            out.meta.append(meta if mode == "append" else {**meta, "step": k})
            if tokenizer is not None:
                out.texts.append(tokenizer.decode(ep.tokens[start:end], skip_special_tokens=False))
            if mode == "window":
                out.episode.append(index)
    return out


def episode_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """Per-episode statistics (never per row): turns/mean, env_tokens/mean, episodes/stop_reason/* (shares),
    and the mean of every score key (success, ...)."""
    if not episodes:
        return {}
    count = len(episodes)
    reasons = Counter(ep.stop_reason for ep in episodes)
    metrics = {
        "turns/mean": sum(len(ep.turns) for ep in episodes) / count,
        "env_tokens/mean": sum(ep.env_tokens for ep in episodes) / count,
        "policy_tokens/mean": sum(ep.policy_tokens for ep in episodes) / count,
    }
    metrics |= {f"episodes/stop_reason/{r}": reasons[r] / count for r in STOP_REASONS}
    for key in sorted({k for ep in episodes for k in ep.score}):
        values = [ep.score[key] for ep in episodes if key in ep.score]
        metrics[f"episodes/{key}"] = sum(values) / len(values)
    return metrics


class Untrained(str):
    """A demonstration turn that is played through the env but never trained on: a mistake injected so that the
    expert's next turns show how to go on after it (data.textgame.demo_mistakes). Anywhere else it is a plain str."""


class DemoEngine:
    """Plays scripted policy turns as if they were sampled: turn k of episode r is `turns[r][k]` + EOS, ending at its
    first stop id (EOS or an action tag) and cut at the turn's token cap. Run through `run_episodes`, demonstrations
    pass the same env, renderer and budgets as RL episodes, so SFT and RL see byte-identical formats. Append mode
    opens a session (rows name the episodes); window mode calls `generate`, which names no episode, so it plays one
    episode per engine (play_demonstrations does)."""

    def __init__(self, tokenizer, turns: Sequence[Sequence[str]]):
        self.tokenizer, self.turns = tokenizer, [list(t) for t in turns]
        self.played = 0  # window mode: turns of the one episode played so far

    def sync_weights(self, model) -> None:
        pass

    def turn(self, episode: int, k: int, params: SamplingParams) -> TurnSample:
        """Turn k of `episode`'s script as sampled ids (empty text past the script's end), cut where a sampled turn
        would stop: at its first stop id, or at the token cap."""
        tok, script = self.tokenizer, self.turns[episode]
        text = script[k] if k < len(script) else ""
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        end = next(i for i, t in enumerate(ids) if t == tok.eos_token_id or t in params.stop_ids)
        ids = ids[: min(end + 1, params.max_new_tokens)]
        return TurnSample(ids, [0.0] * len(ids), ids[-1] == tok.eos_token_id or ids[-1] in params.stop_ids)

    def generate(self, prompt_ids, n, params) -> Rollouts:
        if len(self.turns) != 1 or len(prompt_ids) != 1 or n != 1:
            raise ValueError("a DemoEngine plays window mode one episode at a time: use play_demonstrations")
        sample = self.turn(0, self.played, params)
        self.played += 1
        return Rollouts([list(prompt_ids[0])], [sample.ids], [sample.logprobs], [sample.stopped], [0])

    def open(self, prompt_ids: Sequence[Sequence[int]], n: int) -> _DemoSession:
        return _DemoSession(self, [list(p) for p in prompt_ids for _ in range(n)], list(range(len(prompt_ids) * n)))


class _DemoSession:
    def __init__(self, engine: DemoEngine, rows: list[list[int]], episodes: list[int]):
        self.engine, self.rows, self.episodes = engine, rows, episodes
        self.played = [0] * len(rows)

    def generate(self, rows: Sequence[int], params: SamplingParams) -> list[TurnSample]:
        out = []
        for r in rows:
            sample = self.engine.turn(self.episodes[r], self.played[r], params)
            self.played[r] += 1
            self.rows[r] += sample.ids
            out.append(sample)
        return out

    def append(self, rows: Sequence[int], ids: Sequence[Sequence[int]]) -> None:
        for r, new in zip(rows, ids, strict=True):
            self.rows[r] += list(new)

    def fork(self, rows: Sequence[int]) -> _DemoSession:
        child = _DemoSession(self.engine, [list(self.rows[r]) for r in rows], [self.episodes[r] for r in rows])
        child.played = [self.played[r] for r in rows]
        return child

    def tokens(self, row: int) -> list[int]:
        return list(self.rows[row])

    def close(self) -> None:
        self.rows = []


def play_demonstrations(
    world, examples: Sequence[Example], renderer, tokenizer, limits: TurnLimits, context: int | None = None
) -> list[Episode]:
    """One episode per example, its policy turns being `world.demonstration(example)` (window mode: one
    run_episodes call per example, see DemoEngine); the tokens of `Untrained` turns get loss mask 0."""
    scripts = [world.demonstration(ex) for ex in examples]
    params = SamplingParams(max_new_tokens=limits.max_turn_tokens, greedy=True)
    if limits.context == "append":
        engine = DemoEngine(tokenizer, scripts)
        episodes = run_episodes(engine, examples, world.make_env, renderer, tokenizer, params, limits, 1, context)
    else:
        episodes = []
        for group, (example, script) in enumerate(zip(examples, scripts)):
            (ep,) = run_episodes(DemoEngine(tokenizer, [script]), [example], world.make_env, renderer, tokenizer,
                                 params, limits, 1, context)  # fmt: skip
            ep.group = group
            episodes.append(ep)
    for ep, script in zip(episodes, scripts):
        for turn, text in zip(ep.turns, script):
            if isinstance(text, Untrained):
                ep.loss_mask[turn.span[0] : turn.span[1]] = [0] * (turn.span[1] - turn.span[0])
    return episodes
