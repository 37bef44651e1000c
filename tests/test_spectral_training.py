"""HT-SR in the real trainer: optim.weight_decay_schedule / lr_schedule reach the optimizer, survive a resume,
and train.spectral_every logs α that `reasonrl plot` draws."""

import json
import math
import re
import shutil

import pytest

from reasonrl.config import ConfigError, load_config
from reasonrl.plot import plot_run
from reasonrl.spectral import LLR, alpha_ratios, analyze
from reasonrl.trainer import Trainer

SFT = ("algo=sft", "optim.schedule=constant", "optim.warmup_steps=0")


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.weight_decay_schedule=alpha", "choose one of uniform, alphadecay"),
        ("optim.lr_schedule=layerwise", "choose one of uniform, llr"),
        ("optim.llr.mapping=cubic", "optim.llr.mapping='cubic'; choose one of linear, sqrt"),
        ("optim.alphadecay.every=0", "optim.alphadecay.every must be >= 1"),
        ("optim.llr.min_ratio=4", "0 < min_ratio <= max_ratio"),
        ("optim.llr.until=1.5", r"optim.llr.until in \[0, 1\]"),
        ("optim.llr_every=20", "optim.llr_every was renamed optim.llr.every"),
        ("optim.alphadecay_mapping=sqrt", "optim.alphadecay_mapping was renamed optim.alphadecay.mapping"),
        ("optim.weight_decay_schedule=alphadecay", "set optim.weight_decay > 0"),
        ("train.spectral_every=-1", "spectral_every must be >= 0"),
    ],
)
def test_bad_htsr_options_are_config_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_uniform_defaults_keep_one_param_group(quick_config, tmp_path):
    trainer = Trainer(quick_config(*SFT), run_dir=tmp_path / "r")
    assert len(trainer.optimizer.param_groups) == 1 and trainer.alphadecay is None


def test_alphadecay_weight_decay_in_the_optimizer_follows_alpha_of_the_trained_weights(quick_config, tmp_path):
    cfg = quick_config(
        *SFT, "optim.weight_decay=0.1", "optim.weight_decay_schedule=alphadecay", "optim.alphadecay.every=1"
    )
    trainer = Trainer(cfg, run_dir=tmp_path / "r")
    trainer.train()
    # every=1: α was last measured after the final update, i.e. on the weights as they are now.
    tuned = [name for name, _ in trainer.alphadecay.modules]
    hill = {s.name: s.alpha for s in analyze(trainer.model, ("hill",)) if s.status == "ok"}
    fitted = [n for n in tuned if n in hill]
    expected = dict(zip(fitted, alpha_ratios([hill[n] for n in fitted], "linear", 0.6666, 3.0)))
    assert len(fitted) >= 3
    groups = {g["module"]: g for g in trainer.optimizer.param_groups}
    for name in fitted:
        assert groups[name]["weight_decay"] == pytest.approx(0.1 * expected[name], rel=1e-6), name
    decays = [groups[n]["weight_decay"] for n in fitted]
    assert min(decays) == pytest.approx(0.06666) and max(decays) == pytest.approx(0.3)
    # Excluded (first / last Linear, too few eigenvalues) and untagged groups keep the base decay.
    assert groups[None]["weight_decay"] == 0.1
    assert groups["model.layers.0.self_attn.q_proj"]["weight_decay"] == 0.1
    assert groups["model.layers.0.self_attn.k_proj"]["weight_decay"] == 0.1  # 32 eigenvalues < 50


def test_llr_learning_rates_in_the_optimizer_are_the_base_lr_times_alpha_multipliers(quick_config, tmp_path):
    cfg = quick_config(
        *SFT, "optim.lr_schedule=llr", "optim.llr.every=1", "optim.llr.ramp=0", "optim.llr.until=1.0", "train.steps=3"
    )
    trainer = Trainer(cfg, run_dir=tmp_path / "r")
    llr = trainer.scheduler
    assert isinstance(llr, LLR)
    # At construction: multipliers from α of the loaded weights, measured here independently.
    hill = {s.name: s.alpha for s in analyze(trainer.model, ("hill",)) if s.status == "ok"}
    measured = [n for n, _ in llr.modules if n in hill and "embed" not in n]
    ratios = dict(zip(measured, alpha_ratios([hill[n] for n in measured], "linear", 1.0, 3.0)))
    groups = {g["module"]: g for g in trainer.optimizer.param_groups}
    for name in measured:
        assert groups[name]["lr"] == pytest.approx(1e-3 * ratios[name], rel=1e-6), name
    initial = dict(llr.ratios)
    trainer.train()
    groups = {g["module"]: g for g in trainer.optimizer.param_groups}
    assert llr.ratios != initial  # re-measured on trained weights
    for name, ratio in llr.ratios.items():
        assert groups[name]["lr"] == pytest.approx(1e-3 * ratio, rel=1e-6), name
    assert groups[None]["lr"] == pytest.approx(1e-3)  # norms: the base schedule
    assert groups["model.embed_tokens"]["lr"] == pytest.approx(3e-3)  # pinned at max_ratio
    by_alpha = sorted(measured, key=lambda n: llr.alphas[n])
    assert [llr.ratios[n] for n in by_alpha] == sorted(llr.ratios[n] for n in measured)  # larger α, larger lr
    # The recompute steps are logged for the plots.
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert any("llr/ratio/model.embed_tokens" in r for r in rows if r["step"] == 1)


