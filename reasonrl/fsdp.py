"""FSDP2 (`train.fsdp=true`): weights, gradients and optimizer states sharded over the ranks, for a model that does
not fit one device. PyTorch's own `fully_shard`, applied per decoder layer and then to the whole model.

Training runs HF's forward, whose hooks all-gather each layer's weights just in time. Everything else keeps the
data-parallel recipe of distributed.py: each rank has its own prompts, and the loss is divided by step-global totals.
FSDP must therefore sum gradients over ranks rather than average them (`set_gradient_divide_factor(1)`).
Sharding adds two constraints:
- A collective needs every rank. Generation, scoring and evaluation run inside `gathered`: every layer's full
  weights are all-gathered once, together, and no forward reshards. Decoding then needs no collectives, and ranks
  may stop after different numbers of tokens.
- Each rank's backward passes reduce-scatter gradients, so every rank must run as many of them
  (`pad_backward_passes`).
Checkpoints and the final model are written by rank 0 from full state dicts, so they are the files a one-process
run writes, and any number of ranks resumes from them.

LoRA (reasonrl/lora.py) shards the PEFT-wrapped model the same way: an FSDP unit holds its layer's frozen base weights
and trainable adapters together (FSDP2 shards per parameter, so mixed requires_grad is fine), gradients exist for the
adapters only, and the optimizer holds only them. Checkpoints gather the adapters alone, under PEFT's names, as a
one-process LoRA run writes them; the frozen base comes from model.path again on resume and export.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from reasonrl import distributed
from reasonrl.lora import adapter_copy, checkpoint_names, is_lora, unwrap

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
TRAINED = StateDictOptions(
    full_state_dict=True, cpu_offload=True, ignore_frozen_params=True
)  # dropped before gathering


def check_config(cfg) -> None:
    """Refuse, before any weights load, the settings FSDP does not combine with, each with its own reason."""
    if cfg.optim.weight_decay_schedule != "uniform" or cfg.optim.lr_schedule != "uniform":
        raise ValueError(
            "train.fsdp does not combine with HT-SR schedules (optim.lr_schedule, "
            "optim.weight_decay_schedule) yet: they measure full weight matrices, which FSDP shards"
        )
    if cfg.optim.name == "muon":
        raise ValueError(
            "train.fsdp does not combine with optim.name=muon: Muon orthogonalises each whole weight "
            "matrix (Newton-Schulz), which FSDP shards over the ranks; use optim.name=adamw with FSDP, "
            "or Muon with plain data parallelism (train.fsdp=false)"
        )
    if cfg.model.lora.quantize != "none":
        raise ValueError(
            f"train.fsdp does not combine with model.lora.quantize={cfg.model.lora.quantize} (QLoRA): "
            f"sharding bitsandbytes' quantised weights (CUDA only) is untested here; use plain LoRA "
            f"(model.lora.quantize=none) with FSDP"
        )


def shard(model: torch.nn.Module) -> None:
    """Shard `model` in place: each decoder layer is one FSDP unit (all-gathered just before it runs), the rest
    (embeddings, final norm, head) the root unit."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mesh = init_device_mesh(device, (distributed.world_size(),))
    layer_types = set(getattr(unwrap(model), "_no_split_modules", None) or [])  # a PEFT wrapper holds the HF model
    layers = [m for m in model.modules() if type(m).__name__ in layer_types]
    if not layers:
        raise ValueError(
            f"train.fsdp: found no decoder layers in {type(unwrap(model)).__name__} (no _no_split_modules)"
        )
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for unit in units(model):  # per unit: each holds its own reduction settings
        unit.set_gradient_divide_factor(1.0)  # each rank's loss is its share of the global loss: sum, not mean
        unit.set_force_sum_reduction_for_comms(True)  # plain SUM collectives: gloo has no PREMUL_SUM


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def units(model: torch.nn.Module) -> list[FSDPModule]:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def gathered(model: torch.nn.Module):
    """Every layer's full weights held for the block, all-gathered together on all ranks, and no resharding after
    forwards. Forwards inside then run without collectives, so ranks may run different numbers of them."""
    if not is_sharded(model):
        yield
        return
    for unit in units(model):
        unit.set_reshard_after_forward(False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units(model):
            unit.reshard()
            unit.set_reshard_after_forward(True)


def pad_backward_passes(model: torch.nn.Module, missing: int) -> None:
    """Zero-loss forward/backward passes that bring this rank to the most micro-batches any rank has this update:
    each backward reduce-scatters gradients, a collective every rank must join. A zero loss adds no gradient."""
    device = next(model.parameters()).device
    for _ in range(missing):
        logits = model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device)).logits
        (logits.sum() * 0.0).backward()


