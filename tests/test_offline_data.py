"""Offline datasets and preferences (reasonrl/control/offline_data.py, offline_reward.py, collect.py): readers and
their errors, segment labels, and datasets collected from a tiny SAC run at D4RL's levels."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from reasonrl.control.offline_data import (
    OfflineDataset,
    from_arrays,
    load_offline_dataset,
    normalized_score,
)
from reasonrl.control.offline_reward import Preferences, load_preferences, scripted_preferences, segment_starts
from reasonrl.control.preferences import ScriptedTeacher


def _arrays(n=12, ends=(4, 9)):
    rng = np.random.default_rng(0)
    terminals = np.zeros(n, bool)
    terminals[ends[0]] = True
    timeouts = np.zeros(n, bool)
    timeouts[list(ends[1:])] = True
    return {
        "observations": rng.normal(size=(n, 3)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        "rewards": np.arange(n, dtype=np.float32),
        "next_observations": rng.normal(size=(n, 3)).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }


def test_npz_round_trip_and_episode_bounds(tmp_path):
    dataset = from_arrays(_arrays(), "test", env_id="Hopper-v5")
    loaded = load_offline_dataset(dataset.save_npz(tmp_path / "d.npz"))
    assert loaded.env_id == "Hopper-v5"
    for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(dataset, key))
    starts, ends = loaded.episode_bounds()
    assert starts.tolist() == [0, 5, 10] and ends.tolist() == [5, 10, 12]  # the last episode ends at the last row
    assert loaded.episode_returns().tolist() == [10.0, 35.0, 21.0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("terminals"), "missing key(s) terminals"),
        (lambda a: a.update(rewards=a["rewards"][:-1]), "rewards has 11 rows, observations 12"),
        (lambda a: a.update(next_observations=a["next_observations"][:, :2]), "next_observations has shape"),
        (lambda a: a.update(actions=np.full((12, 2), np.nan)), "actions holds NaN"),
        (lambda a: a.update(rewards=np.zeros((12, 2))), "rewards must hold one value per row"),
    ],
)
def test_a_bad_dataset_file_gives_one_clear_error(tmp_path, change, message):
    arrays = _arrays()
    change(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        load_offline_dataset(tmp_path / "bad.npz")
    assert "bad.npz" in str(e.value)


def test_unreadable_or_unknown_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_offline_dataset(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match=re.escape("not a readable .npz")):
        load_offline_dataset(tmp_path / "junk.npz")
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(ValueError, match=re.escape("expected a .npz, .hdf5 or .h5")):
        load_offline_dataset(tmp_path / "data.csv")


def test_d4rl_hdf5_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    arrays = _arrays()
    with h5py.File(tmp_path / "d4rl.hdf5", "w") as f:
        for k, v in arrays.items():
            f[k] = v[:, None] if k in ("rewards", "terminals") else v  # D4RL stores some as (N, 1)
    loaded = load_offline_dataset(tmp_path / "d4rl.hdf5")
    np.testing.assert_array_equal(loaded.rewards, arrays["rewards"])
    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f["observations"] = arrays["observations"]
    with pytest.raises(ValueError, match="missing key"):
        load_offline_dataset(tmp_path / "bad.hdf5")


def test_missing_next_observations_are_the_next_rows():
    arrays = _arrays()
    del arrays["next_observations"]
    dataset = from_arrays(arrays, "test")
    np.testing.assert_array_equal(dataset.next_observations[:4], arrays["observations"][1:5])
    assert dataset.has_next.tolist() == [True] * 9 + [False] + [True, False]  # truncated ends: unknown


def test_normalized_score_uses_d4rl_reference_returns():
    assert normalized_score("Hopper-v5", 3234.3) == pytest.approx(100.0)
    assert normalized_score("Walker2d-v5", 1.629008) == pytest.approx(0.0)
    assert normalized_score("HalfCheetah-v5", (12135.0 - 280.178953) / 2) == pytest.approx(50.0)
    assert normalized_score("Pendulum-v1", 0.0) is None


def test_scripted_preferences_stay_inside_episodes_and_follow_true_returns():
    dataset = from_arrays(_arrays(n=30, ends=(9, 19)), "test")
    starts = segment_starts(dataset, 4)
    assert set(starts) == set(range(0, 7)) | set(range(10, 17)) | set(range(20, 27))
    prefs = scripted_preferences(dataset, 50, 4, ScriptedTeacher(), np.random.default_rng(0))
    assert set(prefs.start0) | set(prefs.start1) <= set(starts)
    # rewards are the row numbers: the later segment has the larger return
    expected = (prefs.start1 > prefs.start0).astype(np.float32)
    same = prefs.start1 == prefs.start0
    np.testing.assert_array_equal(prefs.labels[~same], expected[~same])
    with pytest.raises(ValueError, match=re.escape("lower pref.segment")):
        scripted_preferences(dataset, 5, 11, ScriptedTeacher(), np.random.default_rng(0))


def test_preference_file_round_trip_and_errors(tmp_path):
    dataset = from_arrays(_arrays(n=30, ends=(9, 19)), "test")
    prefs = Preferences(np.array([0, 10]), np.array([20, 3]), np.array([1.0, 0.5], np.float32), 4)
    loaded = load_preferences(prefs.save(tmp_path / "p.npz"), dataset)
    assert loaded.start1.tolist() == [20, 3] and loaded.labels.tolist() == [1.0, 0.5] and loaded.segment == 4
    np.savez(tmp_path / "nokey.npz", start0=[0], start1=[1], segment=4)
    with pytest.raises(ValueError, match="missing key"):
        load_preferences(tmp_path / "nokey.npz", dataset)
    np.savez(tmp_path / "cross.npz", start0=[0, 8], start1=[1, 2], labels=[1.0, 0.0], segment=4)
    with pytest.raises(ValueError, match="cross an episode end"):
        load_preferences(tmp_path / "cross.npz", dataset)
    np.savez(tmp_path / "label.npz", start0=[0], start1=[1], labels=[0.7], segment=4)
    with pytest.raises(ValueError, match=re.escape("labels must be 0, 0.5 or 1")):
        load_preferences(tmp_path / "label.npz", dataset)


def test_concatenate_keeps_both_parts_episodes():
    a = from_arrays(_arrays(n=10, ends=(4, 9)), "a")
    joined = OfflineDataset.concatenate([a, a])
    assert len(joined) == 20 and joined.episode_bounds()[0].tolist() == [0, 5, 10, 15]


# ---- collected datasets (need the control extra)


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory):
    pytest.importorskip("gymnasium", reason="needs the control extra: pip install 'reasonrl[control]'")
    from reasonrl.control.config import load_control_config
    from reasonrl.control.loop import ControlRun

    overrides = ["env.id=Hopper-v5", "train.steps=150", "sac.batch_size=8", "sac.hidden=8", "sac.buffer_size=120"]
    overrides += ["train.eval_episodes=1"]
    overrides += ["train.progress=false", "train.plots=false"]
    run = ControlRun(load_control_config(None, overrides), tmp_path_factory.mktemp("sac") / "run")
    run.train()
    return run


def test_medium_replay_is_the_runs_replay_buffer_oldest_first(sac_run):
    from reasonrl.control.collect import collect

    dataset = collect("medium-replay", 0, policy=sac_run.run_dir)
    buffer = sac_run.buffer  # 150 steps into a ring of 120: the oldest transition sits at ptr
    assert len(dataset) == buffer.size == 120 and buffer.ptr == 30 and dataset.env_id == "Hopper-v5"
    oldest_first = {k: np.roll(getattr(buffer, k), -buffer.ptr, axis=0) for k in ("true_reward", "obs", "episode")}
    np.testing.assert_array_equal(dataset.rewards, oldest_first["true_reward"])
    np.testing.assert_array_equal(dataset.observations, oldest_first["obs"])
    episode = oldest_first["episode"]
    ends = np.flatnonzero(np.append(episode[1:] != episode[:-1], True))
    assert np.flatnonzero(dataset.terminals | dataset.timeouts).tolist() == ends.tolist()
    terminated = np.roll(buffer.terminated, -buffer.ptr)
    np.testing.assert_array_equal(dataset.terminals[ends], terminated[ends] > 0)


def test_rollout_levels_and_minari_round_trip(sac_run, tmp_path):
    pytest.importorskip("minari")
    from reasonrl.control.collect import collect, save_dataset

    medium = collect("medium", 60, policy=sac_run.run_dir, noise=0.1)
    assert len(medium) == 60 and (medium.timeouts[-1] or medium.terminals[-1])
    assert np.abs(medium.actions).max() <= 1.0
    mixed = collect("medium-expert", 60, policy=sac_run.run_dir, expert=sac_run.run_dir)
    assert len(mixed) == 60
    path = save_dataset(mixed, tmp_path / "minari", "medium-expert")
    assert path.name == "hopper-medium-expert-v0"
    loaded = load_offline_dataset(path)
    for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
        np.testing.assert_allclose(getattr(loaded, key), getattr(mixed, key), rtol=1e-6)
    assert loaded.env_id == "Hopper-v5"


def test_collect_cli_writes_npz_and_reports(sac_run, tmp_path, capsys):
    from reasonrl import cli

    out = tmp_path / "random.npz"
    assert cli.main(["control", "collect", "random", "--env", "Hopper-v5", "--steps", "40", "--output", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["transitions"] == 40 and report["level"] == "random"
    assert len(load_offline_dataset(out)) == 40
    assert cli.main(["control", "collect", "medium", "--steps", "10", "--output", str(out)]) == 2
    assert "needs --policy" in capsys.readouterr().err
