/* Fused float32 CPU kernels (reasonrl/modeling/native.py): one decode step of a Llama-family model, and RMSNorm,
RoPE and SwiGLU forward and backward for the training forward.

A decode step of a small model is a few small matmuls and about a hundred elementwise ops, each of which costs
PyTorch a dispatch and a pass over memory. The matmuls stay in PyTorch (MKL); everything between them is here,
one call per stretch, one pass per row: the residual add with the next RMSNorm, q/k norms with RoPE, the cache
write with single-query attention, and SwiGLU. Every pointer is to contiguous float32 rows unless a stride says
otherwise. Compiled with -O3 -march=native -ffast-math (but not linked with it, which would set flush-to-zero
for the whole process): sums are reassociated, so results differ from PyTorch's in the last bits, and nothing
here relies on infinities (masked keys are skipped, not set to -inf). */

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define MAX_HEAD_DIM 512
#define MAX_GROUP 64

/* out = x * rsqrt(squares / dim + eps) * weight for one row of `dim` whose sum of squares is `squares`; returns
   the rsqrt (the backward needs it). */
static float scale_row(const float *x, const float *weight, float *out, int64_t dim, float squares, float eps) {
    float scale = 1.0f / sqrtf(squares / (float)dim + eps);
    for (int64_t i = 0; i < dim; i++) out[i] = (x[i] * scale) * weight[i];
    return scale;
}

static float rms_row(const float *x, const float *weight, float *out, int64_t dim, float eps) {
    float squares = 0.0f;
    for (int64_t i = 0; i < dim; i++) squares += x[i] * x[i];
    return scale_row(x, weight, out, dim, squares, eps);
}

/* x += delta (when delta is not NULL), then out = RMSNorm(x) * weight, row by row; with rstd (not NULL), each
   row's rsqrt(mean(x^2) + eps) is kept there for the backward. */
void add_rms_norm(float *x, const float *delta, const float *weight, float *out, float *rstd, int64_t rows,
                  int64_t dim, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        float *xr = x + r * dim, scale;
        if (delta) {  /* the add and the squares in one pass */
            float squares = 0.0f;
            for (int64_t i = 0; i < dim; i++) {
                xr[i] += delta[r * dim + i];
                squares += xr[i] * xr[i];
            }
            scale = scale_row(xr, weight, out + r * dim, dim, squares, eps);
        } else {
            scale = rms_row(xr, weight, out + r * dim, dim, eps);
        }
        if (rstd) rstd[r] = scale;
    }
}

/* One head vector, optionally RMS-normed (Qwen3's q/k norm), then rotated: HF's x * cos + rotate_half(x) * sin. */
static void norm_and_rotate(const float *x, const float *norm, float eps, const float *cos, const float *sin,
                            int64_t dim, float *out) {
    float normed[MAX_HEAD_DIM];
    if (norm) {
        rms_row(x, norm, normed, dim, eps);
        x = normed;
    }
    int64_t half = dim / 2;
    for (int64_t i = 0; i < half; i++) {
        out[i] = x[i] * cos[i] - x[i + half] * sin[i];
        out[i + half] = x[i + half] * cos[i + half] + x[i] * sin[i + half];
    }
}

/* Queries of one key head's group (`group` rotated rows of `dim`) against its keys and values ([span, dim]) at
   columns first..last: out[h] = softmax(scale * q[h] . K) V. Inlined with `dim` a constant for the common head
   sizes, so the loops over it vectorise without remainders. */
