"""Labellers: who says which of two segments is better, behind one interface (`feedback.labeller`).

    scripted          a B-Pref teacher on the true rewards (preferences.ScriptedTeacher; pref.teacher sets which)
    openai:BASE_URL   any OpenAI-compatible chat endpoint through the `openai` client, with RL-SaLLM-F's prompts
    hf:DIR            a local causal LM (reasonrl.models.load_model) decoding greedily through the fast engine
    replay:FILE       the answers recorded by an earlier run (`feedback.record`), in order, checked pair by pair

A labeller answers a batch of queries with labels (1: segment 1 preferred, 0: segment 0, 0.5: equally good, nan:
no label) and a failure reason per pair; `imagine` asks it for a better trajectory than a segment it preferred
(RL-SaLLM-F's self-augmentation). A call that errors, hangs past its timeout or answers something unparsable is a
counted failure, never an exception. `Recorder` wraps any labeller and writes every answer to a JSONL file that
`replay:FILE` plays back, so an LLM run reproduces without the LLM.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reasonrl.control.preferences import ScriptedTeacher
from reasonrl.control.trajectory_text import (
    TaskText,
    evaluator_prompt,
    generation_prompt,
    parse_answer,
    parse_trajectory,
    scripted_imagination,
)

if TYPE_CHECKING:
    from reasonrl.control.config import FeedbackConfig

logger = logging.getLogger("reasonrl")
LABELLER_KINDS = ("scripted", "openai", "hf", "replay")


@dataclass
class Queries:
    """n segment pairs: obs (n, H, obs_dim), action (n, H, act_dim) and true_reward (n, H) of each side, and the
    mean true return of an H-step window (the unit of B-Pref's skip and equal thresholds)."""

    seg0: dict[str, np.ndarray]
    seg1: dict[str, np.ndarray]
    scale: float = 1.0

    def __len__(self) -> int:
        return len(self.seg0["obs"])

    def subset(self, rows: np.ndarray) -> Queries:
        pick = lambda seg: {k: v[rows] for k, v in seg.items()}  # noqa: E731
        return Queries(pick(self.seg0), pick(self.seg1), self.scale)

    def swapped(self) -> Queries:
        return Queries(self.seg1, self.seg0, self.scale)

    def fingerprint(self, i: int) -> str:
        """A short hash of pair i's observations in this order: what replay checks it is answering."""
        h = hashlib.sha1(np.ascontiguousarray(self.seg0["obs"][i], np.float32).tobytes())
        h.update(np.ascontiguousarray(self.seg1["obs"][i], np.float32).tobytes())
        return h.hexdigest()[:16]


@dataclass
class Answers:
    """A labeller's answers to n queries."""

    labels: np.ndarray  # (n,) float32: 1 segment 1 preferred, 0 segment 0, 0.5 equally good, nan no label
    failures: list[str | None]  # per pair: None, "error" (failed or timed-out call) or "unparsable"
    replies: list[str | None] = field(default_factory=list)  # the text answers of chat labellers (else empty)

    def reply(self, i: int) -> str | None:
        return self.replies[i] if self.replies else None


class Labeller:
    """The interface; `state` holds what a checkpoint must restore for the run to continue exactly."""

    def label(self, queries: Queries) -> Answers:
        raise NotImplementedError

    def imagine(
        self, queries: Queries, i: int, better: int, reply: str | None
    ) -> tuple[dict[str, np.ndarray] | None, str | None]:
        """(a trajectory better than side `better` of pair i, as trajectory_text's fields, or None; the text it
        came from). `reply` is the labeller's answer to that pair, which a chat labeller continues from."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


class ScriptedLabeller(Labeller):
    """A B-Pref teacher; its imagination is trajectory_text.scripted_imagination (MetaWorld tasks only)."""

    def __init__(self, teacher: ScriptedTeacher, task: TaskText, seed: int):
        self.teacher, self.task = teacher, task
        # a stream of its own, apart from the run's: the run's draws do not depend on who labels (replay stays exact)
        self.rng = np.random.default_rng([seed, 1])

    def label(self, queries: Queries) -> Answers:
        keep, kept = self.teacher.label(
            queries.seg0["true_reward"], queries.seg1["true_reward"], queries.scale, self.rng
        )
        labels = np.full(len(queries), np.nan, np.float32)
        labels[keep] = kept
        return Answers(labels, [None] * len(queries))

    def imagine(self, queries, i, better, reply):
        obs = (queries.seg0, queries.seg1)[better]["obs"][i]
        return scripted_imagination(self.task, obs), None

    def state(self) -> dict[str, Any]:
        return {"generator": self.rng.bit_generator.state}

    def load_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["generator"]


class ChatLabeller(Labeller):
    """RL-SaLLM-F's text protocol over a `chat(messages) -> text` backend: the evaluator prompt per pair, the
    verdict parsed from the reply, and the generation prompt as the next turn of the same conversation."""

    def __init__(self, task: TaskText, where: str):
        if task.goal is None:
            raise ValueError(
                f"{where} needs a goal sentence for {task.name}: set feedback.goal (e.g. 'open the drawer')"
            )
        self.task, self.where = task, where

    def chat(self, messages: list[dict[str, str]]) -> str:
        raise NotImplementedError

    def _ask(self, messages: list[dict[str, str]], what: str) -> str | None:
        try:
            text = self.chat(messages)
            if not isinstance(text, str):
                raise TypeError(f"the answer is {type(text).__name__}, not text")
            return text
        except Exception as e:  # any failure of the endpoint or model is one counted failure, never the run's end
            logger.warning("%s: %s failed: %s: %s", self.where, what, type(e).__name__, str(e)[:300])
            return None

    def _prompt(self, queries: Queries, i: int) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": evaluator_prompt(self.task, queries.seg0["obs"][i], queries.seg1["obs"][i])}
        ]

    def label(self, queries: Queries) -> Answers:
        labels = np.full(len(queries), np.nan, np.float32)
        failures: list[str | None] = []
        replies: list[str | None] = []
        for i in range(len(queries)):
            reply = self._ask(self._prompt(queries, i), "a preference query")
            verdict = None if reply is None else parse_answer(reply)
            if reply is not None and verdict is None:
                logger.warning("%s: no verdict (1, 2 or 0) in the answer %r", self.where, reply[-200:])
            failures.append("error" if reply is None else "unparsable" if verdict is None else None)
            labels[i] = np.nan if verdict is None else verdict
            replies.append(reply)
        return Answers(labels, failures, replies)

    def imagine(self, queries, i, better, reply):
        if reply is None:
            return None, None
        better_obs = (queries.seg0, queries.seg1)[better]["obs"][i]
        messages = self._prompt(queries, i) + [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": generation_prompt(self.task, better_obs)},
        ]
        text = self._ask(messages, "a trajectory generation")
        return parse_trajectory(self.task, text, len(better_obs)), text


class OpenAILabeller(ChatLabeller):
    """Any OpenAI-compatible /v1/chat/completions endpoint; the client retries failed requests itself."""

    def __init__(self, base_url: str, task: TaskText, options: FeedbackConfig):
        super().__init__(task, f"feedback.labeller=openai:{base_url}")
        try:
            import openai
        except ImportError:
            raise ImportError(
                "feedback.labeller=openai:URL needs the openai client: pip install 'reasonrl[openai]'"
            ) from None
        self.options = options
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=os.environ.get(options.api_key_env) or "EMPTY",  # local servers take any key
            timeout=options.timeout_s,
            max_retries=options.max_retries,
        )
        self._next_request = 0.0

    def chat(self, messages: list[dict[str, str]]) -> str:
        if self.options.requests_per_minute > 0:  # client-side rate limit: evenly spaced requests
            time.sleep(max(0.0, self._next_request - time.monotonic()))
            self._next_request = time.monotonic() + 60.0 / self.options.requests_per_minute
        response = self.client.chat.completions.create(
            model=self.options.model,
            messages=messages,
            temperature=self.options.temperature,
            max_tokens=self.options.max_tokens,
        )
        return response.choices[0].message.content or ""


class HFLabeller(ChatLabeller):
    """A local causal LM through reasonrl's engines (greedy, so its answers are a function of the prompt)."""

    def __init__(self, path: str, task: TaskText, options: FeedbackConfig):
        super().__init__(task, f"feedback.labeller=hf:{path}")
        from reasonrl.models import load_model, model_context
        from reasonrl.rollout.fast import FastEngine

        model, self.tokenizer = load_model(path)
        self.context = model_context(model)
        self.engine = FastEngine(model.eval(), self.tokenizer)
        self.max_tokens = options.max_tokens

    def chat(self, messages: list[dict[str, str]]) -> str:
        from reasonrl.models import decode_completion, encode_prompt
        from reasonrl.rollout.base import SamplingParams

        ids = encode_prompt(self.tokenizer, messages)
        if self.context is not None and len(ids) + self.max_tokens > self.context:
            raise ValueError(
                f"a prompt of {len(ids)} tokens + feedback.max_tokens={self.max_tokens} exceeds the model's "
                f"context of {self.context} tokens"
            )
        out = self.engine.generate([ids], 1, SamplingParams(max_new_tokens=self.max_tokens, greedy=True))
        return decode_completion(self.tokenizer, out.completion_ids[0])


class Recorder(Labeller):
    """Any labeller, with every answer and imagination appended to a JSONL file that `ReplayLabeller` plays back.
    Its state is the number of rows written: a resumed run first cuts the file back to its checkpoint."""

    def __init__(self, inner: Labeller, path: str | Path, fresh: bool = True):
        self.inner, self.path, self.rows = inner, Path(path), 0
        if fresh:
            self.path.write_text("")

    def _write(self, rows: list[dict]) -> None:
        with open(self.path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        self.rows += len(rows)

    def label(self, queries: Queries) -> Answers:
        answers = self.inner.label(queries)
        self._write(
            [
                {
                    "kind": "label",
                    "pair": queries.fingerprint(i),
                    "label": None if math.isnan(y) else float(y),
                    "failure": answers.failures[i],
                    "reply": answers.reply(i),
                }
                for i, y in enumerate(answers.labels.tolist())
            ]
        )
        return answers

    def imagine(self, queries, i, better, reply):
        trajectory, text = self.inner.imagine(queries, i, better, reply)
        as_lists = None if trajectory is None else {k: v.tolist() for k, v in trajectory.items()}
        self._write([{"kind": "imagine", "pair": queries.fingerprint(i), "trajectory": as_lists, "reply": text}])
        return trajectory, text

    def state(self) -> dict[str, Any]:
        return {"rows": self.rows, "inner": self.inner.state()}

    def load_state(self, state: dict[str, Any]) -> None:
        lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
        if len(lines) < state["rows"]:
            raise ValueError(f"{self.path} has {len(lines)} recorded answers, the checkpoint expects {state['rows']}")
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(lines[: state["rows"]]))
        os.replace(tmp, self.path)
        self.rows = state["rows"]
        self.inner.load_state(state["inner"])


class ReplayLabeller(Labeller):
    """The answers a `Recorder` wrote, in order; each row must be for the pair now asked (else the runs differ)."""

    def __init__(self, path: str | Path):
        self.path, self.cursor, self.rows = Path(path), 0, []
        if not self.path.is_file():
            raise FileNotFoundError(f"feedback.labeller=replay:{path}: no such file (feedback.record=true writes one)")
        for line_no, line in enumerate(self.path.read_text().splitlines(), 1):
            try:
                row = json.loads(line)
                if row["kind"] not in ("label", "imagine") or not isinstance(row["pair"], str):
                    raise ValueError(f"kind {row['kind']!r}")
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{line_no}: not a recorded answer ({e})") from None
            self.rows.append(row)

    def _next(self, kind: str, pair: str) -> dict:
        if self.cursor >= len(self.rows):
            raise ValueError(f"{self.path}: all {len(self.rows)} recorded answers are used; the run asks for more")
        row = self.rows[self.cursor]
        if row["kind"] != kind or row["pair"] != pair:
            raise ValueError(
                f"{self.path}:{self.cursor + 1}: recorded a {row['kind']} of pair {row['pair']}, but this run asks a "
                f"{kind} of pair {pair}: the runs diverged (another seed, config or code?)"
            )
        self.cursor += 1
        return row

    def label(self, queries: Queries) -> Answers:
        rows = [self._next("label", queries.fingerprint(i)) for i in range(len(queries))]
        labels = np.array([np.nan if r["label"] is None else r["label"] for r in rows], np.float32)
        return Answers(labels, [r.get("failure") for r in rows], [r.get("reply") for r in rows])

    def imagine(self, queries, i, better, reply):
        row = self._next("imagine", queries.fingerprint(i))
        recorded = row["trajectory"]
        trajectory = None if recorded is None else {k: np.asarray(v, np.float32) for k, v in recorded.items()}
        return trajectory, row.get("reply")

    def state(self) -> dict[str, Any]:
        return {"cursor": self.cursor}

    def load_state(self, state: dict[str, Any]) -> None:
        self.cursor = state["cursor"]


def parse_labeller(spec: str) -> tuple[str, str]:
    """`kind[:argument]` checked: scripted alone, the other kinds with their URL, directory or file."""
    kind, _, arg = spec.partition(":")
    if kind not in LABELLER_KINDS or (kind == "scripted") != (arg == ""):
        raise ValueError(f"feedback.labeller={spec!r}; choose scripted, openai:BASE_URL, hf:DIR or replay:FILE.jsonl")
    return kind, arg


def make_labeller(
    spec: str,
    task: TaskText,
    teacher: ScriptedTeacher,
    options: FeedbackConfig,
    seed: int = 0,
    record: Path | None = None,
    fresh: bool = True,
) -> Labeller:
    """The labeller `spec` names (`seed`: the scripted teacher's generator); wrapped in a Recorder writing to
    `record` when given (`fresh`: start the file empty; a resumed run cuts it back to its checkpoint instead)."""
    kind, arg = parse_labeller(spec)
    if kind == "scripted":
        labeller: Labeller = ScriptedLabeller(teacher, task, seed)
    elif kind == "openai":
        labeller = OpenAILabeller(arg, task, options)
    elif kind == "hf":
        labeller = HFLabeller(arg, task, options)
    else:
        labeller = ReplayLabeller(arg)
    return Recorder(labeller, record, fresh) if record is not None else labeller
