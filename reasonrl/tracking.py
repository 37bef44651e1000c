"""Metrics logging: `RUN_DIR/metrics.jsonl` always, TensorBoard / W&B / trackio on request, and a progress bar.

metrics.jsonl is the source of truth (plots and experiment scripts read it); one JSON object per `log` call,
`{"step": 12, "reward": 0.5, ...}`, with NaN and infinities written as null. On resume, lines after the
resumed step's first line are dropped so that no step appears twice.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

logger = logging.getLogger("reasonrl")

METRICS_FILE = "metrics.jsonl"
# report_to value -> (module to import, package to pip install)
_IMPORTS = {
    "tensorboard": ("torch.utils.tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "trackio": ("trackio", "trackio"),
}


class Tracker:
    """Writes each step's metrics to metrics.jsonl and to the backends named in `report_to`.

    `resume_step=k` continues a run: lines of metrics.jsonl after the first line of step k are dropped and new
    lines appended.
    Without it the run starts afresh and an existing metrics.jsonl is replaced.
    """

    def __init__(
        self,
        run_dir: str | Path,
        report_to: list[str],
        config_dict: dict,
        total_steps: int,
        progress: bool = True,
        resume_step: int | None = None,
    ) -> None:
        unknown = [r for r in report_to if r not in _IMPORTS]
        if unknown:
            raise ValueError(f"unknown report_to value(s) {unknown}; choose from {list(_IMPORTS)}")
        # Import every backend before touching any file, so a missing package fails fast and leaves the run as it was.
        modules = {r: _require(*_IMPORTS[r]) for r in report_to}
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / METRICS_FILE
        if resume_step is not None:
            _truncate_after(path, resume_step)
        # Open for the run's lifetime (one line per log call); close() closes it.
        self._file = open(path, "a" if resume_step is not None else "w", encoding="utf-8")  # noqa: SIM115
        self._tb = self._wandb = self._trackio = None
        name = self.run_dir.name
        project = os.environ.get("WANDB_PROJECT", "reasonrl")
        if "tensorboard" in modules:
            # purge_step drops TensorBoard events of steps that a resume repeats.
            purge = resume_step + 1 if resume_step is not None else None
            self._tb = modules["tensorboard"].SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge)
            self._tb.add_text("config", "```\n" + json.dumps(config_dict, indent=2, default=str) + "\n```")
        if "wandb" in modules:
            self._wandb = modules["wandb"].init(project=project, name=name, dir=str(self.run_dir), config=config_dict)
        if "trackio" in modules:
            self._trackio = modules["trackio"]
            self._trackio.init(project=os.environ.get("TRACKIO_PROJECT", project), name=name, config=config_dict)
        self._progress = self._task = None
        if progress:
            self._start_progress(total_steps, resume_step or 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record `metrics` for `step` everywhere and refresh the progress bar."""
        if "step" in metrics:
            raise ValueError("'step' is reserved for the step number; pass it as the `step` argument")
        clean = {k: _clean(v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        self._file.flush()
        finite = {k: v for k, v in clean.items() if v is not None}
        if self._tb is not None:
            for k, v in finite.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(finite, step=step)
        if self._trackio is not None:
            self._trackio.log(finite, step=step)
        if self._progress is not None:
            fields = {f: _fmt(clean[k]) for f, k in (("reward", "reward"), ("accuracy", "eval/accuracy")) if k in clean}
            if "turns/mean" in clean:  # multi-turn runs; single-turn runs leave the column blank
                fields["turns"] = f"turns {_fmt(clean['turns/mean'])}"
            self._progress.update(self._task, completed=step, **fields)

    def close(self) -> None:
        """Flush and close every sink; safe to call twice."""
        sinks = ((self._progress, "stop"), (self._tb, "close"), (self._wandb, "finish"), (self._trackio, "finish"))
        for sink, method in sinks:
            if sink is not None:
                getattr(sink, method)()
        self._progress = self._tb = self._wandb = self._trackio = None
        self._file.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_progress(self, total_steps: int, start: int) -> None:
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("reward {task.fields[reward]}"),
            TextColumn("acc {task.fields[accuracy]}"),
            TextColumn("{task.fields[turns]}"),
            console=Console(stderr=True),
        )
        self._task = self._progress.add_task(
            "train", total=total_steps, completed=start, reward="-", accuracy="-", turns=""
        )
        self._progress.start()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of `RUN_DIR/metrics.jsonl`, in order; a torn line (crash mid-write) is skipped with a warning."""
    path = Path(run_dir) / METRICS_FILE
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s:%d is not valid JSON (torn write?); skipped", path, i)
    return records


def _truncate_after(path: Path, step: int) -> None:
    """Keep the records before `step` and the first record of `step`: the checkpoint of a step is saved right after
    that step's first record, so later ones (the final eval) are redone by the resumed run and must not stay twice.
    Written to a temporary file then renamed, so a crash loses nothing."""
    if not path.exists():
        return
    kept, seen = [], False
    for record in read_metrics(path.parent):
        at = record.get("step", 0)
        if at < step or (at == step and not seen):
            kept.append(json.dumps(record) + "\n")
            seen = seen or at == step
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _clean(value: Any) -> float | int | None:
    """A JSON-safe number: ints stay ints, floats keep 6 significant digits, NaN and infinities become None."""
    if hasattr(value, "item"):  # torch / numpy scalars
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    value = float(value)
    if not math.isfinite(value):
        return None
    return float(f"{value:.6g}")


def _fmt(value: float | None) -> str:
    return "nan" if value is None else f"{value:.3f}"


def _require(module: str, package: str) -> Any:
    """Import an optional backend, or fail at construction with the install command rather than mid-run."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"report_to includes {package!r} but it is not installed: pip install {package}") from e
