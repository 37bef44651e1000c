"""HT-SR spectra: eigenvalues, the median-Hill and KS-optimal α estimators, module analysis, `reasonrl spectrum`."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from reasonrl.cli import main
from reasonrl.spectral import (
    analyze,
    analyze_path,
    eigenvalues,
    hill_fit,
    ks_fit,
    weight_modules,
)
from reasonrl.spectral.esd import layer_and_type


def pareto(n: int, alpha: float, seed: int) -> torch.Tensor:
    """n eigenvalues drawn from p(λ) ∝ λ^-α on [1, inf), sorted ascending."""
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.sort((1 - u) ** (-1 / (alpha - 1))).values


def pareto_matrix(m: int, n: int, alpha: float, seed: int) -> torch.Tensor:
    """An m x n matrix whose eigenvalues of WᵀW (squared singular values) are a Pareto(α) sample."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    k = min(m, n)
    sigma = pareto(k, alpha, seed + 1).sqrt()
    return (u[:, :k] * sigma) @ v[:, :k].T


def ks_by_loop(eigs: np.ndarray) -> tuple[float, float, float]:
    """The KS-optimal fit written as the plain loop of weightwatcher's WWFit (spec §0.2), for cross-checking."""
    logs, N = np.log(eigs), len(eigs)
    best = (1.0, 0.0, 0.0)  # (D, alpha, xmin)
    for i in range(N - 1):
        n = N - i
        alpha = 1 + n / (logs[i:].sum() - n * logs[i])
        D = np.max(np.abs(1 - (eigs[i:] / eigs[i]) ** (1 - alpha) - np.arange(n) / n)) if alpha > 1 else 1.0
        if best[0] > D:
            best = (D, alpha, eigs[i])
    return best[1], best[0], best[2]


# Tolerance: 4 standard errors of the MLE, (α - 1) / sqrt(n_tail); seeds are fixed, so this is not flaky.
@pytest.mark.parametrize("alpha", [2.0, 2.5, 3.0, 4.0, 6.0])
def test_hill_and_ks_recover_the_exponent_of_a_pareto_sample(alpha):
    eigs = pareto(4000, alpha, seed=int(alpha * 10))
    hill, ks = hill_fit(eigs), ks_fit(eigs)
    assert hill.n_tail == 2000 and hill.xmin == pytest.approx(float(eigs[2000]))
    assert abs(hill.alpha - alpha) < 4 * (alpha - 1) / math.sqrt(hill.n_tail)
    assert abs(ks.alpha - alpha) < 4 * (alpha - 1) / math.sqrt(ks.n_tail)
    assert ks.D <= hill.D  # the KS fit minimises D over all x_min, the median among them


@pytest.mark.parametrize("alpha", [2.0, 3.0, 5.0])
def test_alpha_of_a_weight_matrix_with_pareto_singular_values(alpha):
    layer = nn.Linear(256, 512, bias=False)
    with torch.no_grad():
        layer.weight.copy_(pareto_matrix(512, 256, alpha, seed=int(alpha)))
    (row,) = analyze(layer)
    assert row.status == "ok" and row.n_eigs == 256 and row.n_tail == 128
    assert abs(row.alpha - alpha) < 4 * (alpha - 1) / math.sqrt(row.n_tail)
    assert abs(row.alpha_ks - alpha) < 4 * (alpha - 1) / math.sqrt(row.n_tail_ks)
    w = layer.weight.detach().double()
    assert row.spectral_norm == pytest.approx(float(torch.linalg.matrix_norm(w, 2)), rel=1e-4)
    lam = torch.linalg.svdvals(w) ** 2
    assert row.stable_rank == pytest.approx(float(lam.sum() / lam.max()), rel=1e-4)


