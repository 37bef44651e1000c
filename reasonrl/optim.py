"""The optimizer and its schedules: AdamW or Muon, the warmup/decay lr schedule, and the HT-SR schedules on top.

`optim.name=muon` runs PyTorch's `torch.optim.Muon` on the 2-D weights of hidden layers (LoRA's A and B included:
they are the trainable hidden matrices of a LoRA run) and AdamW on embeddings, the output head and every 1-D
parameter (norms, biases), as Moonlight and the LLR paper do. With `optim.muon.adjust_lr_fn=match_rms_adamw` (the
default) Muon scales each update to AdamW's RMS (0.2·sqrt(max(A, B))), so one `optim.lr` and `optim.weight_decay`
serve both halves (Liu et al., "Muon is Scalable for LLM Training", arXiv 2502.16982).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from reasonrl.spectral import LLR, AlphaDecay, build_param_groups, split_for_muon


def lr_lambda(optim_cfg, total_steps: int):
    """Warmup then constant, linear or cosine decay to min_lr_ratio, as a multiplier of the base lr."""

    def factor(step: int) -> float:
        if step < optim_cfg.warmup_steps:
            return (step + 1) / (optim_cfg.warmup_steps + 1)
        progress = min(1.0, (step - optim_cfg.warmup_steps) / max(1, total_steps - optim_cfg.warmup_steps))
        floor = optim_cfg.min_lr_ratio
        if optim_cfg.schedule == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if optim_cfg.schedule == "linear":
            return floor + (1 - floor) * (1 - progress)
        if optim_cfg.schedule == "constant":
            return 1.0
        raise ValueError(f"unknown optim.schedule {optim_cfg.schedule!r}; choose constant, linear or cosine")

    return factor


class MuonWithAdamW(torch.optim.Optimizer):
    """torch.optim.Muon on `muon_groups` and torch.optim.AdamW on `adamw_groups`, as one optimizer.

    Both inner optimizers work on this object's own group dicts and `state`, so a scheduler that writes a group's
    `lr` (LambdaLR, LLR) or `weight_decay` (AlphaDecay) reaches the optimizer that owns its parameters, and torch's
    `state_dict` / `load_state_dict` cover both. Each group is tagged `"muon": True/False`; AdamW's groups come first.
    """

    def __init__(
        self,
        muon_groups: list[dict],
        adamw_groups: list[dict],
        *,
        lr: float,
        weight_decay: float,
        betas: tuple[float, float],
        eps: float,
        momentum: float,
        nesterov: bool,
        ns_steps: int,
        adjust_lr_fn: str,
    ):
        self.inner: dict[bool, torch.optim.Optimizer] = {}
        if adamw_groups:
            self.inner[False] = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        if muon_groups:
            self.inner[True] = torch.optim.Muon(
                muon_groups,
                lr=lr,
                weight_decay=weight_decay,
                momentum=momentum,
                nesterov=nesterov,
                ns_steps=ns_steps,
                adjust_lr_fn=adjust_lr_fn,
            )
        for muon, optimizer in self.inner.items():
            for group in optimizer.param_groups:
                group["muon"] = muon
        super().__init__([g for optimizer in self.inner.values() for g in optimizer.param_groups], defaults={})
        self._share()

    def _share(self) -> None:
        """Point the inner optimizers at this object's groups and state (load_state_dict replaces both)."""
        for muon, optimizer in self.inner.items():
            optimizer.param_groups = [g for g in self.param_groups if g["muon"] is muon]
            optimizer.state = self.state

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.inner.values():
            optimizer.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        saved = [g.get("muon") for g in state_dict["param_groups"]]
        if saved != [g["muon"] for g in self.param_groups]:
            raise ValueError(
                "the optimizer state does not split the parameters between Muon and AdamW as this run "
                "does; resume with the run's own optim.name and model settings"
            )
        super().load_state_dict(state_dict)
        self._share()


