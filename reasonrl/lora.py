"""LoRA and QLoRA through PEFT: only low-rank adapters train; the base weights stay frozen (with QLoRA, quantised).

`model.lora.r=16` wraps the loaded model with peft's `get_peft_model`, so the optimizer sees only each targeted
projection's A (r x in) and B (out x r), and the projection computes h = W x + (alpha / r) B A x (Hu et al. 2021,
eq. 3). The rollout engine and the shared-prefix training forward read the merged weight W + (alpha / r) B A
(`effective_weight`), so a LoRA run generates as fast as a plain model and exactly as the merged model does.
Checkpoints hold the adapter only (the base comes from model.path); `RUN_DIR/final` is the merged model, which loads
like any HF folder, with the adapter in PEFT's format in `final/adapter`. Under FSDP (reasonrl/fsdp.py) rank 0 writes
the same files from the gathered adapters (`checkpoint_names`, `adapter_copy`).

PEFT is optional (`pip install reasonrl[lora]`): nothing here imports it until a LoRA model is built or saved.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from reasonrl.config import LoRAConfig

ADAPTER_DIR = "adapter"  # RUN_DIR/final/adapter: adapter_config.json + adapter_model.safetensors


def _import_peft():
    try:
        import peft
    except ImportError as e:
        raise ImportError("model.lora.r > 0 needs PEFT: pip install 'reasonrl[lora]' (or pip install peft)") from e
    return peft


@contextmanager
def _quiet_peft():
    """peft reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model: not ours to fix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def quantization_config(quantize: str, dtype: torch.dtype, device: torch.device):
    """bitsandbytes settings for QLoRA's 4-bit NF4 (Dettmers et al. 2023) or 8-bit base weights; one clear error
    where they cannot run, since bitsandbytes' quantised layers need a CUDA GPU."""
    if device.type != "cuda":
        raise RuntimeError(
            f"model.lora.quantize={quantize} (QLoRA) needs a CUDA GPU for bitsandbytes' quantised "
            f"layers, but the model device is {device}; use model.lora.quantize=none (plain LoRA) here"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            f"model.lora.quantize={quantize} (QLoRA) needs bitsandbytes: pip install bitsandbytes"
        ) from e
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """`model` wrapped by PEFT with fresh adapters (B = 0, so the wrapped model computes what `model` did); only the
    adapters require grad."""
    peft = _import_peft()
    if cfg.quantize != "none":  # norms to float32, base frozen; checkpointing stays model.gradient_checkpointing's
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = "all-linear" if list(cfg.target_modules) == ["all-linear"] else list(cfg.target_modules)
    config = peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    with _quiet_peft():
        return peft.get_peft_model(model, config)


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def unwrap(model: nn.Module) -> nn.Module:
    """The HF model inside a PEFT wrapper (its projections carry the adapters); `model` itself otherwise."""
    return model.get_base_model() if is_lora(model) else model


def unsupported_projection(linear: nn.Module) -> str | None:
    """Why `linear` is not one weight matrix the decoder can read (None when it is: nn.Linear, or LoRA on one)."""
    if type(linear) is nn.Linear:
        return None
    if not hasattr(linear, "lora_A") or type(linear.get_base_layer()) is not nn.Linear:
        return "projections are not nn.Linear layers or LoRA on them (e.g. quantised)"
    for name in linear.active_adapters:
        if name in getattr(linear, "lora_variant", {}) or getattr(linear, "lora_bias", {}).get(name):
            return f"LoRA adapter {name!r} is a variant (DoRA, lora_bias, ...), not W + scaling B A"
    return None


def effective_weight(linear: nn.Module) -> torch.Tensor:
    """The weight of the map `linear` applies: W, or for a PEFT LoRA layer W + scaling B A over its active adapters,
    rounded to W's dtype as a merge would (differentiable in A and B). LoRA dropout, a training-time noise, is no part
    of the map."""
    if not hasattr(linear, "lora_A"):
        return linear.weight
    weight = linear.get_base_layer().weight
    if linear.merged or linear.disable_adapters:  # merged: W already holds B A
        return weight
    merged = weight
    for name in linear.active_adapters:
        if name in linear.lora_A:
            merged = merged + linear.get_delta_weight(name)  # peft's own scaling * B @ A, transposed if fan_in_fan_out
    return merged.to(weight.dtype)


def merged_training_reason(model: nn.Module) -> str | None:
    """Why merged weights would not compute what PEFT's forward does in training (None when they do): a low-precision
    base with float32 adapters loses small updates B A when rounded into W, and dropout on the adapters' input has no
    merged form."""
    for module in unwrap(model).modules():
        if hasattr(module, "lora_A"):
            for name in module.active_adapters:
                if name not in module.lora_A:
                    continue
                if module.lora_A[name].weight.dtype != module.get_base_layer().weight.dtype:
                    return "LoRA adapters are in a wider dtype than the base weights"
                if model.training and getattr(module.lora_dropout[name], "p", 0.0):
                    return "LoRA dropout is on"
    return None


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights alone, under PEFT's names (what a checkpoint of a LoRA run stores)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, state)


def checkpoint_names(model: nn.Module) -> dict[str, str]:
    """Each adapter parameter's name in `model` -> its name in a checkpoint (PEFT's, without the adapter's name), as
    `adapter_state_dict` writes it. PEFT renames without copying, so each parameter is found by identity."""
    from peft import get_peft_model_state_dict

    params = dict(model.named_parameters())
    name_of = {id(p): name for name, p in params.items()}
    return {name_of[id(p)]: saved for saved, p in get_peft_model_state_dict(model, state_dict=params).items()}


def adapter_copy(model: nn.Module, adapters: dict[str, torch.Tensor]) -> nn.Module:
    """A plain PEFT model with `model`'s adapter config and the weights `adapters` (under `model`'s names), on a base
    that has no weights (meta device): all `save_pretrained_atomic` needs, as it writes the adapter and merges it into a
    fresh copy of the base. For a sharded `model`, whose base no rank holds whole."""
    peft = _import_peft()
    base = unwrap(model)
    with torch.device("meta"), _quiet_peft():
        empty = type(base)._from_config(base.config)
        empty.name_or_path = base.name_or_path  # adapter_config.json names the base, as the trained model's does
        plain = peft.get_peft_model(empty, copy.deepcopy(model.peft_config[model.active_adapter]))
    plain.load_state_dict(adapters, strict=False, assign=True)  # assign: real tensors replace the meta ones
    return plain


def merged_model(adapter_dir: Path, base_path: str, dtype: str) -> nn.Module:
    """A fresh CPU copy of the base model with the adapter in `adapter_dir` merged into its weights (full precision
    for QLoRA too: the quantised copy is only the training's)."""
    from reasonrl.models import load_model

    peft = _import_peft()
    base, _ = load_model(base_path, dtype, "cpu")
    with _quiet_peft():
        return peft.PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight of the merged model under the base model's own (HF) names, without copying the base: what an
    engine that loads HF checkpoints (vLLM's `load_weights`) needs after each update."""
    base, out = unwrap(model), {}
    for name, module in base.named_modules():
        if hasattr(module, "lora_A"):
            out[f"{name}.weight"] = effective_weight(module).detach()
            if module.get_base_layer().bias is not None:
                out[f"{name}.bias"] = module.get_base_layer().bias.detach()
    for name, value in base.state_dict().items():  # state_dict, not parameters: tied weights keep both names
        if ".lora_" not in name and ".base_layer." not in name:
            out.setdefault(name, value)
    return out
