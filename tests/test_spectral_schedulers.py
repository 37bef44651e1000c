"""AlphaDecay and LLR: α -> ratio maps, param groups, and the values the optimizers really receive."""

import math

import numpy as np
import pytest
import torch
from test_spectral import pareto_matrix
from torch import nn
from torch.optim.lr_scheduler import ExponentialLR, LambdaLR

from reasonrl.checkpoint import load_checkpoint, save_checkpoint
from reasonrl.spectral import (
    LLR,
    AlphaDecay,
    alpha_ratios,
    analyze,
    build_param_groups,
    split_for_muon,
)


def test_linear_map_by_hand():
    ratios = alpha_ratios([2.0, 3.0, 4.0, 6.0], "linear", 0.5, 1.5)
    assert ratios == pytest.approx([0.5, 0.75, 1.0, 1.5])
    assert alpha_ratios([3.0, 3.0], "linear", 0.5, 1.5) == pytest.approx([1.0, 1.0])  # no spread, no change


def test_mean_preserving_and_sigmoid_maps_by_hand():
    assert alpha_ratios([1.0, 4.0, 9.0], "sqrt") == pytest.approx([0.5, 1.0, 1.5])  # 3·[1,2,3]/6
    assert alpha_ratios([2.0, 4.0, 8.0], "log2") == pytest.approx([0.5, 1.0, 1.5])
    # mean 2, std 1: z = ∓1, ratio 2 / (1 + e^{±4})
    assert alpha_ratios([1.0, 3.0], "sigmoid") == pytest.approx([2 / (1 + math.e**4), 2 / (1 + math.e**-4)])


def test_layerwise_maps_normalise_within_each_block():
    alphas, layers = [2.0, 4.0, 3.0, 5.0, 7.0], [0, 0, 1, 1, None]
    assert alpha_ratios(alphas, "layer_linear", 0.5, 1.5, layers) == pytest.approx([0.5, 1.5, 0.5, 1.5, 1.0])
    sig = alpha_ratios(alphas, "layer_sigmoid", layers=layers)
    assert sig[:4] == pytest.approx([2 / (1 + math.e**4), 2 / (1 + math.e**-4)] * 2)
    with pytest.raises(ValueError, match="unknown mapping"):
        alpha_ratios(alphas, "cubic")


class Net(nn.Module):
    """embed -> 5 square layers with chosen spectra (and one narrow layer) -> norm -> head."""

    def __init__(self, alphas=(2.5, 2.0, 3.0, 4.0, 5.0), width=128):
        super().__init__()
        self.embed = nn.Embedding(256, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in alphas)
        self.narrow = nn.Linear(width, 20)  # 20 eigenvalues: too few to fit
        self.widen = nn.Linear(20, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 256, bias=False)
        with torch.no_grad():
            for layer, alpha in zip(self.layers, alphas):
                layer.weight.copy_(pareto_matrix(width, width, alpha, seed=int(10 * alpha)) / 10)

    def forward(self, ids):
        h = self.embed(ids)
        for layer in self.layers:
            h = torch.tanh(layer(h))
        return self.head(self.norm(self.widen(self.narrow(h))))


def by_module(optimizer, key):
    return {g["module"]: g[key] for g in optimizer.param_groups}


