"""FastEngine's KV-cached session (rollout/fast_session.py) must compute what a full HF forward over the same tokens
computes, through the PyTorch path and the fused C step, whatever the rows' lengths, holes and forks; greedy episodes
on the guess world are the same through it as through the stateless session."""

from collections import Counter

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from reasonrl.config import TurnLimits, load_config
from reasonrl.envs.render import ChatRenderer
from reasonrl.modeling import native
from reasonrl.models import encode_prompt, load_model
from reasonrl.rollout import episodes
from reasonrl.rollout.base import SamplingParams
from reasonrl.rollout.episodes import run_episodes
from reasonrl.rollout.fast import FastEngine
from reasonrl.rollout.fast_session import FastSession
from reasonrl.rollout.hf import HFEngine
from reasonrl.rollout.session import StatelessSession, open_session
from reasonrl.trainer import Trainer
from reasonrl.worlds.guess import GuessWorld

PROMPTS = ["Compute 3+4.", "Compute 12+30. Think step by step.", "7+8?"]
OBSERVATIONS = [[40, 41], [50], [60, 61, 62, 63, 64, 65, 66], [70, 71, 72], [80, 81, 82, 83], [90]]


@pytest.fixture(scope="module")
def student():
    return load_model("student")


@pytest.fixture(params=["pytorch", "native"])
def path(request, monkeypatch):
    """Which decode step runs: PyTorch ops only, or the fused C step (counted, so the test knows it ran)."""
    calls = []
    if request.param == "pytorch":
        monkeypatch.setattr(native, "enabled", False)
    else:
        if native.kernels() is None:
            pytest.skip("the C kernels did not build")
        original = native.NativeStep.__call__
        monkeypatch.setattr(native.NativeStep, "__call__", lambda *a: calls.append(1) or original(*a))
    return request.param, calls


def hf_next_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def max_diff(session, model, rows) -> float:
    ours = session.next_logits(rows)
    return max(float((ours[i] - hf_next_logits(model, session.tokens(r))).abs().max()) for i, r in enumerate(rows))


def test_turns_and_appends_equal_a_full_hf_forward(student, path):
    model, tok = student
    name, calls = path
    engine = FastEngine(model, tok)
    prompts = [encode_prompt(tok, p) for p in PROMPTS]
    session = engine.open(prompts, 2)
    rows = list(range(6))
    assert session.tokens(2) == prompts[1] and max_diff(session, model, rows) <= 1e-4
    torch.manual_seed(0)
    # a stop id the student writes often ends some turns early: their later columns become holes
    params = SamplingParams(max_new_tokens=10, temperature=1.0, stop_ids=(tok.convert_tokens_to_ids("+"),))
    first = session.generate(rows, params)
    assert len({len(t.ids) for t in first}) > 1  # rows of different lengths
    before = engine.decode_calls
    session.append(rows, OBSERVATIONS)
    assert engine.decode_calls == before + 1  # one forward over the new tokens only
    assert max_diff(session, model, rows) <= 1e-4
    second = session.generate(rows, params)
    diff = max_diff(session, model, rows)  # the pending last token goes through one decode step
    assert diff <= 1e-4, diff
    for r, turn in enumerate(second):  # the decode steps' log-probs are the full forward's too
        seq = session.tokens(r)
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([seq])).logits[0].float().log_softmax(-1)
        start = len(seq) - len(turn.ids)
        expected = logp[torch.arange(start - 1, len(seq) - 1), torch.tensor(turn.ids)]
        assert float((torch.tensor(turn.logprobs) - expected).abs().max()) <= 1e-4
    assert (len(calls) > 0) == (name == "native")
    for r in rows:
        assert session.tokens(r) == [
            *prompts[r // 2],
            *first[r].ids,
            *OBSERVATIONS[r],
            *second[r].ids,
        ]


def test_idle_rows_and_forks_are_left_untouched(student, path):
    model, tok = student
    engine = FastEngine(model, tok)
    session = engine.open([encode_prompt(tok, p) for p in PROMPTS], 1)
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    torch.manual_seed(1)
    session.generate([0, 1, 2], params)
    session.append([0, 2], [[40, 41, 42], [50]])
    expected = {r: (session.tokens(r), session.next_logits([r])) for r in range(3)}
    fork = session.fork([2, 0])
    fork.append([0, 1], [[60, 61], [70]])
    fork.generate([1, 0], params)
    fork.append([1], [[80, 81, 82, 83]])
    assert fork.tokens(1)[: len(expected[0][0])] == expected[0][0]
    assert max_diff(fork, model, [0, 1]) <= 1e-4
    session.generate([1], params)  # rows 0 and 2 idle
    for r in (0, 2):
        assert session.tokens(r) == expected[r][0]
        assert torch.equal(session.next_logits([r]), expected[r][1])
    assert max_diff(session, model, [0, 1, 2]) <= 1e-4
    session.close()
    with pytest.raises(ValueError, match="closed"):
        session.generate([0], params)


def test_greedy_turns_equal_hf_generate_on_the_concatenated_tokens(student):
    model, tok = student
    engine, hf = FastEngine(model, tok), HFEngine(model, tok)
    session = engine.open([encode_prompt(tok, p) for p in PROMPTS], 2)
    rows, greedy = list(range(6)), SamplingParams(max_new_tokens=12, greedy=True)
    for turn in range(3):
        history = [session.tokens(r) for r in rows]
        samples = session.generate(rows, greedy)
        for r, sample in zip(rows, samples):
            theirs = hf.generate([history[r]], 1, greedy)
            assert sample.ids == theirs.completion_ids[0] and sample.stopped == theirs.finished[0]
            assert sample.logprobs == []
        session.append(rows, [obs[: turn + 1] for obs in OBSERVATIONS])


def test_stop_ids_end_a_turn_like_eos(student):
    model, tok = student
    engine = FastEngine(model, tok)
    prompts = [encode_prompt(tok, p) for p in PROMPTS]
    greedy = SamplingParams(max_new_tokens=16, greedy=True)
    plain = engine.generate(prompts, 1, greedy)
    stop = plain.completion_ids[1][3]  # a token row 1 writes in its 4th step
    params = SamplingParams(max_new_tokens=16, greedy=True, stop_ids=(stop,))
    out = engine.generate(prompts, 1, params)
    session = engine.open(prompts, 1)
    turns = session.generate([0, 1, 2], params)
    for i, ids in enumerate(plain.completion_ids):
        cut = ids[: ids.index(stop) + 1] if stop in ids else ids
        assert out.completion_ids[i] == cut == turns[i].ids
        assert out.finished[i] == (stop in ids or plain.finished[i]) == turns[i].stopped
    assert out.completion_ids[1][-1] == stop and out.finished[1]
    session.append([1], [[40, 41]])
    assert max_diff(session, model, [0, 1, 2]) <= 1e-4


def test_bad_calls_get_one_clear_error(student):
    model, tok = student
    session = FastEngine(model, tok).open([encode_prompt(tok, "7+8?")], 2)
    with pytest.raises(ValueError, match="out of range"):
        session.append([2], [[4]])
    with pytest.raises(ValueError, match="repeat"):
        session.generate([0, 0], SamplingParams())
    with pytest.raises(ValueError, match="2 rows but 1"):
        session.append([0, 1], [[4]])
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=321, n_embd=32, n_layer=1, n_head=2, eos_token_id=2, pad_token_id=0))
    with pytest.raises(ValueError, match=r"gpt2.*StatelessSession"):
        FastSession(FastEngine(gpt2, tok), [encode_prompt(tok, "7+8?")], 1)


