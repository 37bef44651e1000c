"""Optimizer states as flat tensors plus JSON, for checkpoints that hold no pickles (safetensors and JSON only)."""

from __future__ import annotations

import torch


def optimizer_tensors(optimizers: dict[str, torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors `optim.NAME.PARAM.SLOT`, param groups per name): everything load_optimizers needs."""
    tensors: dict[str, torch.Tensor] = {}
    groups = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        groups[name] = sd["param_groups"]
        for idx, slots in sd["state"].items():
            tensors |= {f"optim.{name}.{idx}.{k}": v for k, v in slots.items()}
    return tensors, groups


def load_optimizers(
    optimizers: dict[str, torch.optim.Optimizer], tensors: dict[str, torch.Tensor], groups: dict
) -> None:
    """Restore what optimizer_tensors saved; other keys in `tensors` are ignored."""
    for name, opt in optimizers.items():
        slots: dict[int, dict] = {}
        for key, v in tensors.items():
            if key.startswith(f"optim.{name}."):
                idx, slot = key.removeprefix(f"optim.{name}.").split(".", 1)
                slots.setdefault(int(idx), {})[slot] = v
        opt.load_state_dict({"state": slots, "param_groups": groups[name]})
