"""Empirical spectral densities of a model's weight matrices and their heavy-tail metrics (HT-SR).

The ESD of a weight W (m x n) is the set of eigenvalues of WᵀW, i.e. its squared singular values, with no 1/N
normalisation (α depends only on ratios of eigenvalues). They are computed in float32 with one batched
`torch.linalg.svdvals` per distinct matrix shape, on the device the weights live on. A convolution's kernel
positions are separate (out x in) matrices whose eigenvalues are pooled, as in TempBalance/AlphaDecay.

A module with fewer than `min_eigs` eigenvalues is reported with status `too_few_eigs` and no α: a tail fit on a
handful of points is noise, and the schedules built on α skip such modules (threshold 50 in TempBalance,
AlphaDecay and LLR; weightwatcher 0.7.7 uses 8).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields

import torch
from torch import nn
from transformers.pytorch_utils import (
    Conv1D,  # GPT-2-style linear layer, weight stored as (in, out)
)

from reasonrl.spectral.powerlaw import hill_fit, ks_fit

LINEAR_KINDS: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1D)
ALL_KINDS: tuple[type, ...] = LINEAR_KINDS + (nn.Embedding,)
_SVD_BATCH_ELEMENTS = 1 << 26  # float32 elements stacked into one batched SVD call (256 MiB)
_LAYER = re.compile(r"^(?:.*?\.)?(\d+)\.(.+)$")


@dataclass
class ModuleSpectrum:
    """Heavy-tail metrics of one weight matrix. `alpha*` are NaN unless `status == "ok"`."""

    name: str
    kind: str  # class name: Linear, Embedding, Conv2d, Conv1D ...
    shape: tuple[int, ...]
    layer: int | None  # transformer block index parsed from the name (model.layers.3.mlp.up_proj -> 3)
    type: str  # module type within the block (mlp.up_proj), or the whole name outside blocks
    n_eigs: int
    status: str  # ok | too_few_eigs | degenerate (zero matrix, or a flat tail with no power law to fit)
    spectral_norm: float  # largest singular value, sqrt(λ_max)
    stable_rank: float  # Σλ / λ_max
    alpha: float = math.nan  # fixed-median Hill (TempBalance / AlphaDecay / LLR)
    D: float = math.nan
    xmin: float = math.nan
    n_tail: int = 0
    alpha_ks: float = math.nan  # KS-optimal x_min (weightwatcher)
    D_ks: float = math.nan
    xmin_ks: float = math.nan
    n_tail_ks: int = 0
    eigs: torch.Tensor | None = field(default=None, repr=False)  # ascending, float32, on CPU

    def row(self) -> dict:
        """JSON-ready fields (no eigenvalues)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "eigs"}


def weight_modules(model: nn.Module, kinds: tuple[type, ...] = ALL_KINDS) -> list[tuple[str, nn.Module]]:
    """Modules of the given kinds with a weight, in `named_modules` order.

    A weight shared by several of them (tied input/output embeddings) is listed once, under its first name, so it
    is neither analysed twice nor put in two optimizer param groups.
    """
    seen: set[int] = set()
    found = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, kinds) and isinstance(weight, torch.Tensor) and id(weight) not in seen:
            seen.add(id(weight))
            found.append((name, module))
    return found


def layer_and_type(name: str) -> tuple[int | None, str]:
    """Split `model.layers.3.self_attn.q_proj` into (3, "self_attn.q_proj"); names outside blocks give (None, name)."""
    match = _LAYER.match(name)
    return (int(match.group(1)), match.group(2)) if match else (None, name)


def _matrices(weight: torch.Tensor) -> torch.Tensor:
    """A weight as a float32 stack (b, m, n): one matrix, or one per kernel position of a convolution."""
    w = weight.detach().float()
    if w.ndim > 2:  # conv (out, in, *kernel) -> (kernel positions, out, in)
        return w.flatten(2).permute(2, 0, 1)
    return w.reshape(1, w.shape[0], -1)


