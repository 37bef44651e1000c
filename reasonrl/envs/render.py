"""Renderers: the only place that knows prompt formats. Each turns an environment's text into token ids exactly once.

Append mode (one growing sequence per episode) uses `InlineRenderer` (Search-R1 style: observations wrapped in tags
inside the assistant turn) or `ChatRenderer` (an observation is a user/tool message rendered as a chat-template delta,
checked at construction to be append-only). Window mode renders a fresh step prompt per turn with `WindowRenderer`.

A turn ends at EOS, and at `</search>` / `</answer>` when the tokenizer has them as added tokens (the kb student's
does): the tag is the turn's last token, nothing is decoded and re-encoded, and no token is sampled after the action.

Observations longer than their limit are cut in the middle (head and tail kept, as verl's `truncate_side=middle`):
tool outputs and documents carry their title at the head and often a verdict at the tail.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from reasonrl.models import encode_prompt

# Characters kept per observation token allowed before tokenising: a 100k-character observation is cut in the middle
# to a size the tokenizer handles at once (no token is longer than this), then cut exactly in tokens.
CHARS_PER_TOKEN_CAP = 32
TURN_END_TAGS = ("</search>", "</answer>")  # an action ends here (envs/search.py reads the first complete one)


def tag_stop_ids(tokenizer) -> list[int]:
    """Ids of the TURN_END_TAGS that `tokenizer` has as added tokens (one id each); other tokenizers stop at EOS."""
    added = tokenizer.get_added_vocab()
    return [added[tag] for tag in TURN_END_TAGS if tag in added]


def cut_middle(ids: Sequence[int], limit: int) -> list[int]:
    """At most `limit` ids: the first ceil(limit/2) and the last floor(limit/2) when `ids` is longer."""
    ids = list(ids)
    if len(ids) <= limit:
        return ids
    tail = limit // 2
    return ids[: limit - tail] + (ids[len(ids) - tail :] if tail else [])


def _cut_text(text: str, limit: int) -> str:
    cap = CHARS_PER_TOKEN_CAP * max(1, limit)
    if len(text) <= cap:
        return text
    return text[: cap - cap // 2] + text[len(text) - cap // 2 :]


class Renderer(Protocol):
    """Turns environment text into the token ids the model sees in append mode."""

    stop_ids: frozenset[int]  # end a policy turn (EOS always does)
    overhead: int  # env tokens an observation adds around its body (tags, template)

    def prompt(self, first_obs: str) -> list[int]:
        """The episode's prompt from the environment's first observation."""
        ...

    def observation(self, obs: str | list[int], limit: int) -> tuple[list[int], bool]:
        """Env tokens for `obs`, its body cut in the middle to `limit` tokens; and whether it was cut."""
        ...


class _Body:
    """Shared by the renderers: tokenise a body once (no special tokens), cut it in the middle."""

    def __init__(self, tokenizer, system_prompt: str | None, stop_ids: Sequence[int]):
        self.tokenizer, self.system_prompt = tokenizer, system_prompt
        self.stop_ids = frozenset([tokenizer.eos_token_id, *stop_ids])

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def body(self, obs: str | list[int], limit: int) -> tuple[list[int], bool]:
        ids = list(obs) if isinstance(obs, list) else self.encode(_cut_text(obs, limit))
        cut = len(ids) > limit or (isinstance(obs, str) and len(obs) > CHARS_PER_TOKEN_CAP * max(1, limit))
        return cut_middle(ids, limit), cut

    def prompt(self, first_obs: str) -> list[int]:
        return encode_prompt(self.tokenizer, first_obs, self.system_prompt)


class InlineRenderer(_Body):
    """Search-R1 style: the observation is `open + body + close` inside the assistant turn, and the policy continues
    right after it. Exact token ids from the env (a list) are appended as given, without the tags."""

    def __init__(
        self,
        tokenizer,
        open_tag: str = "<information>",
        close_tag: str = "</information>",
        stop_ids: Sequence[int] = (),
        system_prompt: str | None = None,
    ):
        super().__init__(tokenizer, system_prompt, stop_ids)
        self.open_ids, self.close_ids = self.encode(open_tag), self.encode(close_tag)
        self.overhead = len(self.open_ids) + len(self.close_ids)

    def observation(self, obs: str | list[int], limit: int) -> tuple[list[int], bool]:
        body, cut = self.body(obs, limit)
        return (body if isinstance(obs, list) else self.open_ids + body + self.close_ids), cut


PROBE_USER, PROBE_REPLY, SLOT = "What is 2+2?", "<think>\nadd two and two\n</think>\n\n4", "@@OBSERVATION@@"


class ChatRenderer(_Body):
    """Hugging Face chat models: an observation is a `role` message (user, or tool) rendered as the chat template's
    delta after a synthetic conversation, and the separator the template puts after the turn-end token belongs to
    the delta (verl#6921). Construction checks that the template is append-only, else refuses with a clear error.
    With `stop_ids` a turn ends at a tag instead of the turn-end token, so the delta starts with that token."""

    def __init__(
        self,
        tokenizer,
        role: str = "user",
        system_prompt: str | None = None,
        stop_ids: Sequence[int] = (),
        turn_end: str | None = None,
    ):
        super().__init__(tokenizer, system_prompt, stop_ids)
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        if not tokenizer.chat_template:
            raise ValueError(f"ChatRenderer needs a chat template; tokenizer {name!r} has none (use the inline one)")
        turn_end = turn_end or tokenizer.eos_token
        end_id = tokenizer.convert_tokens_to_ids(turn_end)
        self.stop_ids = self.stop_ids | {end_id}
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        base = system + [{"role": "user", "content": PROBE_USER}]
        closed_msgs = base + [{"role": "assistant", "content": PROBE_REPLY}]
        opened = self._render(base, True)
        closed = self._render(closed_msgs, False)
        extended = self._render(closed_msgs + [{"role": role, "content": SLOT}], True)
        sampled = opened + PROBE_REPLY + turn_end  # what the model writes after the generation prompt
        if not closed.startswith(sampled):
            raise ValueError(
                f"chat template of {name!r}: an assistant reply is not rendered as generation prompt + reply + "
                f"{turn_end!r}, so sampled turns cannot be appended token-exactly; pass turn_end=, or use "
                f"rollout.turns.context=window"
            )
        if not extended.startswith(closed):
            raise ValueError(
                f"chat template of {name!r} is not append-only: rendering a conversation plus a {role!r} message "
                f"does not start with rendering the conversation (e.g. it strips past <think> blocks, as Qwen3's "
                f"does); use rollout.turns.context=window (a fresh prompt per step)"
            )
        before, slot, after = (closed[len(sampled) :] + extended[len(closed) :]).partition(SLOT)
        if not slot:
            raise ValueError(f"chat template of {name!r} does not render a {role!r} message's content verbatim")
        self.before_ids, self.after_ids = [end_id] * bool(stop_ids) + self.encode(before), self.encode(after)
        self.overhead = len(self.before_ids) + len(self.after_ids)

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, return_dict=False
        )

    def observation(self, obs: str | list[int], limit: int) -> tuple[list[int], bool]:
        body, cut = self.body(obs, limit)
        return (body if isinstance(obs, list) else self.before_ids + body + self.after_ids), cut


class WindowRenderer(_Body):
    """Window mode (verl-agent / D2Skill): each step's prompt is rendered afresh from the task (the first
    observation), the last `history` (action, observation) pairs and the current observation. Rows are independent,
    so nothing here needs to be append-only."""

    overhead = 0

    def __init__(self, tokenizer, history: int = 2, stop_ids: Sequence[int] = (), system_prompt: str | None = None):
        super().__init__(tokenizer, system_prompt, stop_ids)
        self.history = history

    def cut(self, obs: str | list[int], limit: int) -> tuple[str, bool]:
        """The observation as text, cut in the middle to `limit` tokens."""
        ids, cut = self.body(obs, limit)
        text = obs if isinstance(obs, str) and not cut else self.tokenizer.decode(ids, skip_special_tokens=True)
        return text, cut

    def window(self, first_obs: str, turns: Sequence[tuple[str, str]], task: str | None = None) -> list[int]:
        """The step prompt: the task, then the last `history` of `turns` ((action, cut observation) pairs; the last
        pair's observation is the current one). The task is the first observation, or `task` when the env names
        one (an env whose first observation holds more than the task: a room description, step 1's actions)."""
        if not turns:
            return self.prompt(first_obs)
        shown = turns[-self.history :] if self.history else []
        lines = [f"Action: {a}\nObservation: {o}" for a, o in shown] or [f"Observation: {turns[-1][1]}"]
        text = f"{task or first_obs}\n\nLast {len(shown)} of {len(turns)} steps:\n" + "\n".join(lines)
        return self.prompt(text)


def make_renderer(tokenizer, limits, system_prompt: str | None = None):
    """The renderer `limits` (config.TurnLimits) asks for: window mode's, else the chat or inline one; turns stop at
    the tokenizer's single-token action tags (tag_stop_ids)."""
    stops = tag_stop_ids(tokenizer)
    if limits.context == "window":
        return WindowRenderer(tokenizer, limits.history, stop_ids=stops, system_prompt=system_prompt)
    if limits.renderer == "inline":
        return InlineRenderer(tokenizer, stop_ids=stops, system_prompt=system_prompt)
    return ChatRenderer(tokenizer, system_prompt=system_prompt, stop_ids=stops)
