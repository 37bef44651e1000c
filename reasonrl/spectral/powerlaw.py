"""Power-law fits to the tail of an empirical spectral density (ESD): fixed-median Hill and KS-optimal x_min.

Both are the continuous power-law maximum-likelihood estimate (Clauset, Shalizi & Newman 2009, eq. 3.1) on the
tail of the sorted eigenvalues λ_0 <= ... <= λ_{N-1} that starts at index i (x_min = λ_i, n = N - i, x_min counted):

    α_i = 1 + n / Σ_{j>=i} ln(λ_j / λ_i)
    D_i = max_{k<n} | 1 - (λ_{i+k} / λ_i)^(1-α_i) - k/n |        (KS distance, fitted vs empirical tail CDF)

They differ only in how i is chosen:
- `hill_fit`: i = floor(N / xmin_pos); xmin_pos=2 puts x_min at the median. This is `pl_fitting='median'` of
  TempBalance, AlphaDecay and LLR: one pass, deterministic, what those schedules were tuned with.
- `ks_fit`: i = argmin_i D_i over every candidate i in [0, N-2] (D_i = 1 where α_i <= 1), as weightwatcher's
  default `WWFit`. O(N^2), computed here in row blocks of one vectorised matrix instead of a Python loop.

Eigenvalues must be positive and sorted ascending; `reasonrl.spectral.esd` takes care of both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Rows of the (candidate x eigenvalue) KS matrix evaluated at once: bounds memory at ~2^22 float64 = 32 MiB.
_KS_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class PowerLawFit:
    alpha: float  # power-law exponent of the ESD tail, p(λ) ∝ λ^-α; inf when the tail is flat (all equal)
    xmin: float  # start of the fitted tail
    D: float  # KS distance between the fitted and the empirical tail CDF
    n_tail: int  # eigenvalues in the tail, x_min included
    sigma: float  # standard error of α under the power-law model, (α - 1) / sqrt(n)


def _fit_at(log_eigs: torch.Tensor, i: int) -> PowerLawFit:
    n = log_eigs.numel() - i
    excess = float((log_eigs[i:] - log_eigs[i]).sum())
    alpha = 1.0 + n / excess if excess > 0 else math.inf
    if math.isfinite(alpha):
        k = torch.arange(n, dtype=log_eigs.dtype, device=log_eigs.device)
        fitted = 1.0 - torch.exp((1.0 - alpha) * (log_eigs[i:] - log_eigs[i]))
        D = float((fitted - k / n).abs().max())
    else:
        D = 1.0
    return PowerLawFit(alpha, math.exp(float(log_eigs[i])), D, n, (alpha - 1.0) / math.sqrt(n))


def hill_fit(eigs: torch.Tensor, xmin_pos: float = 2) -> PowerLawFit:
    """Fixed-x_min Hill estimate with x_min = λ_{floor(N/xmin_pos)} (the median for xmin_pos=2); needs N >= 2."""
    N = eigs.numel()
    if N < 2:
        raise ValueError(f"a power-law fit needs at least 2 eigenvalues, got {N}")
    i = min(int(N / xmin_pos), N - 1)
    return _fit_at(torch.log(eigs.double()), i)


def ks_fit(eigs: torch.Tensor) -> PowerLawFit:
    """Power-law fit whose x_min minimises the KS distance over all candidates (weightwatcher's default); N >= 2."""
    N = eigs.numel()
    if N < 2:
        raise ValueError(f"a power-law fit needs at least 2 eigenvalues, got {N}")
    logs = torch.log(eigs.double())
    # α_i for every candidate from suffix sums: Σ_{j>=i} ln λ_j - n_i ln λ_i.
    suffix = torch.flip(torch.cumsum(torch.flip(logs, [0]), 0), [0])[:-1]
    n = torch.arange(N, 1, -1, dtype=logs.dtype, device=logs.device)  # n_i = N - i for i = 0..N-2
    excess = suffix - n * logs[:-1]
    alphas = torch.where(excess > 0, 1.0 + n / excess.clamp_min(1e-300), torch.full_like(excess, math.inf))
    Ds = torch.ones(N - 1, dtype=logs.dtype, device=logs.device)
    cols = torch.arange(N, device=logs.device)
    block = max(1, _KS_BLOCK_ELEMENTS // N)
    for start in range(0, N - 1, block):
        rows = torch.arange(start, min(start + block, N - 1), device=logs.device)
        a = alphas[rows, None]
        k = (cols[None, :] - rows[:, None]).to(logs.dtype)  # position in the tail; < 0 before x_min
        dist = (1.0 - torch.exp((1.0 - a) * (logs[None, :] - logs[rows, None])) - k / n[rows, None]).abs()
        dist = torch.where(k >= 0, dist, torch.zeros_like(dist))
        valid = torch.isfinite(alphas[rows]) & (alphas[rows] > 1)
        Ds[rows] = torch.where(valid, dist.max(dim=1).values, torch.ones_like(Ds[rows]))
    best = int(torch.argmin(Ds))  # first minimum, as numpy's argmin in weightwatcher
    return _fit_at(logs, best)
