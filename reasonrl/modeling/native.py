"""Fused CPU kernels (cpu_kernels.c) for the lean decoder and the shared-prefix training forward, compiled once
per machine.

On CPU a small model's decode step is mostly PyTorch dispatches of tiny elementwise ops and one-query attention;
the C file does everything between the matmuls in three calls per layer (the step ran 1.8-4.1x faster at 64 to 8
rows on the shipped student, bench/native_kernels.py). In training, RMSNorm, RoPE and SwiGLU each become one pass
forward and one backward (torch.autograd.Functions below) instead of the five to fifteen elementwise kernels
autograd records for them (the training forward + backward ran 1.2-1.3x faster).

The library is built at first use with the system C compiler (`cc`, or $CC) into ~/.cache/reasonrl (or
$REASONRL_CACHE), keyed by the source, the compiler and the CPU, so a shared home directory never loads a binary
built for another CPU. Without a compiler, or with REASONRL_NATIVE=0, the same PyTorch ops as before run: the
same math, slower.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_kernels.c")
# -ffast-math only when compiling: linked in, it would add crtfastmath.o, which sets flush-to-zero for the whole
# process at load time (subnormal floats would vanish everywhere, not just here).
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fPIC", "-std=gnu11"]
_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {
    "add_rms_norm": ([_P, _P, _P, _P, _P, _I, _I, _F], None),
    "attention_step": ([_P, _I, _I, _I, _I, _P, _P, _I, _P, _P, _F, _P, _P, _I, _I, _P, _I, _F, _P, _P], ctypes.c_int),
    "swiglu": ([_P, _I, _I, _P], None),
    "rms_norm_backward": ([_P, _P, _P, _P, _P, _P, _I, _I], None),
    "rope_split": ([_P, _P, _P, _P, _P, _I, _I, _I, _I, _I, ctypes.c_int], None),
    "swiglu_backward": ([_P, _P, _I, _I, _P], None),
}
_loaded: dict[str, object] = {}
enabled = True  # False: PyTorch ops everywhere (benchmarks compare the two in one process)


def _cache_dir() -> Path:
    if os.environ.get("REASONRL_CACHE"):
        return Path(os.environ["REASONRL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reasonrl"


def _cpu_id() -> str:
    """The CPU's model and feature flags: -march=native code is only valid where these are the same."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(FLAGS).encode(), _cpu_id().encode()]))
    target = _cache_dir() / f"cpu_kernels-{key.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Build beside the target, then rename: a concurrent or interrupted build never leaves a partial library.
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            obj, lib = Path(scratch) / "kernels.o", Path(scratch) / "kernels.so"
            for command in (
                [compiler, *FLAGS, "-c", str(SOURCE), "-o", str(obj)],
                [compiler, "-shared", str(obj), "-o", str(lib), "-lm"],
            ):
                done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
                if done.returncode:
                    raise RuntimeError(f"{' '.join(command[:2])} ... failed: {done.stderr.strip()[-500:]}")
            os.replace(lib, target)
    lib = ctypes.CDLL(str(target))
    for name, (args, result) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    return lib