def test_open_falls_back_to_the_stateless_session_where_the_decoder_cannot_run(student):
    # FastEngine.generate falls back to HF generate for such models; its sessions must not fail instead
    model, tok = student
    prompts = [encode_prompt(tok, "7+8?")]
    assert isinstance(FastEngine(model, tok).open(prompts, 2), FastSession)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=321, n_embd=32, n_layer=1, n_head=2, eos_token_id=2, pad_token_id=0))
    engine = FastEngine(gpt2, tok)
    session = open_session(engine, prompts, 2)
    assert isinstance(session, StatelessSession)
    turn = session.generate([1], SamplingParams(max_new_tokens=4, greedy=True))[0]
    assert session.tokens(1) == prompts[0] + turn.ids and session.tokens(0) == prompts[0]
    assert turn.ids == engine.generate(prompts, 1, SamplingParams(max_new_tokens=4, greedy=True)).completion_ids[0]


@pytest.fixture(scope="module")
def guesser(tmp_path_factory):
    """The student after 40 SFT steps on guess demonstrations: it plays multi-turn games that end at EOS."""
    run = tmp_path_factory.mktemp("sft-guess")
    overrides = ["data.train=world:guess", "data.levels=[1,2,3]", "algo.name=sft", "train.steps=40"]
    overrides += ["train.prompts_per_step=16", "train.micro_batch_size=64", "train.eval_every=0"]
    overrides += ["train.progress=false", "optim.lr=3e-3", "optim.warmup_steps=0"]
    Trainer(load_config(None, overrides), run_dir=run).train()
    return load_model(str(run / "final"))


@pytest.mark.parametrize("stop", [None, "1"])
def test_greedy_guess_episodes_are_the_same_through_every_session(guesser, stop, monkeypatch):
    # run_episodes opens FastSession on FastEngine; the same episodes through StatelessSession over FastEngine and
    # HFEngine must be token-identical, every turn ending at EOS or the stop id (kept as the turn's last token)
    model, tok = guesser
    world = GuessWorld()
    examples, limits = world.eval_set([1, 2, 3]), TurnLimits(max_turns=5, max_turn_tokens=16)
    stops = () if stop is None else (tok.convert_tokens_to_ids(stop),)
    params = SamplingParams(max_new_tokens=16, greedy=True, stop_ids=stops)

    def play(engine):
        return run_episodes(engine, examples, world.make_env, ChatRenderer(tok), tok, params, limits, 1, 512)

    opened = []
    monkeypatch.setattr(episodes, "open_session", lambda *a: opened.append(open_session(*a)) or opened[-1])
    kv = play(FastEngine(model, tok))
    monkeypatch.setattr(episodes, "open_session", lambda *a: opened.append(StatelessSession(*a)) or opened[-1])
    ways = {"fast": play(FastEngine(model, tok)), "hf": play(HFEngine(model, tok))}
    assert [type(s) for s in opened] == [FastSession, StatelessSession, StatelessSession]
    ends = Counter(ep.tokens[t.span[1] - 1] for ep in kv for t in ep.turns)
    assert set(ends) <= {tok.eos_token_id, *stops} and all(t.info["stopped"] for ep in kv for t in ep.turns)
    assert sum(len(ep.turns) > 1 for ep in kv) >= len(kv) // 2 and any(ep.stop_reason == "done" for ep in kv)
    if stops:
        assert ends[stops[0]] >= 5 and ends[tok.eos_token_id] >= 5
    for name, eps in ways.items():
        assert [ep.tokens for ep in eps] == [ep.tokens for ep in kv], name
        assert [ep.stop_reason for ep in eps] == [ep.stop_reason for ep in kv], name