static inline __attribute__((always_inline)) void attend_group(const float *restrict query,
        const float *restrict keys, const float *restrict values, int64_t first, int64_t last, int64_t group,
        const int64_t dim, float scale, float *restrict scores, int64_t span, float *restrict out) {
    for (int64_t h = 0; h < group; h++) {
        const float *qh = query + h * dim;
        float *sh = scores + h * span;
        int64_t j = first;
        for (; j + 3 <= last; j += 4) {  /* four independent sums: one dot product alone waits on its own adds */
            const float *k0 = keys + j * dim, *k1 = k0 + dim, *k2 = k1 + dim, *k3 = k2 + dim;
            float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
            for (int64_t i = 0; i < dim; i++) {
                d0 += qh[i] * k0[i];
                d1 += qh[i] * k1[i];
                d2 += qh[i] * k2[i];
                d3 += qh[i] * k3[i];
            }
            sh[j] = d0 * scale, sh[j + 1] = d1 * scale, sh[j + 2] = d2 * scale, sh[j + 3] = d3 * scale;
        }
        for (; j <= last; j++) {
            float dot = 0.0f;
            for (int64_t i = 0; i < dim; i++) dot += qh[i] * keys[j * dim + i];
            sh[j] = dot * scale;
        }
    }
    for (int64_t h = 0; h < group; h++) {
        float *sh = scores + h * span, top = -3.0e38f, total = 0.0f, acc[MAX_HEAD_DIM];
        for (int64_t j = first; j <= last; j++) top = sh[j] > top ? sh[j] : top;
        for (int64_t j = first; j <= last; j++) {
            sh[j] = expf(sh[j] - top);
            total += sh[j];
        }
        for (int64_t i = 0; i < dim; i++) acc[i] = 0.0f;
        for (int64_t j = first; j <= last; j++)
            for (int64_t i = 0; i < dim; i++) acc[i] += sh[j] * values[j * dim + i];
        for (int64_t i = 0; i < dim; i++) out[h * dim + i] = acc[i] / total;
    }
}

static void attend(const float *query, const float *keys, const float *values, int64_t first, int64_t last,
                   int64_t group, int64_t dim, float scale, float *scores, int64_t span, float *out) {
    switch (dim) {  /* constant head sizes for the compiler; other sizes take the generic loop */
    case 32: attend_group(query, keys, values, first, last, group, 32, scale, scores, span, out); break;
    case 64: attend_group(query, keys, values, first, last, group, 64, scale, scores, span, out); break;
    case 128: attend_group(query, keys, values, first, last, group, 128, scale, scores, span, out); break;
    default: attend_group(query, keys, values, first, last, group, dim, scale, scores, span, out);
    }
}

/* qkv [rows, (heads + 2 kv_heads) * dim] holds this step's projections. Each row's rotated key and its value are
   written to column `col` of the caches ([rows, kv_heads, max_len, dim], rows `cache_row_stride` apart), then each
   query head attends over columns starts[row]..col of its key head (the left padding before starts[row] is
   skipped). out [rows, heads * dim]. cos/sin hold each row's position, rows `rope_stride` apart. `scores` is
   scratch of heads / kv_heads * max_len floats. Returns nonzero on sizes it cannot take. */
int attention_step(const float *qkv, int64_t rows, int64_t heads, int64_t kv_heads, int64_t dim,
                   const float *cos, const float *sin, int64_t rope_stride, const float *q_norm,
                   const float *k_norm, float eps, float *k_cache, float *v_cache, int64_t cache_row_stride,
                   int64_t max_len, const int64_t *starts, int64_t col, float scale, float *out, float *scores) {
    int64_t group = heads / kv_heads;
    if (dim > MAX_HEAD_DIM || dim % 2 || col >= max_len || group * kv_heads != heads || group > MAX_GROUP) return 1;
    int64_t width = (heads + 2 * kv_heads) * dim;
    float query[MAX_GROUP * MAX_HEAD_DIM];
    for (int64_t r = 0; r < rows; r++) {
        const float *q = qkv + r * width, *k = q + heads * dim, *v = k + kv_heads * dim;
        const float *c = cos + r * rope_stride, *s = sin + r * rope_stride;
        for (int64_t g = 0; g < kv_heads; g++) {
            float *keys = k_cache + r * cache_row_stride + g * max_len * dim;
            float *values = v_cache + r * cache_row_stride + g * max_len * dim;
            norm_and_rotate(k + g * dim, k_norm, eps, c, s, dim, keys + col * dim);
            for (int64_t i = 0; i < dim; i++) values[col * dim + i] = v[g * dim + i];
            for (int64_t h = 0; h < group; h++)
                norm_and_rotate(q + (g * group + h) * dim, q_norm, eps, c, s, dim, query + h * dim);
            if (starts[r] < 0 || starts[r] > col) return 2;
            attend(query, keys, values, starts[r], col, group, dim, scale, scores, max_len,
                   out + (r * heads + g * group) * dim);
        }
    }
    return 0;
}

