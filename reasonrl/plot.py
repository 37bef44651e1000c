"""Learning curves from `RUN_DIR/metrics.jsonl` as PNG files, and the writer of generated result pages.

Uses matplotlib's object API with the Agg canvas rather than pyplot, so plotting never touches global
backend state and works headless (CI, servers).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from reasonrl.tracking import METRICS_FILE, read_metrics

logger = logging.getLogger("reasonrl")

# (file stem, title, y label, pattern of the metric names in the group)
_GROUPS = (
    ("reward", "Reward", "mean reward", r"reward"),
    ("accuracy", "Eval accuracy", "accuracy", r"eval/accuracy(/level_\d+)?"),
    ("length", "Completion length", "tokens", r"completions/mean_length"),
    ("turns", "Turns per episode", "policy turns", r"turns/mean|eval/turns"),  # multi-turn worlds
    ("stop_reasons", "Episode stop reasons", "share of episodes", r"episodes/stop_reason/.+"),
    # search episodes (docs/kb.md, docs/autosearch.md): searches per episode, overall and per d_min, train and eval
    ("searches", "Searches per episode", "searches", r"(episodes|eval)/searches(/d_min_\d+)?"),
    (
        "over_search",
        "Over- and under-search",
        "share of episodes",
        r"(episodes|eval)/(over_search_rate|under_search_rate|duplicate_rate)|autosearch/over_search_tc_rate",
    ),
    ("kl", "KL to reference", "kl", r"kl"),
    ("entropy", "Entropy", "entropy", r"entropy"),
    ("perplexity", "Held-out perplexity", "perplexity", r"eval/perplexity"),  # reasonrl pretrain
    # reasonrl control: deterministic-policy episode return and MetaWorld success rate
    ("eval_return", "Eval return", "episode return", r"eval/return"),
    ("success", "Eval success rate", "success rate", r"eval/success"),
    ("normalized_score", "D4RL normalised score", "score (0 random, 100 expert)", r"eval/normalized_score"),
    # train.spectral_every: mean Hill α over all weight matrices and per module type (spectral/monitor.py)
    ("alpha", "Weight spectra: Hill α", "α (lower: heavier tail)", r"spectral/alpha_mean(/.+)?"),
)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write one PNG per metric group present in the run plus `curves.png` with all of them; return the paths.

    `out_dir` defaults to `RUN_DIR/plots`. Groups whose metrics the run never logged are skipped.
    """
    rows = _load(run_dir)
    present = {k for r in rows for k, v in r.items() if v is not None}
    groups = [
        (stem, title, ylabel, sorted((k for k in present if re.fullmatch(pattern, k)), key=_natural))
        for stem, title, ylabel, pattern in _GROUPS
    ]
    groups = [g for g in groups if g[3]]
    if not groups:
        raise ValueError(f"{Path(run_dir) / METRICS_FILE} has none of the plotted metrics; it has {sorted(present)}")
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)

    paths = []
    for stem, title, ylabel, keys in groups:
        fig = _figure((6.4, 4.0))
        _draw(fig.add_subplot(), rows, keys, title, ylabel)
        paths.append(_save(fig, out_dir / f"{stem}.png"))

    cols = min(len(groups), 3)
    nrows = -(-len(groups) // cols)
    fig = _figure((5.0 * cols, 3.6 * nrows))
    for i, (_, title, ylabel, keys) in enumerate(groups):
        _draw(fig.add_subplot(nrows, cols, i + 1), rows, keys, title, ylabel)
    fig.suptitle(Path(run_dir).name)
    paths.append(_save(fig, out_dir / "curves.png"))
    return paths


def plot_runs(run_dirs: Sequence[str | Path], labels: Sequence[str], metric: str, out_path: str | Path) -> Path:
    """Plot `metric` of several runs on one axes, for comparing methods or settings; return `out_path`."""
    if len(run_dirs) != len(labels):
        raise ValueError(f"got {len(run_dirs)} run_dirs but {len(labels)} labels")
    fig = _figure((6.4, 4.0))
    ax = fig.add_subplot()
    plotted = 0
    for run_dir, label in zip(run_dirs, labels):
        steps, values = _series(_load(run_dir), metric)
        if not steps:
            logger.warning("%s has no %r; left out of the comparison", run_dir, metric)
            continue
        ax.plot(steps, values, label=label, marker="o" if len(steps) < 30 else None)
        plotted += 1
    if not plotted:
        raise ValueError(f"none of the runs logged {metric!r}")
    _finish(ax, metric, metric)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, out_path)


def _load(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a reasonrl run directory?")
    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{path} is empty: the run logged no metrics yet")
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Steps and values where `key` was logged (eval metrics appear only on eval steps; NaN is null)."""
    pairs = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _draw(ax: Axes, rows: list[dict], keys: list[str], title: str, ylabel: str) -> None:
    for key in keys:
        steps, values = _series(rows, key)
        # Sparse series (evals) get markers so single points stay visible.
        (line,) = ax.plot(steps, values, label=key, marker="o" if len(steps) < 30 else None)
        std = f"{key}_std"  # e.g. reward_std: drawn as a band of one standard deviation
        band = [(r["step"], r[key], r[std]) for r in rows if r.get(key) is not None and r.get(std) is not None]
        if band:
            ax.fill_between(
                [s for s, _, _ in band],
                [m - sd for _, m, sd in band],
                [m + sd for _, m, sd in band],
                color=line.get_color(),
                alpha=0.2,
                label=f"± {std}",
            )
    _finish(ax, title, ylabel)


def _finish(ax: Axes, title: str, ylabel: str) -> None:
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def _natural(key: str) -> list:
    """Sort key that orders level_2 before level_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def write_keeping_notes(path: Path, text: str, marker: str) -> None:
    """Write a generated report to `path`, then the old file's hand-written part from `marker` on (or a fresh
    marker): re-running an experiment or a benchmark replaces its numbers and keeps its analysis."""
    old = path.read_text() if path.exists() else ""
    path.write_text(text + "\n" + (old[old.index(marker) :] if marker in old else marker + "\n"))
