"""optim.name=muon: Muon on the hidden matrices, AdamW on the rest, steered by LLR/AlphaDecay, resumed exactly."""

import copy
import json
import math

import pytest
import torch
from test_spectral_schedulers import Net
from transformers import AutoModelForCausalLM

from reasonrl import fsdp
from reasonrl.checkpoint import load_checkpoint, save_checkpoint
from reasonrl.cli import main
from reasonrl.config import load_config
from reasonrl.lora import apply_lora
from reasonrl.models import arith_tokenizer, tiny_model
from reasonrl.optim import MuonWithAdamW, build_optimizer, lr_lambda

HTSR = [
    "optim.name=muon",
    "optim.lr=0.01",
    "optim.weight_decay=0.1",
    "optim.warmup_steps=2",
    "optim.lr_schedule=llr",
    "optim.llr.until=1.0",
    "optim.weight_decay_schedule=alphadecay",
    "optim.alphadecay.min_ratio=0.5",
    "optim.alphadecay.max_ratio=2.0",
]


def set_grads(model, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def hand_optimizer(params, muon, cfg):
    """A fresh torch Muon or AdamW on clones, configured as optim.* says (lr and decay are set per step)."""
    if muon:
        return torch.optim.Muon(
            params,
            momentum=cfg.muon.momentum,
            nesterov=cfg.muon.nesterov,
            ns_steps=cfg.muon.ns_steps,
            adjust_lr_fn=cfg.muon.adjust_lr_fn,
        )
    return torch.optim.AdamW(params, betas=tuple(cfg.betas), eps=cfg.eps)


def test_hidden_matrices_get_muon_and_the_rest_adamw_with_llr_and_alphadecay_values():
    cfg = load_config(None, HTSR).optim
    model = Net()
    reference = copy.deepcopy(model)
    optimizer, llr, alphadecay = build_optimizer(model, cfg, total_steps=10)
    assert isinstance(optimizer, MuonWithAdamW)
    name_of = {id(p): n for n, p in model.named_parameters()}
    in_muon = {name_of[id(p)] for g in optimizer.param_groups if g["muon"] for p in g["params"]}
    assert in_muon == {*(f"layers.{i}.weight" for i in range(5)), "narrow.weight", "widen.weight"}
    # Groups are still one per module (weight in Muon, bias in AdamW under the same tag), norms untagged.
    tags = [(g["module"], g["muon"]) for g in optimizer.param_groups]
    assert tags[0] == (None, False) and ("layers.1", True) in tags and ("layers.1", False) in tags
    assert len(tags) == len(set(tags))
    # Two steps, each checked against hand-run torch optimizers on clones, using the lr LLR should give each
    # module (base lr x schedule x its ratio) and the decay AlphaDecay should give it (wd0 x its ratio).
    ref_params = dict(reference.named_parameters())
    hand = [
        hand_optimizer([ref_params[name_of[id(p)]] for p in g["params"]], g["muon"], cfg)
        for g in optimizer.param_groups
    ]
    for step in range(2):
        factor = lr_lambda(cfg, 10)(step)
        set_grads(model, step)
        set_grads(reference, step)
        for g, h in zip(optimizer.param_groups, hand):
            lr = cfg.lr * factor * llr.ratios.get(g["module"], 1.0)
            wd = cfg.weight_decay * alphadecay.ratios.get(g["module"], 1.0)
            assert g["lr"] == pytest.approx(lr, rel=1e-12) and g["weight_decay"] == pytest.approx(wd, rel=1e-12)
            h.param_groups[0]["lr"], h.param_groups[0]["weight_decay"] = lr, wd
            h.step()
        optimizer.step()
        llr.step()
        alphadecay.step()
        for name, p in model.named_parameters():
            assert torch.equal(p, ref_params[name]), (step, name)
    # The schedules really differ between modules, so a lost per-group value would have failed the equality.
    for ratios in (llr.ratios, alphadecay.ratios):
        assert len({round(v, 6) for v in ratios.values()}) > 3


def test_checkpoint_round_trip_resumes_to_identical_next_step_weights(tmp_path):
    cfg = load_config(None, HTSR).optim

    def build():
        torch.manual_seed(0)
        model = Net()
        return (model, *build_optimizer(model, cfg, total_steps=10))

    model, optimizer, llr, alphadecay = build()
    for step in range(3):
        set_grads(model, step)
        optimizer.step()
        llr.step()
        alphadecay.step()
    path = save_checkpoint(tmp_path, 3, model, optimizer, llr, {"alphadecay": alphadecay.state_dict()}, keep=1)
    model2, optimizer2, llr2, alphadecay2 = build()
    state = load_checkpoint(path, model2, optimizer2, llr2)
    alphadecay2.load_state_dict(state["alphadecay"])
    for inner in optimizer2.inner.values():  # the inner optimizers work on the restored groups and state
        assert all(any(g is h for h in optimizer2.param_groups) for g in inner.param_groups)
        assert inner.state is optimizer2.state
    for m, opt, *schedules in ((model, optimizer, llr, alphadecay), (model2, optimizer2, llr2, alphadecay2)):
        set_grads(m, 3)
        opt.step()
        for s in schedules:
            s.step()
    for (name, p), p2 in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, p2), name
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [
        (g["lr"], g["weight_decay"]) for g in optimizer2.param_groups
    ]