def test_hill_fit_matches_the_formula_by_hand():
    # N=4, x_min = λ_2 = 4, tail {4, 8}: α = 1 + 2 / ln 2; D at k=1: |1 - 2^(1-α) - 1/2| = 1/2 - e^-2.
    fit = hill_fit(torch.tensor([1.0, 2.0, 4.0, 8.0]))
    assert fit.alpha == pytest.approx(1 + 2 / math.log(2))
    assert pytest.approx(0.5 - math.exp(-2)) == fit.D
    assert (fit.xmin, fit.n_tail) == (pytest.approx(4.0), 2)
    assert hill_fit(torch.tensor([1.0, 2.0, 4.0, 8.0]), xmin_pos=4).xmin == pytest.approx(2.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_ks_fit_equals_the_reference_loop(seed):
    # A Marchenko-Pastur bulk plus a heavy tail: the KS x_min is somewhere inside, not at the median.
    g = torch.Generator().manual_seed(seed)
    bulk = torch.linalg.svdvals(torch.randn(400, 200, generator=g, dtype=torch.float64)) ** 2 / 400
    eigs = torch.sort(torch.cat([bulk, 3 * pareto(40, 2.5, seed)])).values
    alpha, D, xmin = ks_by_loop(eigs.numpy())
    fit = ks_fit(eigs)
    assert fit.alpha == pytest.approx(alpha, rel=1e-9) and pytest.approx(D, rel=1e-9) == fit.D
    assert fit.xmin == pytest.approx(xmin, rel=1e-12)
    assert fit.D < hill_fit(eigs).D  # here the median is a poor x_min and KS finds a better one


@pytest.mark.parametrize("batch_elements", [1 << 26, 600])  # one SVD call per shape; one per matrix
def test_batched_eigenvalues_equal_one_svd_per_matrix(batch_elements, monkeypatch):
    monkeypatch.setattr("reasonrl.spectral.esd._SVD_BATCH_ELEMENTS", batch_elements)
    g = torch.Generator().manual_seed(0)
    weights = [
        torch.randn(30, 20, generator=g),
        torch.randn(8, 12, 1, 3, generator=g),
        torch.randn(30, 20, generator=g).bfloat16(),
        torch.randn(5, 5, generator=g),
    ]
    matrices = [[weights[0]], [weights[1][:, :, 0, k] for k in range(3)], [weights[2].float()], [weights[3]]]
    for mats, eigs in zip(matrices, eigenvalues(weights)):
        expected = torch.sort(torch.cat([torch.linalg.svdvals(m) ** 2 for m in mats])).values
        assert eigs.dtype == torch.float32 and torch.allclose(eigs, expected, rtol=1e-4, atol=1e-5)
        assert bool((eigs[1:] >= eigs[:-1]).all())


def test_too_few_eigenvalues_are_flagged_not_fitted():
    model = nn.Sequential(nn.Linear(64, 10), nn.Linear(10, 64), nn.Linear(64, 64))
    rows = analyze(model)
    assert [r.status for r in rows] == ["too_few_eigs", "too_few_eigs", "ok"]
    assert rows[0].n_eigs == 10 and math.isnan(rows[0].alpha) and math.isnan(rows[0].alpha_ks)
    assert rows[0].spectral_norm > 0  # the other metrics are still reported
    assert [r.status for r in analyze(model, min_eigs=5)] == ["ok", "ok", "ok"]


def test_zero_and_flat_spectra_are_degenerate():
    zero, identity = nn.Linear(64, 64), nn.Linear(64, 64)
    with torch.no_grad():
        zero.weight.zero_()
        identity.weight.copy_(torch.eye(64))
    for layer in (zero, identity):
        (row,) = analyze(layer)
        assert row.status == "degenerate" and math.isnan(row.alpha) and math.isnan(row.alpha_ks)


def test_embedding_conv_and_hf_conv1d_are_analysed():
    model = nn.ModuleDict({"emb": nn.Embedding(300, 64), "conv": nn.Conv2d(16, 64, 3), "c1d": Conv1D(96, 64)})
    rows = {r.name: r for r in analyze(model, min_eigs=10)}
    assert {k: (r.kind, r.n_eigs) for k, r in rows.items()} == {
        "emb": ("Embedding", 64),
        "conv": ("Conv2d", 9 * 16),
        "c1d": ("Conv1D", 64),
    }
    w = model["conv"].weight.detach()
    per_position = torch.cat([torch.linalg.svdvals(w[:, :, i, j]) ** 2 for i in range(3) for j in range(3)])
    assert torch.allclose(rows["conv"].eigs, torch.sort(per_position).values, rtol=1e-4, atol=1e-6)
    transposed = nn.Linear(64, 96, bias=False)
    with torch.no_grad():
        transposed.weight.copy_(model["c1d"].weight.T)
    assert analyze(transposed, min_eigs=10)[0].alpha == pytest.approx(rows["c1d"].alpha, rel=1e-4)


def test_tied_weights_are_analysed_once(nano_dir):
    from reasonrl.models import load_model

    model, _ = load_model(str(nano_dir), device="cpu")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    names = [n for n, _ in weight_modules(model)]
    assert "model.embed_tokens" in names and "lm_head" not in names
    assert "lm_head" in [n for n, _ in weight_modules(model, (nn.Linear,))]  # among Linear layers only, it is first


def test_layer_and_type_from_module_names():
    assert layer_and_type("model.layers.12.self_attn.q_proj") == (12, "self_attn.q_proj")
    assert layer_and_type("transformer.h.0.mlp.c_fc") == (0, "mlp.c_fc")
    assert layer_and_type("lm_head") == (None, "lm_head")


def test_shipped_student_analyses_every_module():
    rows = analyze_path("student", device="cpu")
    assert len(rows) == 1 + 4 * 7  # tied embedding + 4 blocks of q, k, v, o, gate, up, down
    assert all(r.status == "ok" and 1 < r.alpha < 10 and 0 <= r.D <= 1 for r in rows)
    assert sorted({r.layer for r in rows if r.layer is not None}) == [0, 1, 2, 3]


def test_spectrum_command_writes_table_json_and_pngs(nano_dir, tmp_path, capsys):
    out = tmp_path / "spec"
    assert main(["spectrum", str(nano_dir), "--out", str(out), "--modules", "mlp.up_proj", "--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in stdout and "too_few_eigs" in stdout
    rows = json.loads((out / "spectrum.json").read_text())
    assert len(rows) == 1 + 2 * 7
    # nano's k/v projections are 32 x 64: 32 eigenvalues, below the 50 needed for a fit
    kv = [r for r in rows if r["type"] in ("self_attn.k_proj", "self_attn.v_proj")]
    assert kv and all(r["status"] == "too_few_eigs" and r["alpha"] is None for r in kv)
    assert all(r["status"] == "ok" and r["alpha"] > 1 for r in rows if r["n_eigs"] >= 50)
    table = (out / "spectrum.md").read_text().splitlines()
    assert sum(line.startswith("| model.") for line in table) == len(rows)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["alpha.png", "esd_model.layers.0.mlp.up_proj.png", "esd_model.layers.1.mlp.up_proj.png"]
    assert all((out / p).stat().st_size > 10_000 for p in pngs)
    assert [line for line in stdout.splitlines() if line.endswith(".png")] == [
        str(out / p) for p in ["alpha.png", *pngs[1:]]
    ]


def test_spectrum_command_on_a_missing_directory_is_one_clear_error(tmp_path, capsys):
    assert main(["spectrum", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "model directory not found" in err and "Traceback" not in err


def test_wide_and_tall_matrices_give_the_nonzero_eigenvalues_of_wtw():
    """A wide W is decomposed as Wᵀ (same singular values, faster LAPACK path): both orientations must agree."""
    from reasonrl.spectral.esd import eigenvalues

    torch.manual_seed(0)
    wide = torch.randn(16, 40)
    got_wide, got_tall = eigenvalues([wide, wide.T.contiguous()])
    reference = torch.linalg.eigvalsh(wide.double() @ wide.double().T).float()  # the 16 nonzero eigenvalues of WᵀW
    assert got_wide.shape == got_tall.shape == (16,)
    torch.testing.assert_close(got_wide, reference, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got_tall, reference, rtol=1e-5, atol=1e-4)
