"""Offline runs (`reasonrl control train algo=dtr|dt|iql`, reasonrl/control/offline_loop.py) on a tiny Hopper-v5
dataset, CPU and fixed seeds: a SIGKILL + --resume reproduces the uninterrupted run's metrics exactly, preference
files are reusable, and mismatched datasets fail with one clear error."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gymnasium", reason="needs the control extra: pip install 'reasonrl[control]'")

from reasonrl.control.collect import collect
from reasonrl.control.config import load_control_config
from reasonrl.control.offline_loop import PREFERENCES_FILE, OfflineRun
from reasonrl.tracking import read_metrics

TINY = [
    "env.id=Hopper-v5",
    "env.max_episode_steps=20",
    "train.log_every=10",
    "train.eval_every=20",
    "train.save_every=20",
    "train.eval_episodes=1",
    "train.progress=false",
    "train.plots=false",
    "dtr.context=5",
    "dtr.embed=16",
    "dtr.layers=1",
    "dtr.heads=2",
    "dtr.batch_size=8",
    "dtr.critic_hidden=16",
    "dtr.copies=2",
    "dtr.ema_start=10",
    "iql.hidden=16",
    "iql.batch_size=8",
    "pref.enabled=true",
    "pref.segment=8",
    "pref.max_feedback=40",
    "pref.epochs=2",
    "pref.hidden=16",
]


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "hopper-random.npz"
    return collect("random", 400, env_id="Hopper-v5").save_npz(path)


def _metrics(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read_metrics(run_dir)]


def _train(overrides: list[str], run_dir: Path) -> None:
    OfflineRun(load_control_config(None, overrides), run_dir).train()


def test_dtr_sigkill_then_resume_reproduces_the_uninterrupted_metrics(dataset_path, tmp_path, capsys):
    from reasonrl import cli

    overrides, killed = [*TINY, "algo=dtr", f"data.path={dataset_path}", "train.steps=60"], tmp_path / "killed"
    child = multiprocessing.get_context("fork").Process(target=_train, args=(overrides, killed))
    child.start()
    deadline = time.monotonic() + 60
    while not (killed / "checkpoints" / "step_000020").is_dir() and child.is_alive():
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert cli.main(["control", "train", "--quiet", "--resume", str(killed)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 60
    _train(overrides, tmp_path / "full")
    resumed, full = _metrics(killed), _metrics(tmp_path / "full")
    assert [r["step"] for r in full] == [0, 10, 20, 30, 40, 50, 60]
    assert resumed == full
    assert full[0]["pref/labels"] == 40 and "reward/true_corr" in full[0]
    assert {"dtr/critic_loss", "dtr/q_loss", "eval/normalized_score"} <= set(full[-1])
    assert cli.main(["control", "eval", str(killed), "--episodes", "1"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["eval/return"] == pytest.approx(full[-1]["eval/return"], rel=1e-5)


def test_dt_and_iql_on_a_saved_preference_file_with_and_without_zscore(dataset_path, tmp_path):
    base = [*TINY, f"data.path={dataset_path}", "train.steps=10", "train.eval_every=0"]
    first = OfflineRun(load_control_config(None, [*base, "algo=dt"]), tmp_path / "dt")
    first.train()
    assert "dtr/q_loss" not in read_metrics(first.run_dir)[-1]
    prefs = first.run_dir / PREFERENCES_FILE
    again = [*base, "algo=iql", f"data.preferences={prefs}"]
    reused = OfflineRun(load_control_config(None, again), tmp_path / "iql")
    with np.load(prefs) as given, np.load(reused.run_dir / PREFERENCES_FILE) as used:
        assert all(np.array_equal(given[k], used[k]) for k in ("start0", "start1", "labels", "segment"))
    assert abs(reused.data.rewards.mean()) < 1e-5  # z-scored members average to mean 0
    plain = OfflineRun(load_control_config(None, [*again, "data.zscore=false"]), tmp_path / "plain")
    assert not np.allclose(plain.data.rewards, reused.data.rewards)
    true_reward = OfflineRun(load_control_config(None, [*base, "algo=iql", "pref.enabled=false"]), tmp_path / "t")
    np.testing.assert_array_equal(true_reward.data.rewards, true_reward.dataset.rewards)
    reused.train()
    assert "iql/value_loss" in read_metrics(reused.run_dir)[-1]


def test_mismatched_env_and_missing_data_path_are_clear_errors(dataset_path, tmp_path, capsys):
    from reasonrl import cli

    with pytest.raises(ValueError, match=re.escape("set env.id=Hopper-v5")):
        OfflineRun(load_control_config(None, ["algo=dtr", f"data.path={dataset_path}"]), tmp_path / "x")
    with pytest.raises(ValueError, match=re.escape("set data.path")):
        load_control_config(None, ["algo=iql"])
    assert cli.main(["control", "train", "algo=dtr", "env.id=Hopper-v5", f"data.path={tmp_path / 'no.npz'}"]) == 2
    assert "no such file" in capsys.readouterr().err
