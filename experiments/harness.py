"""Shared by the experiment scripts: CLI runs on one thread with their CPU time, greedy scoring through `reasonrl
eval`, a validation split that excludes the test set, and confidence intervals."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from reasonrl.checkpoint import latest_checkpoint
from reasonrl.worlds.arith import ArithWorld

ROOT = Path(__file__).resolve().parents[1]
PYTHON = [sys.executable, "-m", "reasonrl.cli"]
TEST_N = 200  # per level: the test set of `reasonrl train` (8 + 200 + 200 = 408 problems of levels 1-3)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # Student's t


def run_process(args: list[str], log: Path, command: list[str] = PYTHON) -> tuple[int, float]:
    """Run a command (default: the CLI) on one thread; returns its exit status and CPU seconds (user + system)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        proc = subprocess.Popen(command + args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime


def train_run(directory: Path, fresh: list[str], what: str) -> float:
    """Train `directory` to its final model with `reasonrl train` on one thread: the CLI arguments `fresh` for a new
    run, `--resume` for an interrupted one, nothing for a finished one; returns the CPU seconds of every piece of
    the run (summed in DIRECTORY.cpu beside it)."""
    log = directory.parent / f"{directory.name}.log"
    spent = directory.parent / f"{directory.name}.cpu"
    if not (directory / "final").is_dir():
        resume = (directory / "checkpoints").is_dir()
        args = ["train", "--quiet", "--resume", str(directory)] if resume else ["train", "--quiet", *fresh]
        code, cpu = run_process(args, log)
        cpu += float(spent.read_text()) if spent.exists() else 0.0
        spent.write_text(f"{cpu:.1f}")
        if code:
            raise RuntimeError(f"{what} failed; see {log}")
    return float(spent.read_text())


def control_run(directory: Path, fresh: list[str], what: str) -> float:
    """Train `directory` with `reasonrl control train` on one thread: the CLI arguments `fresh` for a new run,
    `--resume` for one with a checkpoint (an interrupted run continues; a finished one resumes to nothing); returns
    the CPU seconds of every piece of the run (summed in DIRECTORY.cpu beside it)."""
    log = directory.parent / f"{directory.name}.log"
    spent = directory.parent / f"{directory.name}.cpu"
    resume = directory.is_dir() and latest_checkpoint(directory) is not None
    args = ["--resume", str(directory)] if resume else ["--output-dir", str(directory), *fresh]
    code, cpu = run_process(["control", "train", "--quiet", *args], log)
    cpu += float(spent.read_text()) if spent.exists() else 0.0
    spent.write_text(f"{cpu:.1f}")
    last = log.read_text().strip().splitlines()[-1] if log.exists() else ""
    if code or "stopped_at_step" in last:
        raise RuntimeError(f"{what} failed or was stopped; see {log}")
    return cpu


def cli_eval(model: Path | str, data: list[str], out: Path, log: Path) -> dict:
    """Greedy accuracy of `model` (`reasonrl eval` with `data` arguments), cached in `out`."""
    if not out.exists():
        code, cpu = run_process(["eval", "--model", str(model), *data], log)
        if code:
            raise RuntimeError(f"eval of {model} failed; see {log}")
        last = log.read_text().strip().splitlines()[-1]
        out.write_text(json.dumps(json.loads(last) | {"cpu_s": cpu}))
    return json.loads(out.read_text())


def validation_file(
    path: Path,
    world: ArithWorld | None = None,
    levels: tuple[int, ...] = (2, 3),
    test_n: int = TEST_N,
    n_per_level: int = 200,
) -> Path:
    """`n_per_level` held-out problems per level (fewer where the level has fewer) that are not in the test set
    (`world.eval_set` of levels 1-3 and `levels`, `test_n` per level): where settings are chosen. The held-out split
    is a hash of the problem text, so neither set is trained on; `data.seed` only reorders draws from the same pool,
    which is why it cannot make a validation split of its own."""
    if path.exists():
        return path
    world = world or ArithWorld((1, 2, 3), seed=0)
    test = {ex.prompt for ex in world.eval_set(sorted({1, 2, 3, *levels}), test_n)}
    rows = []
    for level in levels:
        seen: dict[str, object] = {}
        for index in range(20_000):
            ex = world.to_example(world._draw("eval", index, level))
            if ex.prompt not in test:
                seen.setdefault(ex.prompt, ex)
            if len(seen) == n_per_level:
                break
        rows += [{"prompt": ex.prompt, "answer": ex.answer, "level": ex.level} for ex in seen.values()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return path


def pct(p: float, n: float) -> str:
    """A proportion in percent with its 95% binomial interval (1.96 standard errors) over n items."""
    return f"{100 * p:.1f} ± {196 * math.sqrt(p * (1 - p) / n):.1f}"


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t interval over independent runs (0 for one run)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, T_975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))


def run_all(
    wanted: Callable[[], list[tuple]],
    run: Callable[..., dict],
    done: Callable[[tuple], bool],
    describe: Callable[[tuple, dict], str],
    jobs: int,
) -> list[str]:
    """Run, `jobs` at a time, every run that `wanted()` lists (asked again after each finishes, so runs can wait on
    others) and that is not `done`; returns the failures, which stop only their own run."""
    failed: set[tuple] = set()
    running: dict[Future, tuple] = {}
    messages = []
    with ThreadPoolExecutor(jobs) as pool:
        while True:
            busy = set(running.values())
            for task in wanted():
                if len(running) >= jobs or task in busy or task in failed or done(task):
                    continue
                running[pool.submit(run, *task)] = task
                busy.add(task)
            if not running:
                return messages
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                try:
                    print(describe(task, future.result()), flush=True)
                except Exception:  # one failed run must not stop the others; it is reported at the end
                    failed.add(task)
                    messages.append(f"{task}: {traceback.format_exc(limit=1)}")
                    print(messages[-1], flush=True)
