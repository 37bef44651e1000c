"""The fused C decode kernels (modeling/native.py) against plain PyTorch formulas, and the build's failure modes."""

import os

import pytest
import torch
import torch.nn.functional as F

from reasonrl.modeling import decoder, native
from reasonrl.modeling.shared_prefix import shared_prefix_logits
from reasonrl.models import encode_prompt, load_model
from reasonrl.rollout import fast
from reasonrl.rollout.base import SamplingParams

pytestmark = pytest.mark.skipif(os.environ.get("REASONRL_NATIVE") == "0", reason="REASONRL_NATIVE=0")


@pytest.fixture(scope="module")
def lib():
    built = native.kernels()
    assert built is not None, "the decode kernels did not build (is a C compiler installed?)"
    return built


def rotate(x, cos, sin):  # HF's apply_rotary_pos_emb, written out
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def test_add_rms_norm_adds_the_residual_in_place_then_normalises(lib):
    torch.manual_seed(0)
    x, delta, weight, out = torch.randn(5, 48), torch.randn(5, 48), torch.randn(48), torch.empty(5, 48)
    expected_x = x + delta
    lib.add_rms_norm(x.data_ptr(), delta.data_ptr(), weight.data_ptr(), out.data_ptr(), None, 5, 48, 1e-5)
    torch.testing.assert_close(x, expected_x)
    torch.testing.assert_close(out, rms(expected_x, weight, 1e-5), rtol=1e-5, atol=1e-5)
    rstd = torch.empty(5)
    lib.add_rms_norm(x.data_ptr(), None, weight.data_ptr(), out.data_ptr(), rstd.data_ptr(), 5, 48, 1e-5)  # no residual
    torch.testing.assert_close(x, expected_x)
    torch.testing.assert_close(rstd, torch.rsqrt(expected_x.pow(2).mean(-1) + 1e-5), rtol=1e-5, atol=1e-6)