def test_a_checkpoint_from_adamw_does_not_load_into_muon():
    cfg = load_config(None, HTSR).optim
    model = Net()
    adamw, _, _ = build_optimizer(model, load_config(None, HTSR[1:]).optim, total_steps=10)
    muon, _, _ = build_optimizer(model, cfg, total_steps=10)
    with pytest.raises(ValueError, match="split the parameters between Muon and AdamW"):
        muon.load_state_dict(adamw.state_dict())


def test_llama_embeddings_head_and_norms_go_to_adamw_and_lora_adapters_to_muon():
    cfg = load_config(None, ["optim.name=muon"]).optim
    model = tiny_model(arith_tokenizer(), "nano", seed=0)
    optimizer, _, _ = build_optimizer(model, cfg, total_steps=10)
    name_of = {id(p): n for n, p in model.named_parameters()}
    groups = {
        muon: {name_of[id(p)] for g in optimizer.param_groups if g["muon"] is muon for p in g["params"]}
        for muon in (True, False)
    }
    assert len(optimizer.param_groups) == 2  # no HT-SR schedule: one group per inner optimizer
    projections = [f"self_attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")]
    assert groups[True] == {f"model.layers.{i}.{p}.weight" for i in range(2) for p in projections}
    assert "model.embed_tokens.weight" in groups[False] and "model.norm.weight" in groups[False]
    assert len(groups[True]) + len(groups[False]) == len(list(model.parameters()))  # lm_head is tied to the embedding
    lora = apply_lora(tiny_model(arith_tokenizer(), "nano", seed=0), load_config(None, ["model.lora.r=4"]).model.lora)
    optimizer, _, _ = build_optimizer(lora, cfg, total_steps=10)
    assert [g["muon"] for g in optimizer.param_groups] == [True]  # only the adapters train, all 2-D hidden
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(p.requires_grad for p in lora.parameters())
    before = {n: p.detach().clone() for n, p in lora.named_parameters() if p.requires_grad}
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    lora(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()  # B starts at zero, so A's first gradient is zero: Muon must leave it finite (unchanged)
    after = dict(lora.named_parameters())
    assert all(torch.isfinite(after[n]).all() for n in before)
    assert all(not torch.equal(after[n], before[n]) for n in before if "lora_B" in n)


def test_fsdp_refuses_muon():
    with pytest.raises(ValueError, match="Newton-Schulz"):
        fsdp.check_config(load_config(None, ["optim.name=muon", "train.fsdp=true"]))


def test_train_with_muon_runs_and_changes_the_weights(nano_dir, tmp_path, capsys):
    run = tmp_path / "run"
    argv = [
        "train",
        f"model.path={nano_dir}",
        "--output-dir",
        str(run),
        "algo=sft",
        "optim.name=muon",
        "optim.lr=3e-3",
        "optim.warmup_steps=0",
        "train.prompts_per_step=2",
        "train.steps=3",
        "data.eval_n=2",
        "rollout.max_completion_length=8",
        "--quiet",
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    before = AutoModelForCausalLM.from_pretrained(nano_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(run / "final").state_dict()
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight", "model.norm.weight"):
        assert not torch.equal(before[name], after[name]), name
