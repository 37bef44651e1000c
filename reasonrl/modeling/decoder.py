"""The lean decoder: a supported HF model's forward pass written with plain tensor ops on the module's own parameters.

The rollout engine (rollout/fast.py) runs it against a preallocated KV cache (a prompt prefill, then one token at
a time); the shared-prefix training forward (modeling/shared_prefix.py) runs it over prompts and completions with
autograd. It reads the module's parameters when constructed, so it always computes with the weights being trained.
For float32 models on CPU with fused weights, RMSNorm, RoPE and SwiGLU run as C kernels (modeling/native.py,
compiled at first use), and each single-token decode step runs its elementwise work and attention in C
(`native_step`); PyTorch ops otherwise.

Supported: Llama, Qwen2, Qwen3 and Mistral-style decoders (RMSNorm, RoPE, GQA, SwiGLU; q/k norms; biases) with
a static RoPE and no active sliding window, plain or with PEFT LoRA adapters (read as merged weights W + scaling B A,
reasonrl/lora.py). `unsupported_reason` says why any other model (quantised layers, DoRA) is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

from reasonrl.lora import effective_weight, unsupported_projection, unwrap
from reasonrl.modeling import native

ARCHITECTURES = {"llama", "qwen2", "qwen3", "mistral"}
STATIC_ROPE = {"default", "linear", "llama3", "yarn", "longrope"}
FUSE_BELOW_PARAMS = 100_000_000


def unsupported_reason(model: torch.nn.Module, max_length: int) -> str | None:
    """Why the lean decoder cannot run `model` exactly (None when it can)."""
    model = unwrap(model)
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in ARCHITECTURES:
        return f"model_type {getattr(cfg, 'model_type', None)!r} is not one of {sorted(ARCHITECTURES)}"
    rope = (getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}).get(
        "rope_type", "default"
    )
    if rope not in STATIC_ROPE:
        return f"rope_type {rope!r} depends on the sequence length"
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and max_length > window:
        return f"sliding window of {window} tokens is shorter than {max_length}"
    if any(isinstance(p, DTensor) for p in model.parameters()):
        return "parameters are sharded (FSDP): HF's forward gathers them"
    layers = model.model.layers
    if not hasattr(layers[0].self_attn, "q_proj") or not hasattr(layers[0].mlp, "gate_proj"):
        return "decoder layers are not in the q/k/v_proj + gate/up/down_proj layout"
    for layer in layers:  # adapters may sit on some layers only
        for lin in _projections(layer):
            if reason := unsupported_projection(lin):
                return reason
    return None


def _projections(layer: torch.nn.Module) -> list[torch.nn.Module]:
    a, m = layer.self_attn, layer.mlp
    return [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]


@dataclass
class _Layer:
    """One decoder layer's weights. For small models q/k/v and gate/up are fused (one-element lists) so each is one
    matmul per step; for large ones they stay separate, as copying them would double their memory."""

    norm1: torch.Tensor
    norm2: torch.Tensor
    qkv: list[torch.Tensor]
    qkv_bias: list[torch.Tensor | None]
    out: torch.Tensor
    out_bias: torch.Tensor | None
    gate_up: list[torch.Tensor]
    gate_up_bias: list[torch.Tensor | None]
    down: torch.Tensor
    down_bias: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None


def _cat_bias(*linears) -> torch.Tensor | None:
    if all(lin.bias is None for lin in linears):
        return None
    return torch.cat(
        [lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.weight.shape[0]) for lin in linears]
    )


def _input_major(weight: torch.Tensor) -> torch.Tensor:
    """The same [out, in] matrix stored [in, out]: F.linear then runs x @ W^T on a contiguous operand, which MKL
    does 1.2-5.5x faster than on a transposed one for the few-row matmuls of a decode step (down_proj at 16-64 rows
    most of all; bench/decode_layout.py)."""
    return weight.t().contiguous().t()


def _weights(linears: list, fuse: bool, layout) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    weights = [effective_weight(lin) for lin in linears]
    if fuse:
        return [layout(torch.cat(weights))], [_cat_bias(*linears)]
    return weights, [lin.bias for lin in linears]


def _project(x: torch.Tensor, weights: list[torch.Tensor], biases: list, sizes: list[int]) -> list[torch.Tensor]:
    if len(weights) == 1:
        return list(F.linear(x, weights[0], biases[0]).split(sizes, -1))
    return [F.linear(x, w, b) for w, b in zip(weights, biases)]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, kernels: bool = False) -> torch.Tensor:
    if kernels and (lib := native.applies(x)):  # one pass each way (modeling/native.py)
        return native.RMSNorm.apply(x, weight, eps, lib)
    if x.dtype == torch.float32:  # one fused kernel instead of six ops; HF's float32 path is the same math
        return F.rms_norm(x, weight.shape, weight, eps)
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


def _decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float
) -> torch.Tensor:
    """One query per row against the cache, GQA without repeating keys: the query heads of a key head become
    rows of one small matmul (faster than SDPA's CPU kernel for a single query). `bias` [B * KV, 1, T] is 0 on
    keys a row may see and -inf on its padding; baddbmm adds it and the scale in the same kernel."""
    batch, heads, _, dim = q.shape
    kv_heads, length = k.shape[1], k.shape[2]
    q = q.reshape(batch * kv_heads, heads // kv_heads, dim)
    scores = torch.baddbmm(bias, q, k.reshape(batch * kv_heads, length, dim).transpose(1, 2), alpha=scale)
    return torch.bmm(scores.softmax(-1), v.reshape(batch * kv_heads, length, dim)).view(batch, heads, 1, dim)


def distinct_rows(ids: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of left-padded ids [B, W] that hold the same tokens on the same real positions (padding ids ignored):
    (one row of each distinct prompt, the distinct prompt of every row)."""
    distinct, index = torch.unique(torch.where(real, ids, -1), dim=0, return_inverse=True)
    return index.new_empty(len(distinct)).scatter_(0, index, torch.arange(len(ids), device=ids.device)), index


def prompt_attention_mask(real: torch.Tensor) -> torch.Tensor:
    """[B, 1, W, W]: causal over real tokens; a padding query may see itself, so no softmax row is empty."""
    eye = torch.eye(real.shape[1], dtype=torch.bool, device=real.device)
    return (torch.ones_like(eye).tril() & real[:, None, None, :]) | eye


class Decoder:
    """The forward pass of a supported HF model, written against a preallocated KV cache."""

    def __init__(self, model: torch.nn.Module, fuse: bool | None = None, decode: bool = False):
        model = unwrap(model)  # a PEFT model's adapters sit in the HF model's projections, read as merged weights
        cfg, base = model.config, model.model
        if fuse is None:  # fusing pays off where per-op overhead dominates; the copies are cheap only for small models
            fuse = sum(p.numel() for p in model.parameters()) < FUSE_BELOW_PARAMS
        # Generation (few rows per matmul) copies small models' weights input-major; training's thousands of rows
        # run as fast on the parameters as they are, and a copy there would only cost memory and a backward op.
        layout = _input_major if decode and fuse else (lambda weight: weight)
        self.model, self.base = model, base
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.eps = cfg.rms_norm_eps
        attn = base.layers[0].self_attn
        self.scaling = getattr(attn, "scaling", self.head_dim**-0.5)
        self.act = base.layers[0].mlp.act_fn
        self.silu = getattr(cfg, "hidden_act", None) in ("silu", "swish")  # what the C step computes
        # Small models (fused) also take the C kernels, which run on one thread: there they beat PyTorch's
        # dispatches; large models keep PyTorch ops, which split big elementwise work across threads.
        self.fused = fuse
        self.layers = []
        for layer in base.layers:
            a, m = layer.self_attn, layer.mlp
            q_norm, k_norm = getattr(a, "q_norm", None), getattr(a, "k_norm", None)
            (qkv, qkv_bias), (gate_up, gate_up_bias) = (
                _weights([a.q_proj, a.k_proj, a.v_proj], fuse, layout),
                _weights([m.gate_proj, m.up_proj], fuse, layout),
            )
            self.layers.append(
                _Layer(
                    norm1=layer.input_layernorm.weight,
                    norm2=layer.post_attention_layernorm.weight,
                    qkv=qkv,
                    qkv_bias=qkv_bias,
                    out=layout(effective_weight(a.o_proj)),
                    out_bias=a.o_proj.bias,
                    gate_up=gate_up,
                    gate_up_bias=gate_up_bias,
                    down=layout(effective_weight(m.down_proj)),
                    down_bias=m.down_proj.bias,
                    q_norm=q_norm.weight if q_norm is not None else None,
                    k_norm=k_norm.weight if k_norm is not None else None,
                )
            )
        self.split = [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim]
        self.dtype = self.layers[0].down.dtype
        self.intermediate = self.layers[0].down.shape[1]

    def rope_table(self, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for positions 0..length-1 from the model's own rotary module (any static RoPE variant)."""
        dummy = torch.zeros(1, 1, self.head_dim, device=device, dtype=self.dtype)
        cos, sin = self.base.rotary_emb(dummy, torch.arange(length, device=device).unsqueeze(0))
        return cos[0], sin[0]

    def attention_inputs(self, w: _Layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Queries [B, H, S, D] and rotated keys / values [B, KV, S, D] of layer `w` for hidden states x [B, S, E];
        cos/sin are [B, 1, S, D]."""
        batch, seq, _ = x.shape
        normed = _rms_norm(x, w.norm1, self.eps, self.fused)
        if self.fused and w.q_norm is None and (lib := native.applies(x)):  # RoPE and transposes in one pass
            qk, v = native.RopeSplit.apply(
                F.linear(normed, w.qkv[0], w.qkv_bias[0]),
                cos.squeeze(1),
                sin.squeeze(1),
                self.heads,
                self.kv_heads,
                lib,
            )
            return *qk.split([self.heads, self.kv_heads], 1), v
        q, k, v = _project(normed, w.qkv, w.qkv_bias, self.split)
        q = q.view(batch, seq, self.heads, self.head_dim)
        k = k.view(batch, seq, self.kv_heads, self.head_dim)
        if w.q_norm is not None:  # Qwen3: per-head RMSNorm of queries and keys before RoPE
            q, k = _rms_norm(q, w.q_norm, self.eps, self.fused), _rms_norm(k, w.k_norm, self.eps, self.fused)
        q, k = _rotate(torch.cat([q, k], 2).transpose(1, 2), cos, sin).split([self.heads, self.kv_heads], 1)
        return q, k, v.view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)

    def attention_output_and_mlp(self, w: _Layer, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """The residual stream after the output projection of attention output o [B, H, S, D] and the MLP."""
        batch, seq, _ = x.shape
        x = x + F.linear(o.transpose(1, 2).reshape(batch, seq, -1), w.out, w.out_bias)
        normed = _rms_norm(x, w.norm2, self.eps, self.fused)
        if self.fused and self.silu and (lib := native.applies(x)):
            hidden = native.SwiGLU.apply(F.linear(normed, w.gate_up[0], w.gate_up_bias[0]), lib)
        else:
            gate, up = _project(normed, w.gate_up, w.gate_up_bias, [self.intermediate] * 2)
            hidden = self.act(gate) * up
        return x + F.linear(hidden, w.down, w.down_bias)

    def attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, scale=self.scaling, enable_gqa=self.kv_heads != self.heads
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(_rms_norm(x, self.base.norm.weight, self.eps, self.fused)).float()

    def forward(
        self,
        ids: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        start: int,
        attn_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Logits of the last position. ids [B, S] sit at cache columns start..start+S; cos/sin [B, S, D]."""
        end = start + ids.shape[1]
        x = self.base.embed_tokens(ids)  # the module, so its padding_idx (no gradient) holds too
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        for i, w in enumerate(self.layers):
            q, k, v = self.attention_inputs(w, x, cos, sin)
            k_cache[i, :, :, start:end], v_cache[i, :, :, start:end] = k, v
            keys, values = k_cache[i, :, :, :end], v_cache[i, :, :, :end]
            if ids.shape[1] == 1:
                o = _decode_attention(q, keys, values, attn_mask, self.scaling)
            else:
                o = self.attend(q, keys, values, attn_mask)
            x = self.attention_output_and_mlp(w, x, o)
        return self.logits(x[:, -1])


def native_step(decoder: Decoder, k_cache: torch.Tensor):
    """The fused C decode step for `decoder` (modeling/native.py), or None where it does not apply: no compiler,
    not float32 on CPU, unfused projections (large models), an activation other than SiLU."""
    if (
        k_cache.device.type != "cpu"
        or decoder.dtype != torch.float32
        or not decoder.fused
        or not decoder.silu
        or decoder.head_dim % 2
        or not k_cache[0, 0].is_contiguous()
    ):
        return None
    lib = native.kernels()
    return native.NativeStep(decoder, lib) if lib is not None else None