def build_optimizer(model: nn.Module, optim_cfg, total_steps: int):
    """The optimizer (AdamW, or Muon with AdamW), its lr schedule (LLR on top with optim.lr_schedule=llr) and
    AlphaDecay (or None).

    With an HT-SR schedule on, every weight matrix gets its own param group (`build_param_groups`) so the
    schedulers can write its lr / weight_decay; with Muon a module's weight and bias land in two groups of the same
    tag, one per inner optimizer, and the schedulers steer both. Otherwise one group per inner optimizer.
    """
    spectral = optim_cfg.weight_decay_schedule != "uniform" or optim_cfg.lr_schedule != "uniform"
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optim_cfg.name == "muon":
        muon, adamw = split_for_muon(build_param_groups(model), ("embed", "head", *embedding_names(model)))
        if not spectral:  # no scheduler steers single modules: one group per inner optimizer
            muon, adamw = (_merged(part) for part in (muon, adamw))
        mcfg = optim_cfg.muon
        optimizer = MuonWithAdamW(
            muon,
            adamw,
            lr=optim_cfg.lr,
            weight_decay=optim_cfg.weight_decay,
            betas=tuple(optim_cfg.betas),
            eps=optim_cfg.eps,
            momentum=mcfg.momentum,
            nesterov=mcfg.nesterov,
            ns_steps=mcfg.ns_steps,
            adjust_lr_fn=mcfg.adjust_lr_fn,
        )
    else:
        optimizer = torch.optim.AdamW(
            build_param_groups(model) if spectral else trainable,
            lr=optim_cfg.lr,
            betas=tuple(optim_cfg.betas),
            eps=optim_cfg.eps,
            weight_decay=optim_cfg.weight_decay,
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim_cfg, total_steps))
    if optim_cfg.lr_schedule == "llr":  # a drop-in scheduler: steps the LambdaLR itself, checkpoints both
        llr = optim_cfg.llr
        scheduler = LLR(
            optimizer,
            model,
            total_steps=total_steps,
            base_scheduler=scheduler,
            every=llr.every,
            ramp=llr.ramp,
            until=llr.until,
            min_ratio=llr.min_ratio,
            max_ratio=llr.max_ratio,
            mapping=llr.mapping,
        )
    alphadecay = None
    if optim_cfg.weight_decay_schedule == "alphadecay":
        ad = optim_cfg.alphadecay
        alphadecay = AlphaDecay(
            optimizer, model, every=ad.every, min_ratio=ad.min_ratio, max_ratio=ad.max_ratio, mapping=ad.mapping
        )
    return optimizer, scheduler, alphadecay


def _merged(groups: list[dict]) -> list[dict]:
    """The parameters of `groups` as one untagged group (none when there are none)."""
    params = [p for g in groups for p in g["params"]]
    return [{"params": params}] if params else []


def embedding_names(model: nn.Module) -> list[str]:
    """Names of the input embedding modules and of the output head, whatever the architecture calls them."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    return [name for name, m in model.named_modules() if name and (isinstance(m, nn.Embedding) or m is head)]


def step_schedules(scheduler, alphadecay: AlphaDecay | None) -> dict[str, float]:
    """Advance the lr schedule and AlphaDecay by one step; return α and ratios of those that re-measured α."""
    spectral = [s for s in (scheduler, alphadecay) if isinstance(s, (LLR, AlphaDecay))]
    before = [s.alphas for s in spectral]
    scheduler.step()
    if alphadecay is not None:
        alphadecay.step()
    # A re-measurement assigns a new `alphas` dict, so a changed identity marks the steps worth logging.
    return {k: v for s, old in zip(spectral, before) if s.alphas is not old for k, v in s.metrics().items()}


def initial_schedule_metrics(scheduler, alphadecay: AlphaDecay | None) -> dict[str, float]:
    """α and ratios the HT-SR schedulers assigned at construction, for the step-0 record."""
    return {k: v for s in (scheduler, alphadecay) if isinstance(s, (LLR, AlphaDecay)) for k, v in s.metrics().items()}
