"""HT-SR weight spectra: ESD and power-law α of every weight matrix, and the schedules that steer training with them.

- `analyze(model)` / `analyze_path(dir)`: per-module α (fixed-median Hill and KS-optimal fits), KS distance,
  stable rank, spectral norm, eigenvalue count, and a status for modules too small to fit.
- `AlphaDecay`: per-module weight decay from α.  `LLR`: per-module learning-rate multipliers from α.
  Both steer the param groups of any optimizer built on `build_param_groups(model)`; see docs/spectral.md.
- `alpha_metrics(model)`: Hill α of every matrix as flat metrics, for monitoring during training.
"""

from reasonrl.spectral.alphadecay import AlphaDecay
from reasonrl.spectral.esd import (
    ModuleSpectrum,
    analyze,
    analyze_path,
    eigenvalues,
    spectra,
    weight_modules,
)
from reasonrl.spectral.llr import LLR
from reasonrl.spectral.monitor import alpha_metrics
from reasonrl.spectral.powerlaw import PowerLawFit, hill_fit, ks_fit
from reasonrl.spectral.schedule import alpha_ratios, build_param_groups, split_for_muon

__all__ = [
    "LLR",
    "AlphaDecay",
    "ModuleSpectrum",
    "PowerLawFit",
    "alpha_metrics",
    "alpha_ratios",
    "analyze",
    "analyze_path",
    "build_param_groups",
    "eigenvalues",
    "hill_fit",
    "ks_fit",
    "spectra",
    "split_for_muon",
    "weight_modules",
]
