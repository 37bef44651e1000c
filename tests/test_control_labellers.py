"""Labellers of reasonrl.control and RL-SaLLM-F's mechanisms: answer parsing, the double-check on hand-made
answers, imagined trajectories rebuilt into full MetaWorld states, an OpenAI-compatible endpoint that errors, hangs or
answers garbage (loopback stub), recording and replay, and a local model through hf:DIR."""

from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest
import torch
from stub_http import StubHTTP, chat_completion

from reasonrl.config_types import ConfigError
from reasonrl.control.config import FeedbackConfig, load_control_config
from reasonrl.control.feedback import Labelling, double_check
from reasonrl.control.labellers import (
    Answers,
    Labeller,
    Queries,
    Recorder,
    ReplayLabeller,
    ScriptedLabeller,
    make_labeller,
)
from reasonrl.control.preferences import METAWORLD17, ScriptedTeacher
from reasonrl.control.trajectory_text import (
    evaluator_prompt,
    generation_prompt,
    parse_answer,
    parse_trajectory,
    rebuild_states,
    scripted_imagination,
    task_text,
)

DOOR = task_text("metaworld:door-open-v3", 39)
PENDULUM = task_text("Pendulum-v1", 3)


def _queries(n: int, length: int = 3, obs_dim: int = 39, seed: int = 0) -> Queries:
    rng = np.random.default_rng(seed)
    seg = lambda: {  # noqa: E731
        "obs": rng.uniform(-1, 1, (n, length, obs_dim)).astype(np.float32),
        "action": rng.uniform(-1, 1, (n, length, 4)).astype(np.float32),
        "true_reward": rng.uniform(0, 1, (n, length)).astype(np.float32),
    }
    return Queries(seg(), seg(), 1.0)


class HandLabeller(Labeller):
    """Answers given by hand, one Answers per call, in order; imagines the trajectories it is given."""

    def __init__(self, *answers: Answers, trajectories=()):
        self.answers, self.trajectories, self.asked = list(answers), list(trajectories), []

    def label(self, queries):
        self.asked.append(queries)
        return self.answers.pop(0)

    def imagine(self, queries, i, better, reply):
        self.asked.append((i, better, reply))
        return self.trajectories.pop(0), None


def _answers(labels, failures=None, replies=None) -> Answers:
    return Answers(np.array(labels, np.float32), failures or [None] * len(labels), replies or [])


