"""Environments and renderers: observation cuts, the chat renderer's append-only self-check, window prompts, and
the guess world (deterministic, its demonstrations win)."""

import pytest

from reasonrl.config import DataConfig
from reasonrl.data import multi_turn_world
from reasonrl.envs.render import ChatRenderer, InlineRenderer, WindowRenderer, cut_middle
from reasonrl.models import CHAT_TEMPLATE, arith_tokenizer, encode_prompt
from reasonrl.worlds import get_world
from reasonrl.worlds.guess import LEVELS, GuessWorld, binary_search

# Qwen3's template in miniature: an assistant message before the last user message loses its <think> block.
QWEN3_STYLE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages %}{%- if m['role'] == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}"
    "{%- endfor -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' and loop.index0 < ns.last_user and '</think>' in m['content'] -%}"
    "<|im_start|>assistant\n{{ m['content'].split('</think>')[-1].lstrip('\n') }}<|im_end|>\n"
    "{%- else -%}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return arith_tokenizer()


def test_cut_middle_keeps_head_and_tail():
    assert cut_middle(range(10), 4) == [0, 1, 8, 9]
    assert cut_middle(range(10), 5) == [0, 1, 2, 8, 9]
    assert cut_middle(range(10), 1) == [0]
    assert cut_middle([1, 2], 5) == [1, 2]


def test_inline_renderer_wraps_and_cuts_the_body_only(tok):
    r = InlineRenderer(tok, "<information>", "</information>")
    ids, cut = r.observation("higher", 50)
    assert not cut and tok.decode(ids) == "<information>higher</information>"
    assert len(ids) == r.overhead + len(tok("higher", add_special_tokens=False)["input_ids"])
    body = tok(" ".join(str(i) for i in range(40)), add_special_tokens=False)["input_ids"]
    ids, cut = r.observation(" ".join(str(i) for i in range(40)), 6)
    assert cut and ids == r.open_ids + body[:3] + body[-3:] + r.close_ids
    assert r.observation([5, 6, 7], 2) == ([5, 7], True)  # exact ids are appended as given (cut, no tags)
    assert tok.eos_token_id in r.stop_ids


def test_a_100k_character_observation_is_cut_before_and_after_tokenising(tok):
    r = InlineRenderer(tok)
    ids, cut = r.observation("lower " * 20_000, 16)
    assert cut and len(ids) == 16 + r.overhead


def test_chat_renderer_deltas_equal_the_template_rendering_token_for_token(tok):
    r = ChatRenderer(tok)
    prompt = r.prompt("Guess a number.")
    reply = tok("guess 8", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    obs, cut = r.observation("higher", 20)
    reply2 = tok("guess 12", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    messages = [
        {"role": "user", "content": "Guess a number."},
        {"role": "assistant", "content": "guess 8"},
        {"role": "user", "content": "higher"},
        {"role": "assistant", "content": "guess 12"},
    ]
    full = tok.apply_chat_template(messages, tokenize=False).removesuffix("\n")  # the "\n" after a turn: env's
    assert not cut and tok.decode(prompt + reply + obs + reply2) == full
    assert prompt + reply + obs + reply2 == tok(full, add_special_tokens=False)["input_ids"]
    assert prompt == encode_prompt(tok, "Guess a number.")
    assert tok.decode(obs) == "\n<|im_start|>user\nhigher<|im_end|>\n<|im_start|>assistant\n"  # owns the "\n"


def test_chat_renderer_refuses_a_template_that_is_not_append_only(tok):
    qwen3 = arith_tokenizer()
    qwen3.chat_template = QWEN3_STYLE
    qwen3.name_or_path = "qwen3-style"
    with pytest.raises(ValueError, match=r"'qwen3-style' is not append-only.*strips past <think>.*context=window"):
        ChatRenderer(qwen3)
    plain = arith_tokenizer()
    plain.chat_template = None
    with pytest.raises(ValueError, match="needs a chat template"):
        ChatRenderer(plain)
    assert tok.chat_template == CHAT_TEMPLATE  # the shipped template passes (previous test)


def test_window_renderer_shows_the_last_turns(tok):
    r = WindowRenderer(tok, history=2)
    assert r.window("Task.", []) == encode_prompt(tok, "Task.")
    turns = [("guess 8", "higher"), ("guess 12", "lower"), ("guess 10", "higher")]
    text = tok.decode(r.window("Task.", turns))
    assert "Last 2 of 3 steps:\nAction: guess 12\nObservation: lower\nAction: guess 10\nObservation: higher" in text
    assert "guess 8" not in text
    text0 = tok.decode(WindowRenderer(tok, history=0).window("Task.", turns))
    assert "Observation: higher" in text0 and "Action" not in text0
    assert r.cut("x " * 100, 4) == (tok.decode(cut_middle(tok("x " * 100)["input_ids"], 4)), True)


def test_guess_world_is_deterministic_and_its_demonstrations_win():
    world, again = GuessWorld(seed=1), get_world("guess", seed=1)
    assert [world.example(i) for i in range(30)] == [again.example(i) for i in range(30)]
    assert {world.example(i).level for i in range(60)} == {1, 2, 3}
    for example in world.eval_set([1, 2, 3, 4]) + [world.example(i) for i in range(40)]:
        env = world.make_env(example)
        assert env.reset(example) == example.prompt == world.prompt(LEVELS[example.level])  # secret not shown
        turns = world.demonstration(example)
        for k, action in enumerate(turns):
            result = env.step(action)
            assert result.done == (k == len(turns) - 1)
        assert env.score() == {"reward": 1.0, "success": 1.0, "guesses": float(len(turns))}
    assert len(world.eval_set([1, 4], 50)) == LEVELS[1] + LEVELS[4]  # every secret once
    assert max(len(binary_search(s, 16)) for s in range(1, 17)) == 5


def test_guess_feedback_and_no_action():
    env = GuessWorld().make_env(GuessWorld().to_example(3, 11))
    assert env.step("guess 4").observation == "higher"
    assert env.step("<think>guess 20?</think> guess 15").observation == "lower"  # the last guess counts
    bad = env.step("I think it is eleven")
    assert bad.info["no_action"] and not bad.done
    assert env.step("guess 11").done and env.score()["guesses"] == 3.0


def test_worlds_with_make_env_are_multi_turn():
    cfg = DataConfig()
    assert isinstance(multi_turn_world("world:guess", cfg), GuessWorld)
    assert multi_turn_world("world:arith", cfg) is None and multi_turn_world("data.jsonl", cfg) is None