def grad_norm(total: torch.Tensor) -> float:
    """clip_grad_norm_'s total norm as a float (a replicated DTensor under FSDP)."""
    return float(total.full_tensor() if isinstance(total, DTensor) else total)


def full_model_state(model: torch.nn.Module) -> dict:
    """The full model state dict on rank 0's CPU (collective; other ranks get an empty dict)."""
    model_state = get_model_state_dict(model, options=FULL)
    # cpu_offload copies each tensor, so tied aliases (lm_head of tied embeddings) would be saved twice: keep the
    # names a plain model's checkpoint has, each parameter under its first name.
    first_names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    return {k: v for k, v in model_state.items() if k in first_names}


def checkpoint_weights(model: torch.nn.Module) -> dict:
    """What a checkpoint stores of the model, on rank 0's CPU (collective; other ranks get an empty dict): the full
    state, or with LoRA only the adapters, under PEFT's names (checkpoint.py's one-process layout)."""
    if not is_lora(model):
        return full_model_state(model)
    adapters = get_model_state_dict(model, options=TRAINED)  # only the adapters are gathered, not the frozen base
    return {saved: adapters[name] for name, saved in checkpoint_names(model).items()} if adapters else {}


def full_state(model: torch.nn.Module, optimizer) -> tuple[dict, dict]:
    """Checkpoint weights and the full optimizer state dict on rank 0's CPU (collective; other ranks get empty dicts).
    The optimizer's is converted to torch's own layout (states keyed by parameter index), the file a one-process run
    writes."""
    model_state = checkpoint_weights(model)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=FULL)
    if not optimizer_state:
        return model_state, {}
    index = {name: i for i, name in enumerate(_trained_names(model))}
    return model_state, {
        "state": {index[name]: value for name, value in optimizer_state["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in optimizer_state["param_groups"]],
    }


def load_full_state(model: torch.nn.Module, optimizer, model_state: dict, optimizer_state: dict | None) -> None:
    """Restore full state dicts (read by every rank, in the one-process layout) into the sharded model/optimizer."""
    names = _trained_names(model)
    needed = [n for n, _ in model.named_parameters()]  # tied aliases are named once
    if is_lora(model):  # an adapter checkpoint: the frozen base stays as model.path loaded it
        to_model = {saved: name for name, saved in checkpoint_names(model).items()}
        unknown = [k for k in model_state if k not in to_model]
        if unknown:
            raise ValueError(f"checkpoint tensor {unknown[0]!r} is no adapter weight of this model")
        model_state, needed = {to_model[k]: v for k, v in model_state.items()}, list(to_model.values())
    missing = [n for n in needed if n not in model_state]
    if missing:
        raise ValueError(f"checkpoint has no tensor {missing[0]!r} for this model")
    options = StateDictOptions(full_state_dict=True, strict=False)  # tied aliases (lm_head) are stored once
    set_model_state_dict(model, model_state, options=options)
    if optimizer is not None and optimizer_state is not None:
        by_name = {
            "state": {names[int(i)]: value for i, value in optimizer_state["state"].items()},
            "param_groups": [
                {**g, "params": [names[int(i)] for i in g["params"]]} for g in optimizer_state["param_groups"]
            ],
        }
        set_optimizer_state_dict(model, optimizer, by_name, options=options)


def _trained_names(model: torch.nn.Module) -> list[str]:
    """Names of the parameters the optimizer holds, in its order (optim.build_optimizer: requires_grad ones)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def unsharded_copy(model: torch.nn.Module) -> torch.nn.Module | None:
    """A plain CPU model with the full weights on rank 0, for exporting an HF folder (collective; None on the other
    ranks). With LoRA, the adapters on a weightless base: the export merges them into a fresh copy of model.path, as a
    one-process LoRA run's does, so the frozen base is never gathered."""
    if is_lora(model):
        adapters = get_model_state_dict(model, options=TRAINED)
        return adapter_copy(model, adapters) if distributed.is_main() else None
    model_state = full_model_state(model)  # the optimizer's state has no place in an exported model
    if not distributed.is_main():
        return None
    copy = _plain_class(model)._from_config(model.config)
    copy.load_state_dict(model_state, strict=False)
    copy.tie_weights()
    return copy


def _plain_class(model: torch.nn.Module) -> type:
    """fully_shard swaps the model's class for a subclass (FSDP<Name>); the HF class is its first plain base."""
    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