@pytest.mark.parametrize(
    ("reply", "label"),
    [
        ("1", 0.0),  # trajectory 1 (segment 0) better
        ("2", 1.0),
        ("0", math.nan),  # unsure / no clear difference: ambiguous
        ("Trajectory 2 reaches the handle first.\n\n**2**", 1.0),
        ("Answer: 1.", 0.0),
        ("tcp ends at 0.1234 in trajectory 1, 0.2 in 2\nso I choose\n1", 0.0),  # decimals are never verdicts
        ("Both look the same, so my answer is 0", math.nan),  # the paper's rule: the last integer
        ("The better one ends at step 10.", None),
        ("I cannot tell from these numbers", None),
        ("3", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_answer_reads_1_2_0_and_rejects_garbage(reply, label):
    got = parse_answer(reply)
    if label is None or not math.isnan(label):
        assert got == label
    else:
        assert math.isnan(got)


def test_double_check_keeps_only_mirror_consistent_labels():
    queries = _queries(6)
    # first answers: 1, 0, 0, ambiguous, 1, a tie; the strict ones (pairs 0, 1, 2, 4) are asked again, swapped:
    # pair 0 -> 0 (mirror), pair 1 -> 0 (not), pair 2 -> 1 (mirror), pair 4 -> the call failed
    first = _answers([1, 0, 0, np.nan, 1, 0.5])
    second = _answers([0, 0, 1, np.nan], [None, None, None, "error"])
    labeller = HandLabeller(first, second)
    feedback = Labelling(labeller, DOOR, double_checking=True, self_augment=False)
    out = feedback(queries)
    assert out.keep.tolist() == [0, 2] and out.labels.tolist() == [1.0, 0.0]
    swapped = labeller.asked[1]  # the second ask: pairs 0, 1, 2, 4 with their segments swapped
    np.testing.assert_array_equal(swapped.seg0["obs"], queries.seg1["obs"][[0, 1, 2, 4]])
    np.testing.assert_array_equal(swapped.seg1["obs"], queries.seg0["obs"][[0, 1, 2, 4]])
    c = feedback.counts
    assert (c.queries, c.checked, c.rejected, c.ambiguous, c.errors) == (6, 4, 2, 2, 1)
    metrics = feedback.metrics()
    assert metrics["pref/double_check_rejected"] == 0.5 and metrics["pref/ambiguous_rate"] == pytest.approx(2 / 6)


def test_double_check_passes_a_consistently_wrong_teacher_and_filters_a_noisy_one():
    n = 4000
    seg = lambda r: {"obs": np.zeros((n, 2, 1)), "true_reward": np.tile(r, (n, 1))}  # noqa: E731
    queries = Queries(seg([0.0, 0.0]), seg([0.5, 0.5]), 1.0)  # segment 1 better by 1
    always_wrong = ScriptedLabeller(ScriptedTeacher(eps_mistake=1.0), DOOR, seed=0)
    labels, _, _ = double_check(always_wrong, queries, always_wrong.label(queries))
    assert (labels == 0).all()  # mirror-consistent, and wrong: the check cannot see that
    noisy = ScriptedLabeller(ScriptedTeacher(eps_mistake=0.3), DOOR, seed=0)
    labels, _, _ = double_check(noisy, queries, noisy.label(queries))
    # a label survives when both answers are right (0.49) or both wrong (0.09): accuracy 0.49 / 0.58
    assert np.isnan(labels).mean() == pytest.approx(0.42, abs=0.03)
    assert np.nanmean(labels) == pytest.approx(0.49 / 0.58, abs=0.03)


def test_imagined_trajectory_is_rebuilt_into_valid_metaworld_states():
    worse = np.arange(3 * 39, dtype=np.float32).reshape(3, 39) / 100  # obs[t, d] = (39 t + d) / 100
    tcp = np.array([[0.1, 0.2, 0.3], [0.11, 0.21, 0.31], [0.12, 0.22, 0.32]], np.float32)
    obj = np.array([[0.5, 0.6, 0.1], [0.5, 0.6, 0.1], [0.52, 0.62, 0.1]], np.float32)
    target = np.array([0.7, 0.8, 0.15], np.float32)
    reply = (
        "Here is a better trajectory:\ntcp: [[0.1000,0.2000,0.3000],[0.1100,0.2100,0.3100],[0.1200,0.2200,0.3200],"
        "[0.13,0.23,0.33]]\nobj: [['0.5','0.6','0.1'],['0.5','0.6','0.1'],['0.52','0.62','0.1']]\n"
        "target: [0.7,0.8,0.15]"
    )
    trajectory = parse_trajectory(DOOR, reply, 3)  # 4 tcp rows: cut to 3; the paper's quoted numbers parse too
    np.testing.assert_allclose(trajectory["tcp"], tcp)
    np.testing.assert_allclose(trajectory["obj"], obj)
    np.testing.assert_allclose(trajectory["target"], target)
    obs = rebuild_states(DOOR, worse, trajectory)
    # the 17-dim reward input, row 1 by hand: tcp[1], worse gripper, obj[1], tcp[0], worse prev gripper, obj[0], goal
    expected_row1 = [0.11, 0.21, 0.31, 0.42, 0.5, 0.6, 0.1, 0.1, 0.2, 0.3, 0.60, 0.5, 0.6, 0.1, 0.7, 0.8, 0.15]
    np.testing.assert_allclose(obs[1, METAWORLD17], expected_row1, atol=1e-6)
    # row 0's previous frame is the worse segment's (nothing precedes the imagined start)
    np.testing.assert_allclose(obs[0, 18:21], worse[0, 18:21])
    np.testing.assert_allclose(obs[0, 22:25], worse[0, 22:25])
    np.testing.assert_allclose(obs[1:, 18:21], tcp[:-1])
    np.testing.assert_allclose(obs[1:, 22:25], obj[:-1])
    untouched = np.ones(39, bool)
    untouched[[*range(0, 3), *range(4, 7), *range(18, 21), *range(22, 25), *range(36, 39)]] = False
    np.testing.assert_array_equal(obs[:, untouched], worse[:, untouched])  # gripper, quaternions, second object


@pytest.mark.parametrize(
    "reply",
    [
        "tcp: [[0.1,0.2,0.3],[0.1,0.2,0.3],[0.1,0.2,0.3]]\ntarget: [0.7,0.8,0.15]",  # no obj
        "tcp: [[0.1,0.2,0.3],[0.1,0.2,0.3]]\nobj: [[0,0,0],[0,0,0],[0,0,0]]\ntarget: [0.7,0.8,0.15]",  # 2 steps
        "tcp: [[0.1,0.2],[0.1,0.2],[0.1,0.2]]\nobj: [[0,0,0],[0,0,0],[0,0,0]]\ntarget: [0.7,0.8,0.15]",  # 2-D tcp
        "tcp: [[0.1,0.2,0.3],[0.1,0.2,0.3],[0.1,0.2,0.3]]\nobj: [[0,0,0],[0,0,0],[0,0,0]]\ntarget: [0.7,0.8",
        "I would rather not.",
    ],
)
def test_unusable_imagined_trajectories_are_rejected(reply):
    assert parse_trajectory(DOOR, reply, 3) is None


def test_scripted_imagination_moves_the_hand_then_the_object_at_one_centimetre_a_step():
    obs = np.zeros((4, 39), np.float32)
    obs[0, 4:7], obs[0, 36:39] = [0.015, 0, 0], [0.015, 0.02, 0]  # tcp at the origin
    out = scripted_imagination(DOOR, obs)
    # step 1: 1.5 cm from obj, move 1 cm towards it; then touching: both move 1 cm a step towards the target
    np.testing.assert_allclose(out["tcp"], [[0, 0, 0], [0.01, 0, 0], [0.01, 0.01, 0], [0.01, 0.02, 0]], atol=1e-7)
    np.testing.assert_allclose(out["obj"], [[0.015, 0, 0], [0.015, 0, 0], [0.015, 0.01, 0], [0.015, 0.02, 0]])
    reach = scripted_imagination(task_text("metaworld:reach-v3", 39), obs)  # straight to the target: (0.6, 0.8) cm
    assert "obj" not in reach
    np.testing.assert_allclose(reach["tcp"][:, :2], [[0, 0], [0.006, 0.008], [0.012, 0.016], [0.015, 0.02]], atol=1e-7)


def test_self_augmentation_adds_the_imagined_segment_over_the_worse_one():
    queries = _queries(3)
    imagined = {"tcp": np.full((3, 3), 0.3), "obj": np.full((3, 3), 0.4), "target": np.array([0.1, 0.2, 0.3])}
    labeller = HandLabeller(_answers([1, np.nan, 0], replies=["a", "b", "c"]), trajectories=[imagined, None])
    feedback = Labelling(labeller, DOOR, double_checking=False, self_augment=True)
    out = feedback(queries)
    assert labeller.asked[1:] == [(0, 1, "a"), (2, 0, "c")]  # pair 0: segment 1 preferred; pair 2: segment 0
    assert out.keep.tolist() == [0, 2]
    # pair 0's worse side is segment 0; pair 2's imagination failed: one imagined pair
    np.testing.assert_array_equal(out.imagined_worse["obs"], queries.seg0["obs"][[0]])
    np.testing.assert_array_equal(out.imagined_worse["action"], queries.seg0["action"][[0]])
    np.testing.assert_array_equal(out.imagined_better["action"], queries.seg0["action"][[0]])
    np.testing.assert_array_equal(out.imagined_better["obs"][0], rebuild_states(DOOR, queries.seg0["obs"][0], imagined))
    assert (feedback.counts.imagine_asked, feedback.counts.imagine_failed) == (2, 1)


def _verdict_or_trajectory(body: dict, verdicts: list[str]) -> dict:
    """The stub's answers: the next verdict to an evaluator prompt; a trajectory of 3 steps to a generation one."""
    if len(body["messages"]) == 1:
        return chat_completion(f"Trajectory analysis...\n{verdicts.pop(0)}")
    start = re.search(r"tcp: (\[[^\]]*\])", body["messages"][2]["content"]).group(1)
    return chat_completion(f"tcp: [{start},{start},{start}]\nobj: [[0,0,0],[0,0,0],[0,0,0]]\ntarget: [0.1,0.2,0.3]")


@pytest.fixture
def stub():
    verdicts: list[str] = []
    server = StubHTTP(lambda body: _verdict_or_trajectory(body, verdicts))
    server.verdicts, server.url = verdicts, f"{server.root}/v1"
    yield server
    server.close()


def _options(**kw) -> FeedbackConfig:
    return FeedbackConfig(**{"labeller": "scripted", "model": "stub", "timeout_s": 0.5, "max_retries": 0, **kw})


def test_openai_labeller_asks_the_papers_prompts_and_survives_error_hang_and_garbage(stub):
    labeller = make_labeller(f"openai:{stub.url}", DOOR, ScriptedTeacher(), _options())
    feedback = Labelling(labeller, DOOR, double_checking=True, self_augment=True)
    queries = _queries(2)
    stub.verdicts += ["2", "0", "1"]  # pair 0: 2, then 1 when swapped (mirror); pair 1: 0 (ambiguous, not rechecked)
    out = feedback(queries)
    assert out.keep.tolist() == [0] and out.labels.tolist() == [1.0] and len(out.imagined_better["obs"]) == 1
    ask, generate = stub.requests[0][2], stub.requests[3][2]
    assert ask["model"] == "stub" and ask["temperature"] == 0.0 and ask["max_tokens"] == 1000
    assert ask["messages"][0]["content"] == evaluator_prompt(DOOR, queries.seg0["obs"][0], queries.seg1["obs"][0])
    assert "Trajectory 1:\ntcp: [[" in ask["messages"][0]["content"] and "\ntarget: [" in ask["messages"][0]["content"]
    # self-augmentation continues pair 0's conversation: the question, the model's answer, the generation prompt
    assert [m["role"] for m in generate["messages"]] == ["user", "assistant", "user"]
    assert generate["messages"][1]["content"] == "Trajectory analysis...\n2"
    assert generate["messages"][2]["content"] == generation_prompt(DOOR, queries.seg1["obs"][0])
    tcp0 = queries.seg1["obs"][0, 0, 0:3].round(4)  # the imagined start is the preferred segment's first tcp
    np.testing.assert_allclose(out.imagined_better["obs"][0, :, 0:3], np.tile(tcp0, (3, 1)), atol=1e-6)
    for mode in ("error", "hang", "garbage"):
        stub.mode = mode
        start = time.monotonic()
        out = feedback(_queries(1, seed=1))
        assert len(out.keep) == 0 and time.monotonic() - start < 2.0
    stub.mode = "ok"
    stub.verdicts += ["I cannot decide between them."]
    assert len(feedback(_queries(1, seed=2)).keep) == 0
    c = feedback.counts
    assert (c.queries, c.errors, c.unparsable, c.ambiguous) == (6, 3, 1, 1)
    assert feedback.metrics()["pref/failures"] == 4


def test_openai_labeller_retries_and_limits_its_request_rate(stub):
    labeller = make_labeller(f"openai:{stub.url}", DOOR, ScriptedTeacher(), _options(max_retries=1))
    stub.mode = "error"
    answers = labeller.label(_queries(1))
    assert answers.failures == ["error"] and len(stub.requests) == 2  # the client retried once
    stub.mode, stub.requests[:] = "ok", []
    stub.verdicts += ["1", "2", "1"]
    paced = make_labeller(f"openai:{stub.url}", DOOR, ScriptedTeacher(), _options(requests_per_minute=600))
    start = time.monotonic()
    assert paced.label(_queries(3)).labels.tolist() == [0.0, 1.0, 0.0]
    assert time.monotonic() - start >= 0.2  # 3 requests at least 0.1 s apart


def test_replay_reproduces_recorded_answers_and_imaginations_without_the_endpoint(stub, tmp_path):
    record = tmp_path / "labels.jsonl"
    live = make_labeller(f"openai:{stub.url}", DOOR, ScriptedTeacher(), _options(), record=record)
    stub.verdicts += ["2", "1", "0", "1", "garbage"]  # 1, 0, ambiguous; swapped: pair 0 mirrors, pair 1 garbage
    queries = _queries(3)
    recorded = Labelling(live, DOOR, double_checking=True, self_augment=True)(queries)
    stub.close()
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["label"] * 3 + ["label"] * 2 + ["imagine"]
    assert [r["label"] for r in rows[:3]] == [1.0, 0.0, None] and rows[2]["failure"] is None
    assert rows[4]["failure"] == "unparsable" and rows[4]["reply"] == "Trajectory analysis...\ngarbage"
    replayed = Labelling(ReplayLabeller(record), DOOR, double_checking=True, self_augment=True)(queries)
    assert recorded.keep.tolist() == replayed.keep.tolist() == [0]
    np.testing.assert_array_equal(recorded.labels, replayed.labels)
    np.testing.assert_array_equal(recorded.imagined_better["obs"], replayed.imagined_better["obs"])
    other = ReplayLabeller(record)
    with pytest.raises(ValueError, match=r"labels\.jsonl:1: recorded a label of pair .* the runs diverged"):
        other.label(_queries(1, seed=5))


def test_recorder_cuts_its_file_back_to_the_checkpoint_on_resume(tmp_path):
    record = tmp_path / "labels.jsonl"
    recorder = Recorder(ScriptedLabeller(ScriptedTeacher(), DOOR, seed=0), record)
    recorder.label(_queries(2))
    state = recorder.state()
    recorder.label(_queries(3, seed=1))  # answered after the checkpoint: a killed run leaves these behind
    resumed = Recorder(ScriptedLabeller(ScriptedTeacher(), DOOR, seed=0), record, fresh=False)
    resumed.load_state(state)
    assert len(record.read_text().splitlines()) == 2 and resumed.rows == 2


def _model_that_answers_2(path):
    """A nano Llama wired by hand to answer "2" then stop: blocks silenced, so the last token's embedding decides
    the next token; every token embeds to e0, which the head reads as "2", and "2" embeds to e1, read as EOS."""
    from reasonrl.models import arith_tokenizer, tiny_model

    tokenizer = arith_tokenizer()
    model = tiny_model(tokenizer, "nano", seed=0)
    model.config.max_position_embeddings = 4096  # room for the ~750-token prompt (rotary positions need no table)
    model.config.tie_word_embeddings = False
    two, eos = tokenizer.convert_tokens_to_ids("2"), tokenizer.eos_token_id
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight
        embed.zero_()
        embed[:, 0] = 1.0
        embed[two] = 0.0
        embed[two, 1] = 1.0
        model.lm_head.weight = torch.nn.Parameter(torch.zeros_like(embed))
        model.lm_head.weight[two, 0] = model.lm_head.weight[eos, 1] = 1.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def test_hf_labeller_answers_with_a_local_model_greedily(tmp_path, nano_dir):
    _model_that_answers_2(tmp_path)
    options = _options(max_tokens=6)
    labeller = make_labeller(f"hf:{tmp_path}", PENDULUM, ScriptedTeacher(), options)
    answers = labeller.label(_queries(2, length=2, obs_dim=3))
    assert answers.replies == ["2", "2"] and answers.labels.tolist() == [1.0, 1.0]  # segment 1 preferred
    assert answers.failures == [None, None]
    small = make_labeller(f"hf:{nano_dir}", PENDULUM, ScriptedTeacher(), options)  # a 512-token context
    assert small.label(_queries(2, length=2, obs_dim=3)).failures == ["error", "error"]  # too long: counted


def test_feedback_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match=r"feedback\.labeller='gpt'; choose scripted, openai:BASE_URL"):
        load_control_config(None, ["feedback.labeller=gpt"])
    with pytest.raises(ConfigError, match=r"feedback\.labeller='scripted:x'"):
        load_control_config(None, ["feedback.labeller=scripted:x"])
    with pytest.raises(ConfigError, match=r"needs feedback\.model"):
        load_control_config(None, ["feedback.labeller=openai:http://127.0.0.1:8000/v1"])
    with pytest.raises(ConfigError, match=r"pref\.double_check was renamed feedback\.double_check"):
        load_control_config(None, ["pref.double_check=true"])
    cfg = load_control_config(None, ["feedback.labeller=openai:http://127.0.0.1:8000/v1", "feedback.model=m"])
    assert cfg.feedback.labeller == "openai:http://127.0.0.1:8000/v1"
    with pytest.raises(ValueError, match=r"needs a goal sentence for HalfCheetah-v5: set feedback\.goal"):
        make_labeller("openai:http://127.0.0.1:1/v1", task_text("HalfCheetah-v5", 17), ScriptedTeacher(), _options())
    with pytest.raises(FileNotFoundError, match=r"replay:missing\.jsonl"):
        make_labeller("replay:missing.jsonl", DOOR, ScriptedTeacher(), _options())