def test_swiglu_is_silu_of_gate_times_up(lib):
    torch.manual_seed(0)
    gate_up, out = torch.randn(3, 2 * 40) * 4, torch.empty(3, 40)
    lib.swiglu(gate_up.data_ptr(), 3, 40, out.data_ptr())
    torch.testing.assert_close(out, F.silu(gate_up[:, :40]) * gate_up[:, 40:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "heads,kv_heads,dim,qk_norm", [(4, 2, 32, False), (4, 4, 16, False), (8, 2, 64, True), (2, 1, 10, True)]
)
def test_attention_step_writes_the_cache_and_attends_past_the_padding(lib, heads, kv_heads, dim, qk_norm):
    """Against a naive reference: keys rotated (after Qwen3's q/k norms) into column `col`, values copied, each
    query head softmax-attends over its row's columns starts[row]..col of its key head (GQA)."""
    torch.manual_seed(0)
    rows, max_len, col, eps, scale = 3, 12, 7, 1e-6, dim**-0.5
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * dim)
    table_cos, table_sin = torch.randn(rows, 20, dim), torch.randn(rows, 20, dim)  # strided rows, as in decoding
    cos, sin = table_cos[:, 5], table_sin[:, 5]
    q_norm, k_norm = (torch.randn(dim), torch.randn(dim)) if qk_norm else (None, None)
    k_cache, v_cache = torch.randn(2, rows, kv_heads, max_len, dim), torch.randn(2, rows, kv_heads, max_len, dim)
    keys, values = k_cache[1], v_cache[1]  # layer 1: the row stride spans the whole cache row
    starts = torch.tensor([0, 3, 7])
    out, scores = torch.empty(rows, heads * dim), torch.empty(heads // kv_heads * max_len)
    expected_keys, expected_values, layer0 = keys.clone(), values.clone(), (k_cache[0].clone(), v_cache[0].clone())

    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], -1)
    q, k, v = q.view(rows, heads, dim), k.view(rows, kv_heads, dim), v.view(rows, kv_heads, dim)
    if qk_norm:
        q, k = rms(q, q_norm, eps), rms(k, k_norm, eps)
    q, k = rotate(q, cos[:, None], sin[:, None]), rotate(k, cos[:, None], sin[:, None])
    expected_keys[:, :, col], expected_values[:, :, col] = k, v
    expected = torch.empty(rows, heads, dim)
    for r in range(rows):
        for h in range(heads):
            g = h // (heads // kv_heads)
            ks, vs = expected_keys[r, g, starts[r] : col + 1], expected_values[r, g, starts[r] : col + 1]
            expected[r, h] = torch.softmax(ks @ q[r, h] * scale, -1) @ vs

    failed = lib.attention_step(
        qkv.data_ptr(),
        rows,
        heads,
        kv_heads,
        dim,
        cos.data_ptr(),
        sin.data_ptr(),
        cos.stride(0),
        q_norm.data_ptr() if qk_norm else None,
        k_norm.data_ptr() if qk_norm else None,
        eps,
        keys.data_ptr(),
        values.data_ptr(),
        keys.stride(0),
        max_len,
        starts.data_ptr(),
        col,
        scale,
        out.data_ptr(),
        scores.data_ptr(),
    )
    assert failed == 0
    torch.testing.assert_close(keys, expected_keys, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values, expected_values)
    torch.testing.assert_close(out.view(rows, heads, dim), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(k_cache[0], layer0[0]) and torch.equal(v_cache[0], layer0[1])  # other layers untouched
    starts[2] = col + 1  # a row with no visible key is refused, not divided by zero
    assert (
        lib.attention_step(
            qkv.data_ptr(),
            rows,
            heads,
            kv_heads,
            dim,
            cos.data_ptr(),
            sin.data_ptr(),
            cos.stride(0),
            None,
            None,
            eps,
            keys.data_ptr(),
            values.data_ptr(),
            keys.stride(0),
            max_len,
            starts.data_ptr(),
            col,
            scale,
            out.data_ptr(),
            scores.data_ptr(),
        )
        != 0
    )


def student_prompts(tok):
    return [
        encode_prompt(tok, f"Compute {a}+{b}. Put the final answer in \\boxed{{}}.")
        for a, b in [(1, 2), (13, 29), (5, 5), (47, 38), (9, 1), (60, 21)]
    ]


def test_the_student_decodes_with_the_kernels_and_samples_what_pytorch_samples(lib, monkeypatch):
    """The shipped model takes the C step, and it draws the same tokens as the PyTorch step from the same seed,
    with log-probs within 1e-4."""
    model, tok = load_model("student")
    calls = []
    original = native.NativeStep.__call__
    monkeypatch.setattr(native.NativeStep, "__call__", lambda self, *a: calls.append(1) or original(self, *a))
    engine, params = fast.FastEngine(model, tok), SamplingParams(max_new_tokens=40, temperature=1.0)
    torch.manual_seed(3)
    ours = engine.generate(student_prompts(tok), 4, params)
    steps = len(calls)
    assert steps > 20  # one call per decode step after the prefill
    engine.native = False
    monkeypatch.setattr(native, "enabled", False)  # PyTorch ops throughout, not just for the step
    torch.manual_seed(3)
    theirs = engine.generate(student_prompts(tok), 4, params)
    assert len(calls) == steps  # the PyTorch step really ran
    assert ours.completion_ids == theirs.completion_ids
    assert len({len(c) for c in ours.completion_ids}) > 3  # rows finished at different steps (compaction ran)
    worst = max(abs(a - b) for x, y in zip(ours.logprobs, theirs.logprobs) for a, b in zip(x, y))
    assert worst < 1e-4


def test_a_failed_build_warns_once_falls_back_and_leaves_no_file(tmp_path, monkeypatch):
    model, tok = load_model("student")
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setenv("REASONRL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a compiler that always fails
    with pytest.warns(UserWarning, match="fused CPU kernels unavailable"):
        assert native.kernels() is None
    assert list(tmp_path.iterdir()) == []  # no partial library left behind
    out = fast.FastEngine(model, tok).generate(
        student_prompts(tok)[:2], 1, SamplingParams(max_new_tokens=8, greedy=True)
    )
    assert all(out.completion_ids)  # decoding went on with PyTorch ops


def test_loading_the_kernels_keeps_subnormal_floats(tmp_path, monkeypatch):
    """Fast-math code linked with crtfastmath.o would switch the whole process to flush-to-zero when loaded."""
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setenv("REASONRL_CACHE", str(tmp_path))
    assert native.kernels() is not None
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # a float32 subnormal
    assert float(tiny * 2) > 0 and 5e-324 * 1.5 > 0


def test_the_library_is_cached_per_source(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setenv("REASONRL_CACHE", str(tmp_path))
    assert native.kernels() is not None
    built = list(tmp_path.glob("cpu_kernels-*.so"))
    assert len(built) == 1 and list(tmp_path.iterdir()) == built  # the library alone, no temporary files
    monkeypatch.setattr(native, "_loaded", {})
    stamp = built[0].stat().st_mtime_ns
    assert native.kernels() is not None and built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


def backward_of(fn, inputs, grad_out):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward(outs, grad_out)
    return [o.detach() for o in outs], [t.grad for t in inputs]


def test_rms_norm_function_matches_autograd_of_the_formula(lib):
    torch.manual_seed(0)
    x, weight = torch.randn(2, 5, 24) * 3, torch.randn(24)
    grad = (torch.randn(2, 5, 24),)
    ours = backward_of(lambda a, w: native.RMSNorm.apply(a, w, 1e-6, lib), [x, weight], grad)
    theirs = backward_of(lambda a, w: rms(a, w, 1e-6), [x.double(), weight.double()], (grad[0].double(),))
    for a, b in zip(ours[0] + ours[1], theirs[0] + theirs[1]):
        torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-5)


def test_rope_split_function_matches_autograd_of_the_formula(lib):
    torch.manual_seed(0)
    batch, seq, heads, kv_heads, dim = 2, 5, 4, 2, 16
    qkv = torch.randn(batch, seq, (heads + 2 * kv_heads) * dim)
    cos, sin = torch.randn(batch, seq, dim), torch.randn(batch, seq, dim)
    grads = (torch.randn(batch, heads + kv_heads, seq, dim), torch.randn(batch, kv_heads, seq, dim))

    def reference(t):
        q, k, v = t.split([heads * dim, kv_heads * dim, kv_heads * dim], -1)
        qk = torch.cat([q.view(batch, seq, heads, dim), k.view(batch, seq, kv_heads, dim)], 2)
        return rotate(qk, cos[:, :, None], sin[:, :, None]).transpose(1, 2), v.view(
            batch, seq, kv_heads, dim
        ).transpose(1, 2)

    ours = backward_of(lambda t: native.RopeSplit.apply(t, cos, sin, heads, kv_heads, lib), [qkv], grads)
    theirs = backward_of(reference, [qkv], grads)
    for a, b in zip(ours[0] + ours[1], theirs[0] + theirs[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_swiglu_function_matches_autograd_of_the_formula(lib):
    torch.manual_seed(0)
    gate_up, grad = torch.randn(3, 4, 2 * 20) * 3, (torch.randn(3, 4, 20),)
    ours = backward_of(lambda t: native.SwiGLU.apply(t, lib), [gate_up], grad)
    theirs = backward_of(lambda t: F.silu(t[..., :20]) * t[..., 20:], [gate_up], grad)
    for a, b in zip(ours[0] + ours[1], theirs[0] + theirs[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_large_models_keep_pytorch_ops(monkeypatch):
    """The kernels run on one thread, so models above the fusing size train and decode with PyTorch's ops."""
    model, tok = load_model("student")
    applied = []
    for fn in (native.RMSNorm, native.RopeSplit, native.SwiGLU):
        monkeypatch.setattr(fn, "apply", lambda *a, _f=fn.apply: applied.append(1) or _f(*a))
    monkeypatch.setattr(native.NativeStep, "__call__", lambda *a: applied.append(1))
    ids = torch.tensor([student_prompts(tok)[0] + [5, 6, 7]])
    shared_prefix_logits(model, ids, torch.ones_like(ids), 3)
    assert applied  # the student is small: kernels
    applied.clear()
    monkeypatch.setattr(decoder, "FUSE_BELOW_PARAMS", 0)
    shared_prefix_logits(model, ids, torch.ones_like(ids), 3)
    fast.FastEngine(model, tok).generate(student_prompts(tok)[:2], 1, SamplingParams(max_new_tokens=4, greedy=True))
    assert not applied