def optimizer_values(trainer: Trainer) -> list[tuple]:
    return [(g["module"], g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups]


def test_resume_restores_alphadecay_and_llr_and_continues_like_an_uninterrupted_run(quick_config, tmp_path):
    overrides = (
        *SFT,
        "optim.weight_decay=0.1",
        "optim.weight_decay_schedule=alphadecay",
        "optim.alphadecay.every=3",
        "optim.lr_schedule=llr",
        "optim.llr.every=2",
        "optim.llr.ramp=3",
        "optim.llr.until=1.0",
        "train.steps=4",
        "train.save_every=2",
        "train.keep_checkpoints=2",
    )
    full = Trainer(quick_config(*overrides), run_dir=tmp_path / "full")
    full.train()
    # The same run cut after step 2: its step-2 checkpoint is the state to resume from.
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_000004")
    fresh = optimizer_values(Trainer(quick_config(*overrides), run_dir=tmp_path / "fresh"))
    resumed = Trainer(quick_config(*overrides), run_dir=tmp_path / "cut", resume=True)
    assert resumed.alphadecay.step_count == 2 and resumed.scheduler.step_count == 2
    assert optimizer_values(resumed) != fresh  # restored, not re-measured on the initial weights
    resumed.train()
    assert optimizer_values(resumed) == optimizer_values(full)
    assert json.dumps(resumed.alphadecay.state_dict()) == json.dumps(full.alphadecay.state_dict())  # NaN-safe
    rows = {
        r["step"]: r
        for r in map(json.loads, (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    }
    reference = {
        r["step"]: r
        for r in map(json.loads, (tmp_path / "full" / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    }
    for step in (3, 4):
        assert rows[step]["loss"] == pytest.approx(reference[step]["loss"], rel=1e-5)


def test_spectral_every_logs_alpha_of_every_fitted_matrix_and_plot_draws_it(quick_config, tmp_path):
    trainer = Trainer(quick_config(*SFT, "train.steps=2", "train.spectral_every=2"), run_dir=tmp_path / "r")
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"] for r in rows if "spectral/alpha_mean" in r}
    assert logged == {0, 2}
    last = next(r for r in rows if r["step"] == 2 and "spectral/alpha_mean" in r)
    hill = [s for s in analyze(trainer.model, ("hill",)) if s.status == "ok"]  # the final weights
    for s in hill:
        assert last[f"spectral/alpha/{s.name}"] == pytest.approx(s.alpha, rel=1e-5)
    assert last["spectral/alpha_mean"] == pytest.approx(sum(s.alpha for s in hill) / len(hill), rel=1e-5)
    down = [s.alpha for s in hill if s.type == "mlp.down_proj"]
    assert last["spectral/alpha_mean/mlp.down_proj"] == pytest.approx(sum(down) / len(down), rel=1e-5)
    assert not any(k.startswith("spectral/alpha/") and "k_proj" in k for k in last)  # too few eigenvalues
    assert all(math.isfinite(v) for k, v in last.items() if k.startswith("spectral/"))
    paths = plot_run(tmp_path / "r")
    assert (tmp_path / "r" / "plots" / "alpha.png") in paths


def test_resuming_with_alphadecay_switched_on_is_a_clear_error(quick_config, tmp_path):
    llr = (*SFT, "optim.lr_schedule=llr")  # per-module param groups, so the optimizer state itself fits
    Trainer(quick_config(*llr, "train.steps=1"), run_dir=tmp_path / "r").train()
    cfg = quick_config(*llr, "train.steps=2", "optim.weight_decay=0.1", "optim.weight_decay_schedule=alphadecay")
    with pytest.raises(ValueError, match=re.escape("without optim.weight_decay_schedule=alphadecay")):
        Trainer(cfg, run_dir=tmp_path / "r", resume=True)
