"""`reasonrl spectrum`: a table of every module's spectral metrics, and PNGs of α per layer and of chosen ESDs.

Plots use matplotlib's object API on the Agg canvas (as reasonrl.plot), so they work headless and leave no global
backend state behind.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from rich import box
from rich.console import Console
from rich.table import Table

from reasonrl.spectral.esd import ModuleSpectrum

# (header, field, format) of the table columns
_COLUMNS = (
    ("module", "name", "{}"),
    ("shape", "shape", "{}"),
    ("N", "n_eigs", "{}"),
    ("alpha", "alpha", "{:.2f}"),
    ("D", "D", "{:.3f}"),
    ("alpha_ks", "alpha_ks", "{:.2f}"),
    ("D_ks", "D_ks", "{:.3f}"),
    ("tail_ks", "n_tail_ks", "{}"),
    ("stable_rank", "stable_rank", "{:.1f}"),
    ("norm", "spectral_norm", "{:.3g}"),
    ("status", "status", "{}"),
)
_NARROW = ("module", "N", "alpha", "D", "alpha_ks", "status")  # what fits a narrow terminal


def _cell(value, fmt: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return fmt.format(value)


def print_table(rows: Sequence[ModuleSpectrum], title: str = "", console: Console | None = None) -> None:
    """One row per module: α (median Hill) and its KS distance, α of the KS-optimal fit, stable rank, norm, status."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or captured: 80 columns would cut numbers; logs can be wide
            console = Console(width=160)
    columns = [c for c in _COLUMNS if console.width >= 120 or c[0] in _NARROW]
    table = Table(title=title or None, header_style="bold", box=box.SIMPLE_HEAD)
    for header, _, _ in columns:
        module = header == "module"
        table.add_column(header, justify="left" if module else "right", no_wrap=not module, overflow="fold")
    for r in rows:
        style = None if r.status == "ok" else "dim"
        table.add_row(*(_cell(getattr(r, f), fmt) for _, f, fmt in columns), style=style)
    console.print(table)


def write_report(
    rows: Sequence[ModuleSpectrum], out_dir: str | Path, esd_modules: Sequence[str] = (), title: str = ""
) -> list[Path]:
    """Write spectrum.md, spectrum.json, alpha.png and esd_<module>.png for modules matching `esd_modules`.

    `esd_modules` are name substrings; when empty, the ESDs of the heaviest- and lightest-tailed fitted modules.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| " + " | ".join(h for h, _, _ in _COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(_cell(getattr(r, f), fmt) for _, f, fmt in _COLUMNS) + " |" for r in rows]
    paths = [out / "spectrum.md", out / "spectrum.json"]
    paths[0].write_text((f"# {title}\n\n" if title else "") + "\n".join(lines) + "\n")
    # NaN is not JSON: missing fits are written as null.
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.row().items()} for r in rows]
    paths[1].write_text(json.dumps(clean, indent=1) + "\n")
    paths.append(plot_alphas(rows, out / "alpha.png", title))
    fitted = [r for r in rows if r.status == "ok"]
    if esd_modules:
        chosen = [r for r in rows if any(s in r.name for s in esd_modules)]
    else:
        ends = [min(fitted, key=lambda r: r.alpha), max(fitted, key=lambda r: r.alpha)] if fitted else []
        chosen = list({id(r): r for r in ends}.values())
    for r in chosen:
        paths.append(plot_esd(r, out / f"esd_{re.sub(r'[^A-Za-z0-9_.-]+', '_', r.name)}.png"))
    return paths


def plot_alphas(rows: Sequence[ModuleSpectrum], path: Path, title: str = "") -> Path:
    """Left: α per block index, one line per module type. Right: α of every module in order, both estimators."""
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    by_layer, in_order = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    fitted = [r for r in rows if r.status == "ok"]
    for mtype in dict.fromkeys(r.type for r in fitted if r.layer is not None):
        points = sorted((r.layer, r.alpha) for r in fitted if r.type == mtype and r.layer is not None)
        by_layer.plot(*zip(*points), marker="o", label=mtype)
    by_layer.set(title="alpha (median Hill) per layer", xlabel="layer", ylabel="alpha")
    by_layer.xaxis.set_major_locator(MaxNLocator(integer=True))
    x = np.arange(len(rows))
    alphas = np.array([r.alpha for r in rows])
    in_order.bar(x - 0.2, alphas, width=0.4, label="median Hill")
    in_order.bar(x + 0.2, [r.alpha_ks for r in rows], width=0.4, label="KS-optimal x_min")
    for i in np.flatnonzero(np.isnan(alphas)):  # too few eigenvalues or degenerate: say so, do not plot 0
        in_order.annotate(rows[i].status, (i, 0), rotation=90, fontsize=6, ha="center", va="bottom")
    in_order.set(title="alpha per module", xlabel="module (model order)", ylabel="alpha")
    for ax in (by_layer, in_order):
        # HT-SR reading: 2-4 well trained, > 6 under-trained
        for level in (2, 6):
            ax.axhline(level, color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


def plot_esd(row: ModuleSpectrum, path: Path) -> Path:
    """Log-log histogram of the eigenvalues with both fitted tails, p(λ) = (n/N)(α-1)/x_min (λ/x_min)^-α."""
    eigs = row.eigs.double().numpy() if row.eigs is not None else np.array([])
    eigs = eigs[eigs > 0]
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if eigs.size:
        bins = np.logspace(np.log10(eigs.min()), np.log10(eigs.max()), max(10, min(100, eigs.size // 4)) + 1)
        ax.hist(eigs, bins=bins, density=True, alpha=0.5, color="grey", label=f"ESD (N={eigs.size})")
        fits = (
            ("median Hill", row.alpha, row.xmin, row.n_tail, "C0"),
            ("KS-optimal", row.alpha_ks, row.xmin_ks, row.n_tail_ks, "C3"),
        )
        for label, alpha, xmin, n_tail, color in fits:
            if math.isnan(alpha):
                continue
            lam = np.logspace(np.log10(xmin), np.log10(eigs.max()), 50)
            density = n_tail / eigs.size * (alpha - 1) / xmin * (lam / xmin) ** -alpha
            ax.plot(lam, density, color=color, lw=2, label=f"{label}: alpha={alpha:.2f}")
            ax.axvline(xmin, color=color, ls="--", lw=0.8)
    ax.set(
        xscale="log", yscale="log", xlabel="eigenvalue of W^T W", ylabel="density", title=f"{row.name} ({row.status})"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return path