/* gate_up [rows, 2 * inter] (gate, then up) -> out [rows, inter] = silu(gate) * up. */
void swiglu(const float *gate_up, int64_t rows, int64_t inter, float *out) {
    for (int64_t r = 0; r < rows; r++) {
        const float *g = gate_up + r * 2 * inter, *u = g + inter;
        float *o = out + r * inter;
        for (int64_t i = 0; i < inter; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

/* ---- Training: the backward of the same stretches, for torch.autograd.Functions (native.py); their forward is
   add_rms_norm (with rstd), rope_split and swiglu ---- */

/* With n = x * rstd and gn = grad * weight: grad_x = rstd * (gn - n * mean(gn * n)); grad_weight (when not NULL)
   = sum over rows of grad * n. */
void rms_norm_backward(const float *grad, const float *x, const float *weight, const float *rstd, float *grad_x,
                       float *grad_weight, int64_t rows, int64_t dim) {
    if (grad_weight)
        for (int64_t i = 0; i < dim; i++) grad_weight[i] = 0.0f;
    for (int64_t r = 0; r < rows; r++) {
        const float *g = grad + r * dim, *xr = x + r * dim;
        float *gx = grad_x + r * dim, s = rstd[r], dot = 0.0f;
        for (int64_t i = 0; i < dim; i++) dot += g[i] * weight[i] * xr[i];
        float coef = dot * s * s / (float)dim;
        for (int64_t i = 0; i < dim; i++) gx[i] = s * (g[i] * weight[i] - xr[i] * coef);
        if (grad_weight)
            for (int64_t i = 0; i < dim; i++) grad_weight[i] += g[i] * xr[i] * s;
    }
}

/* qkv [batch, seq, (heads + 2 kv_heads) * dim] -> rotated queries and keys qk [batch, heads + kv_heads, seq, dim]
   and values [batch, kv_heads, seq, dim] (the attention layout). cos/sin [batch, seq, dim]. With `inverse`, the
   backward: grad_qk and grad_v in, grad_qkv out (the rotation's transpose, x*cos - rotate_half(x)*sin, and the
   values' transpose). */
void rope_split(float *qkv, float *qk, float *v, const float *cos, const float *sin, int64_t batch, int64_t seq,
                int64_t heads, int64_t kv_heads, int64_t dim, int inverse) {
    int64_t width = (heads + 2 * kv_heads) * dim, half = dim / 2, rotated = heads + kv_heads;
    for (int64_t b = 0; b < batch; b++)
        for (int64_t t = 0; t < seq; t++) {
            float *row = qkv + (b * seq + t) * width;
            const float *c = cos + (b * seq + t) * dim, *s = sin + (b * seq + t) * dim;
            for (int64_t h = 0; h < rotated; h++) {
                float *x = row + h * dim, *y = qk + ((b * rotated + h) * seq + t) * dim;
                if (!inverse) {
                    norm_and_rotate(x, NULL, 0.0f, c, s, dim, y);
                } else {
                    for (int64_t i = 0; i < half; i++) {
                        x[i] = y[i] * c[i] + y[i + half] * s[i + half];
                        x[i + half] = y[i + half] * c[i + half] - y[i] * s[i];
                    }
                }
            }
            for (int64_t h = 0; h < kv_heads; h++) {
                float *x = row + (rotated + h) * dim, *y = v + ((b * kv_heads + h) * seq + t) * dim;
                if (!inverse)
                    for (int64_t i = 0; i < dim; i++) y[i] = x[i];
                else
                    for (int64_t i = 0; i < dim; i++) x[i] = y[i];
            }
        }
}

/* The backward of swiglu: grad [rows, inter] -> grad_gate_up [rows, 2 * inter]. */
void swiglu_backward(const float *grad, const float *gate_up, int64_t rows, int64_t inter, float *grad_gate_up) {
    for (int64_t r = 0; r < rows; r++) {
        const float *gr = grad + r * inter, *g = gate_up + r * 2 * inter, *u = g + inter;
        float *gg = grad_gate_up + r * 2 * inter, *gu = gg + inter;
        for (int64_t i = 0; i < inter; i++) {
            float sig = 1.0f / (1.0f + expf(-g[i]));
            gu[i] = gr[i] * g[i] * sig;
            gg[i] = gr[i] * u[i] * sig * (1.0f + g[i] * (1.0f - sig));
        }
    }
}