@torch.no_grad()
def eigenvalues(weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Ascending eigenvalues of WᵀW for each weight (a conv's kernel positions pooled), in float32.

    Weights of the same matrix shape go through one batched SVD call, converted to float32 only chunk by chunk so a
    large model's weights are never copied all at once.
    """
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for i, w in enumerate(weights):
        positions = math.prod(w.shape[2:])  # 1 for a matrix
        by_shape[(w.shape[0], math.prod(w.shape[1:]) // positions, w.device)].append(i)
    out: list[torch.Tensor | None] = [None] * len(weights)
    for (m, n, _), indices in by_shape.items():
        per_call = max(1, _SVD_BATCH_ELEMENTS // (m * n))
        chunks, size = [[]], 0
        for i in indices:
            if chunks[-1] and size + math.prod(weights[i].shape[2:]) > per_call:
                chunks, size = chunks + [[]], 0
            chunks[-1].append(i)
            size += math.prod(weights[i].shape[2:])
        for chunk in chunks:
            stacks = [_matrices(weights[j]) for j in chunk]
            batch = torch.cat(stacks)
            if batch.shape[-2] < batch.shape[-1]:  # W and Wᵀ share singular values; LAPACK is 2-3x faster on tall
                batch = batch.transpose(-1, -2)
            svals = torch.linalg.svdvals(batch)
            for j, sv in zip(chunk, svals.split([st.shape[0] for st in stacks])):
                out[j] = torch.sort(sv.flatten().square()).values
    return out  # type: ignore[return-value]


def spectrum(
    name: str,
    module: nn.Module,
    eigs: torch.Tensor,
    methods: Iterable[str] = ("hill", "ks"),
    min_eigs: int = 50,
    xmin_pos: float = 2,
    eps: float = 0.0,
) -> ModuleSpectrum:
    """Metrics of one module from its ascending eigenvalues; eigenvalues <= eps (and zeros) are left out of the fit."""
    eigs = eigs.float()
    lam_max = float(eigs[-1]) if eigs.numel() else 0.0
    kept = eigs[eigs > eps]
    layer, mtype = layer_and_type(name)
    result = ModuleSpectrum(
        name=name,
        kind=type(module).__name__,
        shape=tuple(module.weight.shape),
        layer=layer,
        type=mtype,
        n_eigs=eigs.numel(),
        status="ok",
        spectral_norm=math.sqrt(lam_max),
        stable_rank=float(eigs.sum()) / lam_max if lam_max > 0 else 0.0,
        eigs=eigs.cpu(),
    )
    if eigs.numel() < max(min_eigs, 2):
        result.status = "too_few_eigs"
        return result
    if kept.numel() < max(min_eigs, 2):  # enough eigenvalues, but (nearly) all zero: a rank-deficient matrix
        result.status = "degenerate"
        return result
    if "hill" in methods:
        fit = hill_fit(kept, xmin_pos)
        result.alpha, result.D, result.xmin, result.n_tail = fit.alpha, fit.D, fit.xmin, fit.n_tail
    if "ks" in methods:
        fit = ks_fit(kept)
        result.alpha_ks, result.D_ks, result.xmin_ks, result.n_tail_ks = fit.alpha, fit.D, fit.xmin, fit.n_tail
    if math.isinf(result.alpha) or math.isinf(result.alpha_ks):
        result.status = "degenerate"
        result.alpha = result.alpha_ks = math.nan
    return result


def spectra(
    modules: Sequence[tuple[str, nn.Module]],
    methods: Iterable[str] = ("hill", "ks"),
    min_eigs: int = 50,
    xmin_pos: float = 2,
    eps: float = 0.0,
) -> list[ModuleSpectrum]:
    """`spectrum` of each (name, module), the SVDs batched across modules of the same shape."""
    methods = tuple(methods)
    unknown = set(methods) - {"hill", "ks"}
    if unknown:
        raise ValueError(f"unknown alpha method(s) {sorted(unknown)}; choose hill and/or ks")
    eigs = eigenvalues([m.weight for _, m in modules])
    return [spectrum(n, m, e, methods, min_eigs, xmin_pos, eps) for (n, m), e in zip(modules, eigs)]


def analyze(
    model: nn.Module,
    methods: Iterable[str] = ("hill", "ks"),
    min_eigs: int = 50,
    xmin_pos: float = 2,
    eps: float = 0.0,
    kinds: tuple[type, ...] = ALL_KINDS,
    include: Sequence[str] = (),
) -> list[ModuleSpectrum]:
    """Spectral metrics of every weight module of `model` (Linear, Embedding, Conv, HF Conv1D), in module order.

    `include`: keep only modules whose name contains one of these substrings (all when empty).
    """
    modules = [(n, m) for n, m in weight_modules(model, kinds) if not include or any(s in n for s in include)]
    return spectra(modules, methods, min_eigs, xmin_pos, eps)


def analyze_path(path: str, device: str = "auto", **kwargs) -> list[ModuleSpectrum]:
    """`analyze` a Hugging Face model directory, or a shipped name (`student`, `teacher`)."""
    from reasonrl.models import load_model

    model, _ = load_model(path, "float32", device)
    return analyze(model, **kwargs)