def kernels() -> ctypes.CDLL | None:
    """The compiled kernels, or None (REASONRL_NATIVE=0, or the build failed: warned once, PyTorch ops are used)."""
    if not enabled or os.environ.get("REASONRL_NATIVE", "1") == "0":
        return None
    if "lib" not in _loaded:
        try:
            _loaded["lib"] = _build()
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            warnings.warn(f"reasonrl: fused CPU kernels unavailable ({e}); using PyTorch ops", stacklevel=2)
            _loaded["lib"] = None
    return _loaded["lib"]  # type: ignore[return-value]


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class NativeStep:
    """One decode step of a fused-weight `Decoder` (modeling/decoder.py) with the C kernels between its matmuls."""

    def __init__(self, decoder, lib: ctypes.CDLL):
        self.decoder, self.lib = decoder, lib

    def __call__(
        self,
        ids: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        col: int,
        starts: torch.Tensor,
    ) -> torch.Tensor:
        """Logits [B, V] of ids [B] at cache column `col`. cos/sin [B, D] (rows may be strided); caches
        [L, B, KV, T, D] with contiguous rows; starts [B] int64, each row's first real column."""
        d, lib = self.decoder, self.lib
        rows, heads, kv_heads, dim = len(ids), d.heads, d.kv_heads, d.head_dim
        max_len, eps = k_cache.shape[3], d.eps
        x = d.base.embed_tokens(ids).contiguous()  # the residual stream, updated in place by add_rms_norm
        normed, attended = torch.empty_like(x), x.new_empty(rows, heads * dim)
        hidden = x.new_empty(rows, d.intermediate)
        scores = x.new_empty((heads // kv_heads) * max_len)
        lib.add_rms_norm(
            x.data_ptr(), None, d.layers[0].norm1.data_ptr(), normed.data_ptr(), None, rows, x.shape[1], eps
        )
        for i, w in enumerate(d.layers):
            qkv = torch.nn.functional.linear(normed, w.qkv[0], w.qkv_bias[0])
            keys, values = k_cache[i], v_cache[i]
            failed = lib.attention_step(
                qkv.data_ptr(),
                rows,
                heads,
                kv_heads,
                dim,
                cos.data_ptr(),
                sin.data_ptr(),
                cos.stride(0),
                _ptr(w.q_norm),
                _ptr(w.k_norm),
                eps,
                keys.data_ptr(),
                values.data_ptr(),
                keys.stride(0),
                max_len,
                starts.data_ptr(),
                col,
                d.scaling,
                attended.data_ptr(),
                scores.data_ptr(),
            )
            if failed:
                raise RuntimeError(f"decode kernel rejected the step (code {failed}): dim {dim}, column {col}")
            out = torch.nn.functional.linear(attended, w.out, w.out_bias)
            lib.add_rms_norm(
                x.data_ptr(), out.data_ptr(), w.norm2.data_ptr(), normed.data_ptr(), None, rows, x.shape[1], eps
            )
            gate_up = torch.nn.functional.linear(normed, w.gate_up[0], w.gate_up_bias[0])
            lib.swiglu(gate_up.data_ptr(), rows, d.intermediate, hidden.data_ptr())
            down = torch.nn.functional.linear(hidden, w.down, w.down_bias)
            next_norm = d.layers[i + 1].norm1 if i + 1 < len(d.layers) else d.base.norm.weight
            lib.add_rms_norm(
                x.data_ptr(), down.data_ptr(), next_norm.data_ptr(), normed.data_ptr(), None, rows, x.shape[1], eps
            )
        return d.model.lm_head(normed).float()


def applies(x: torch.Tensor) -> ctypes.CDLL | None:
    """The kernels, when they can take x: float32 on CPU."""
    return kernels() if x.dtype == torch.float32 and x.device.type == "cpu" else None


class RMSNorm(torch.autograd.Function):
    """x * rsqrt(mean(x^2) + eps) * weight over the last dimension (HF's float32 RMSNorm)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, lib) -> torch.Tensor:
        x, weight = x.contiguous(), weight.contiguous()
        rows, dim = x.numel() // x.shape[-1], x.shape[-1]
        out, rstd = torch.empty_like(x), x.new_empty(rows)
        # x is only read: add_rms_norm writes to it only when given a residual to add
        lib.add_rms_norm(x.data_ptr(), None, weight.data_ptr(), out.data_ptr(), rstd.data_ptr(), rows, dim, eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.lib = lib
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        grad, grad_x = grad.contiguous(), torch.empty_like(x)
        grad_weight = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        ctx.lib.rms_norm_backward(
            grad.data_ptr(),
            x.data_ptr(),
            weight.data_ptr(),
            rstd.data_ptr(),
            grad_x.data_ptr(),
            _ptr(grad_weight),
            len(rstd),
            x.shape[-1],
        )
        return grad_x, grad_weight, None, None


class RopeSplit(torch.autograd.Function):
    """qkv [B, S, (H + 2 KV) * D] -> (rotated queries and keys [B, H + KV, S, D], values [B, KV, S, D]): HF's
    apply_rotary_pos_emb and the transposes to the attention layout in one pass. cos/sin [B, S, D]."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int, lib):
        qkv, cos, sin = qkv.contiguous(), cos.contiguous(), sin.contiguous()
        batch, seq, width = qkv.shape
        dim = width // (heads + 2 * kv_heads)
        qk, v = qkv.new_empty(batch, heads + kv_heads, seq, dim), qkv.new_empty(batch, kv_heads, seq, dim)
        lib.rope_split(
            qkv.data_ptr(),
            qk.data_ptr(),
            v.data_ptr(),
            cos.data_ptr(),
            sin.data_ptr(),
            batch,
            seq,
            heads,
            kv_heads,
            dim,
            0,
        )
        ctx.save_for_backward(cos, sin)
        ctx.sizes, ctx.lib = (batch, seq, heads, kv_heads, dim, width), lib
        return qk, v

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_qk: torch.Tensor | None, grad_v: torch.Tensor | None):
        cos, sin = ctx.saved_tensors
        batch, seq, heads, kv_heads, dim, width = ctx.sizes
        grad_qk = cos.new_zeros(batch, heads + kv_heads, seq, dim) if grad_qk is None else grad_qk.contiguous()
        grad_v = cos.new_zeros(batch, kv_heads, seq, dim) if grad_v is None else grad_v.contiguous()
        grad_qkv = cos.new_empty(batch, seq, width)
        ctx.lib.rope_split(
            grad_qkv.data_ptr(),
            grad_qk.data_ptr(),
            grad_v.data_ptr(),
            cos.data_ptr(),
            sin.data_ptr(),
            batch,
            seq,
            heads,
            kv_heads,
            dim,
            1,
        )
        return grad_qkv, None, None, None, None, None


class SwiGLU(torch.autograd.Function):
    """gate_up [..., 2 I] (gate, then up) -> silu(gate) * up [..., I]."""

    @staticmethod
    def forward(ctx, gate_up: torch.Tensor, lib) -> torch.Tensor:
        gate_up = gate_up.contiguous()
        inter = gate_up.shape[-1] // 2
        out = gate_up.new_empty(*gate_up.shape[:-1], inter)
        lib.swiglu(gate_up.data_ptr(), gate_up.numel() // (2 * inter), inter, out.data_ptr())
        ctx.save_for_backward(gate_up)
        ctx.lib = lib
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (gate_up,) = ctx.saved_tensors
        grad, grad_gate_up = grad.contiguous(), torch.empty_like(gate_up)
        ctx.lib.swiglu_backward(
            grad.data_ptr(), gate_up.data_ptr(), grad.numel() // grad.shape[-1], grad.shape[-1], grad_gate_up.data_ptr()
        )
        return grad_gate_up, None