def test_param_groups_give_each_weight_module_its_own_group():
    model = Net()
    model.layers[4].requires_grad_(False)
    groups = build_param_groups(model, weight_decay=0.1)
    assert groups[0]["module"] is None and all(g["weight_decay"] == 0.1 for g in groups)
    names = [g["module"] for g in groups[1:]]
    assert names == ["embed", *(f"layers.{i}" for i in range(4)), "narrow", "widen", "head"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(p.requires_grad for p in model.parameters())
    assert {id(p) for p in groups[0]["params"]} == {id(model.norm.weight), id(model.norm.bias)}


def test_alphadecay_assigns_the_linear_map_and_excludes_first_and_last():
    model = Net()
    opt = torch.optim.AdamW(build_param_groups(model), lr=1e-3, weight_decay=0.1)
    ad = AlphaDecay(opt, model, min_ratio=0.5, max_ratio=2.0)
    wd = by_module(opt, "weight_decay")
    # Linear layers in order: layers.0 (first, excluded) ... head (last, excluded); narrow/widen: 20 eigenvalues.
    tuned = [f"layers.{i}" for i in range(1, 5)]
    alpha = {r.name: r.alpha for r in analyze(model, ("hill",))}
    lo, hi = min(alpha[n] for n in tuned), max(alpha[n] for n in tuned)
    for name in tuned:
        assert wd[name] == pytest.approx(0.1 * (0.5 + 1.5 * (alpha[name] - lo) / (hi - lo)))
    assert wd["layers.1"] == pytest.approx(0.05) and wd["layers.4"] == pytest.approx(0.2)  # α≈2 least, α≈5 most
    assert wd["layers.1"] < wd["layers.2"] < wd["layers.3"] < wd["layers.4"]
    for untouched in ("layers.0", "head", "narrow", "widen", "embed", None):
        assert wd[untouched] == 0.1
    assert set(ad.alphas) == {*tuned, "narrow", "widen"}
    assert math.isnan(ad.alphas["narrow"]) and ad.ratios["narrow"] == 1.0


def test_alphadecay_re_measures_only_when_due():
    model = Net()
    opt = torch.optim.AdamW(build_param_groups(model), lr=1e-3, weight_decay=0.1)
    ad = AlphaDecay(opt, model, every=3, min_ratio=0.5, max_ratio=2.0)
    with torch.no_grad():  # swap the heaviest and the lightest tail
        w1, w4 = model.layers[1].weight.clone(), model.layers[4].weight.clone()
        model.layers[1].weight.copy_(w4)
        model.layers[4].weight.copy_(w1)
    ad.step()  # 1 update done; update 2 is not a multiple of 3
    assert by_module(opt, "weight_decay")["layers.1"] == pytest.approx(0.05)
    ad.step()  # 2 done: update 3 is due, re-measure first (the released code's `(update_step+1) % K`)
    wd = by_module(opt, "weight_decay")
    assert wd["layers.1"] == pytest.approx(0.2) and wd["layers.4"] == pytest.approx(0.05)


@pytest.mark.parametrize("decoupled", [True, False])
def test_optimizer_applies_the_scheduled_weight_decay(decoupled):
    """With zero loss gradients, AdamW shrinks θ by lr·wd_i; Adam's first step moves θ by lr·g/(|g|+eps), g = wd_i·θ."""
    model = Net()
    groups = build_param_groups(model)
    lr, eps = 0.01, 1.0
    opt = (torch.optim.AdamW if decoupled else torch.optim.Adam)(groups, lr=lr, eps=eps, weight_decay=0.1)
    AlphaDecay(opt, model, min_ratio=0.5, max_ratio=2.0)
    before = {g["module"]: [p.detach().clone() for p in g["params"]] for g in opt.param_groups}
    (0.0 * model(torch.tensor([[1, 2, 3]])).sum()).backward()
    opt.step()
    for group in opt.param_groups:
        wd = group["weight_decay"]
        for p, p0 in zip(group["params"], before[group["module"]]):
            expected = p0 * (1 - lr * wd) if decoupled else p0 - lr * (wd * p0) / ((wd * p0).abs() + eps)
            assert torch.allclose(p.detach(), expected, rtol=1e-5, atol=1e-7), group["module"]
    assert len({round(g["weight_decay"], 6) for g in opt.param_groups}) >= 4  # the values really differ


def test_schedulers_need_one_group_per_module():
    model = Net()
    with pytest.raises(ValueError, match="build_param_groups"):
        AlphaDecay(torch.optim.AdamW(model.parameters(), lr=1e-3), model)


def make_llr(model, schedule=None, **kwargs):
    opt = torch.optim.AdamW(build_param_groups(model), lr=1e-3)
    base = schedule(opt) if schedule else None
    options = {"total_steps": 100, "every": 10, "ramp": 4, "until": 0.5, "min_ratio": 1.0, "max_ratio": 3.0} | kwargs
    return opt, LLR(opt, model, base_scheduler=base, **options)


def test_llr_multipliers_with_embedding_and_head_at_the_max_ratio():
    model = Net()
    opt, llr = make_llr(model)
    lr = by_module(opt, "lr")
    alpha = {r.name: r.alpha for r in analyze(model, ("hill",)) if r.status == "ok"}
    measured = [n for n in alpha if n not in ("embed", "head")]
    lo, hi = min(alpha[n] for n in measured), max(alpha[n] for n in measured)
    for name in measured:
        assert lr[name] == pytest.approx(1e-3 * (1 + 2 * (alpha[name] - lo) / (hi - lo)))
    assert lr["embed"] == lr["head"] == pytest.approx(3e-3)  # not measured: given the largest α of the others
    assert lr[None] == lr["narrow"] == lr["widen"] == pytest.approx(1e-3)  # norms; too few eigenvalues
    assert llr.get_last_lr()[0] == pytest.approx(1e-3)  # the untagged group first: [0] is the base lr


@pytest.mark.parametrize("kind", ["lambda", "exponential"])
def test_llr_sits_on_top_of_closed_form_and_chainable_schedules(kind):
    model = Net()
    schedule = (lambda o: LambdaLR(o, lambda t: 1 - t / 100)) if kind == "lambda" else (lambda o: ExponentialLR(o, 0.9))
    opt, llr = make_llr(model, schedule, until=0.0)  # frozen: the multipliers stay the initial ones
    ratios = dict(llr.ratios)
    for t in range(1, 8):
        opt.step()
        llr.step()
        base = 1e-3 * ((1 - t / 100) if kind == "lambda" else 0.9**t)
        lr = by_module(opt, "lr")
        assert lr["layers.1"] == pytest.approx(base * ratios["layers.1"], rel=1e-9)
        assert lr["embed"] == pytest.approx(3 * base, rel=1e-9) and lr[None] == pytest.approx(base, rel=1e-9)


def test_llr_ramps_to_new_multipliers_then_freezes():
    model = Net()
    opt, llr = make_llr(model, every=10, ramp=4, until=0.3)
    old = dict(llr.ratios)
    with torch.no_grad():  # swap the heaviest and the lightest tail: their multipliers swap at the next recompute
        w1, w4 = model.layers[1].weight.clone(), model.layers[4].weight.clone()
        model.layers[1].weight.copy_(w4)
        model.layers[4].weight.copy_(w1)
    seen = []
    for _ in range(14):
        llr.step()
        seen.append(by_module(opt, "lr")["layers.1"] / 1e-3)
    assert seen[:8] == pytest.approx([old["layers.1"]] * 8)  # updates 2..9 keep the old multiplier
    new = llr.target["layers.1"]
    assert new == pytest.approx(old["layers.4"], rel=1e-6) and abs(new - old["layers.1"]) > 1
    # re-measured after 9 updates (update 10 is due); eased in over 4 updates, then held
    assert seen[8:] == pytest.approx(
        [old["layers.1"] + (new - old["layers.1"]) * f for f in (0.25, 0.5, 0.75, 1, 1, 1)]
    )
    with torch.no_grad():  # swap back: re-measured before updates 20 and 30 (<= 30% of 100 steps)
        model.layers[1].weight.copy_(w1)
        model.layers[4].weight.copy_(w4)
    for _ in range(30):
        llr.step()
    assert llr.target["layers.1"] == pytest.approx(old["layers.1"], rel=1e-6)  # re-measured at update 20 and 30
    with torch.no_grad():
        model.layers[1].weight.copy_(w4)
        model.layers[4].weight.copy_(w1)
    for _ in range(20):  # updates 45..64: past 30% of 100, frozen
        llr.step()
    assert by_module(opt, "lr")["layers.1"] / 1e-3 == pytest.approx(old["layers.1"], rel=1e-6)


def test_llr_resumes_the_same_learning_rates_from_a_reasonrl_checkpoint(tmp_path):
    """LLR is a drop-in for the trainer's scheduler: save_checkpoint / load_checkpoint (weights_only) round-trip it."""
    model = Net()

    def schedule(o: torch.optim.Optimizer) -> LambdaLR:
        return LambdaLR(o, lambda t: 1 - t / 100)

    opt, llr = make_llr(model, schedule)
    for _ in range(12):  # stop mid-ramp
        opt.step()
        llr.step()
    path = save_checkpoint(tmp_path, 12, model, opt, llr, {}, keep=1)
    opt2, llr2 = make_llr(model, schedule)
    load_checkpoint(path, model, opt2, llr2)
    assert llr2.step_count == 12 and llr2.get_last_lr() == llr.get_last_lr()
    for _ in range(5):
        opt.step(), opt2.step()
        llr.step(), llr2.step()
        assert llr2.get_last_lr() == pytest.approx(llr.get_last_lr(), rel=1e-12)


def test_alphadecay_state_dict_resumes_the_count_and_the_values():
    model = Net()
    opt = torch.optim.AdamW(build_param_groups(model), lr=1e-3, weight_decay=0.1)
    ad = AlphaDecay(opt, model, every=4)
    for _ in range(2):
        ad.step()
    opt2 = torch.optim.AdamW(build_param_groups(model), lr=1e-3, weight_decay=0.5)  # a different wd0 is overridden
    ad2 = AlphaDecay(opt2, model, every=4)
    ad2.load_state_dict(ad.state_dict())
    assert ad2.step_count == 2 and by_module(opt2, "weight_decay") == by_module(opt, "weight_decay")


def test_llr_with_torch_muon_and_adamw():
    """Hidden matrices in Muon, embedding/head/norms in AdamW; one LLR steers both optimizers."""
    model = Net()
    muon_groups, adamw_groups = split_for_muon(build_param_groups(model))
    assert all(p.ndim == 2 for g in muon_groups for p in g["params"])
    assert {g["module"] for g in adamw_groups} >= {"embed", "head", None}
    muon = torch.optim.Muon(muon_groups, lr=0.02, weight_decay=0.0)
    adamw = torch.optim.AdamW(adamw_groups, lr=1e-3)
    llr = LLR([muon, adamw], model, total_steps=100, every=5, ramp=2, min_ratio=1.0, max_ratio=3.0)
    ratio = llr.ratios
    for group in muon.param_groups:
        assert group["lr"] == pytest.approx(0.02 * ratio[group["module"]])
    lr = by_module(adamw, "lr")
    assert lr["embed"] == lr["head"] == pytest.approx(3e-3)
    assert lr["layers.1"] == pytest.approx(1e-3 * ratio["layers.1"])  # its bias, in AdamW, follows its weight
    before = model.layers[2].weight.detach().clone()
    model(torch.tensor([[1, 2, 3, 4]])).logsumexp(-1).sum().backward()
    muon.step()
    adamw.step()
    llr.step()
    assert not torch.equal(model.layers[2].weight, before)
    assert np.isfinite(list(llr.ratios.values())).all()
