"""`reasonrl control` runs on Pendulum-v1 (CPU, fixed seeds): PEBBLE's bookkeeping, and resume — after a clean stop
or a SIGKILL — reproducing the uninterrupted run's metrics exactly."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from stub_http import StubHTTP, chat_completion

pytest.importorskip("gymnasium", reason="needs the control extra: pip install 'reasonrl[control]'")

from reasonrl.control.config import load_control_config
from reasonrl.control.loop import ControlRun
from reasonrl.tracking import read_metrics

TINY = [
    "train.eval_every=200",
    "train.eval_episodes=1",
    "train.save_every=200",
    "train.progress=false",
    "train.plots=false",
    "sac.batch_size=16",
    "sac.hidden=16",
    "pref.enabled=true",
    "pref.unsup_steps=100",
    "pref.segment=10",
    "pref.mb_size=8",
    "pref.feedback_interval=200",
    "pref.max_feedback=24",
    "pref.epochs=2",
    "pref.hidden=16",
    "pref.sampling=disagreement",
]


def _metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without wall-clock rates, the only values a resume may change."""
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_metrics(run_dir)]


def test_pebble_run_labels_relabels_and_hides_the_true_reward(tmp_path):
    run = ControlRun(load_control_config(None, TINY + ["train.steps=600", "train.plots=true"]), tmp_path / "run")
    run.train()
    assert run.feedback == 24 and run.rounds == 3  # 8 queries at steps 100 (unsup_steps end), 300, 500
    size = run.buffer.size
    expected = run._learned_reward(run.buffer.obs[:size], run.buffer.action[:size])
    # transitions stored after the last relabel got the same model's reward when they were added
    np.testing.assert_allclose(run.buffer.reward[:size], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(run.buffer.reward[:size], run.buffer.true_reward[:size])
    last = [r for r in read_metrics(run.run_dir) if "pref/feedback" in r][-1]
    assert last["pref/label_accuracy"] == 1.0  # the oracle teacher
    assert last["pref/labels"] == 24
    assert (run.run_dir / "plots" / "eval_return.png").is_file()


def test_metaworld_reach_with_the_17_dim_state_reward(tmp_path):
    pytest.importorskip("metaworld")
    overrides = TINY + ["env.id=metaworld:reach-v3", "env.max_episode_steps=50", "train.steps=250"]
    overrides += ["pref.obs_slice=metaworld17", "pref.use_action=false", "pref.unsup_steps=50", "pref.mb_size=4"]
    overrides += ["feedback.double_check=true", "feedback.self_augment=true"]  # RL-SaLLM-F, scripted oracle
    run = ControlRun(load_control_config(None, overrides), tmp_path / "mw")
    final = run.train()
    assert run.reward_model.net.net[0].weight.shape[1] == 17  # (members, in, out): the sliced state alone
    assert run.feedback == 4  # one round, at step 150 (learning_starts + unsup_steps)
    assert final["eval/success"] in (0.0, 0.5, 1.0)  # two evaluation episodes
    kept = run.labelling.counts.queries - run.labelling.counts.ambiguous  # the oracle always mirrors itself
    record = [r for r in read_metrics(run.run_dir) if "pref/imagined" in r][-1]
    assert record["pref/labels"] == record["pref/imagined"] == kept and record["pref/imagined_share"] == 0.5
    assert record["pref/label_accuracy"] == 1.0  # imagined pairs are left out
    st = run.prefs.state()
    assert st["imagined"].tolist() == [False] * kept + [True] * kept and (st["labels"][kept:] == 1).all()
    # an imagined segment moves the hand 1 cm a step: its tcp (reward input 0:3) and previous tcp (7:10) agree
    np.testing.assert_allclose(st["seg1"][kept:, 1:, 7:10], st["seg1"][kept:, :-1, 0:3], atol=1e-6)


def _llm_stub(body: dict) -> dict:
    """A deterministic chat endpoint: a verdict (1, 2, 0 or nonsense) chosen by the prompt's hash, and to a
    generation prompt a trajectory that stays at its start state."""
    messages = body["messages"]
    if len(messages) == 1:
        return chat_completion(["1", "2", "0", "no idea"][zlib.crc32(messages[0]["content"].encode()) % 4])
    start = re.search(r"obs: (\[[^\]]*\])", messages[2]["content"]).group(1)
    return chat_completion("obs: [" + ",".join([start] * 10) + "]")


def test_a_recorded_llm_run_replays_exactly_without_the_endpoint(tmp_path):
    server = StubHTTP(_llm_stub)
    llm = TINY + ["train.steps=400", f"feedback.labeller=openai:{server.root}/v1", "feedback.model=stub"]
    llm += ["feedback.double_check=true", "feedback.self_augment=true", "feedback.record=true"]
    ControlRun(load_control_config(None, llm), tmp_path / "llm").train()
    server.close()
    record = tmp_path / "llm" / "labels.jsonl"
    replay = TINY + ["train.steps=400", f"feedback.labeller=replay:{record}"]
    replay += ["feedback.double_check=true", "feedback.self_augment=true"]
    ControlRun(load_control_config(None, replay), tmp_path / "replay").train()
    assert _metrics(tmp_path / "replay") == _metrics(tmp_path / "llm")
    last = [r for r in read_metrics(tmp_path / "llm") if "pref/feedback" in r][-1]
    assert last["pref/feedback"] == 16 and last["pref/unparsable"] > 0 and last["pref/imagined"] > 0


def test_a_dead_endpoint_costs_queries_not_the_run(tmp_path):
    server = StubHTTP(lambda body: chat_completion("2"))
    server.mode = "error"
    dead = TINY + ["train.steps=400", f"feedback.labeller=openai:{server.root}/v1", "feedback.model=stub"]
    run = ControlRun(load_control_config(None, dead + ["feedback.max_retries=0"]), tmp_path / "dead")
    run.train()
    server.close()
    assert run.feedback == 16 and run.labelling.counts.errors == 16  # two rounds of 8 queries, every call failed
    assert run.rounds == 0 and run._in_unsup_phase()  # no reward model trained: SAC stays on state entropy
    last = [r for r in read_metrics(run.run_dir) if "pref/feedback" in r][-1]
    assert (last["pref/labels"], last["pref/failures"]) == (0, 16)


def test_resume_continues_exactly_like_the_uninterrupted_run(tmp_path):
    noisy = TINY + ["pref.teacher.name=mistake", "pref.teacher.eps_mistake=0.3", "feedback.double_check=true"]
    ControlRun(load_control_config(None, noisy + ["train.steps=800"]), tmp_path / "full").train()
    ControlRun(load_control_config(None, noisy + ["train.steps=400"]), tmp_path / "part").train()
    resumed = ControlRun(load_control_config(None, noisy + ["train.steps=800"]), tmp_path / "part", resume=True)
    assert resumed.step == 400
    resumed.train()
    assert _metrics(tmp_path / "part") == _metrics(tmp_path / "full")


def test_sigterm_ends_the_episode_saves_and_stops(tmp_path):
    run = ControlRun(load_control_config(None, TINY + ["train.steps=600", "train.save_every=0"]), tmp_path / "run")
    run_episode = run._run_episode

    def episode_then_sigterm():
        record = run_episode()
        os.kill(os.getpid(), signal.SIGTERM)
        return record

    run._run_episode = episode_then_sigterm
    run.train()
    assert run.stopped_at == 200
    assert [p.name for p in (run.run_dir / "checkpoints").iterdir()] == ["step_000200"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the previous handler is back


def _train(overrides: list[str], run_dir: Path) -> None:
    ControlRun(load_control_config(None, overrides), run_dir).train()


def test_sigkill_then_resume_reproduces_the_uninterrupted_metrics(tmp_path, capsys):
    from reasonrl import cli

    overrides, killed = TINY + ["train.steps=600", "feedback.record=true"], tmp_path / "killed"
    # a forked child (torch already imported: no start-up cost) trains until its checkpoint of step 200, then dies
    child = multiprocessing.get_context("fork").Process(target=_train, args=(overrides, killed))
    child.start()
    deadline = time.monotonic() + 60
    while not (killed / "checkpoints" / "step_000200").is_dir() and child.is_alive():
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert cli.main(["control", "train", "--quiet", "--resume", str(killed)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 600
    _train(overrides, tmp_path / "full")
    assert _metrics(killed) == _metrics(tmp_path / "full")
    # the labels answered after the checkpoint by the killed run are cut from the record, then asked again
    assert (killed / "labels.jsonl").read_text() == (tmp_path / "full" / "labels.jsonl").read_text()
    assert cli.main(["control", "eval", str(killed), "--episodes", "1"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["eval/return"] == pytest.approx(read_metrics(killed)[-1]["eval/return"], rel=1e-5)
