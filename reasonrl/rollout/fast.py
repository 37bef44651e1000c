"""A lean decode loop for Llama-family models: the same weights as the HF module, a fraction of the per-token cost.

HF `generate` spends most of a small model's decode step in Python (logits processors, stopping criteria,
cache objects, module hooks). For tiny models on CPU that overhead is 5-10x the arithmetic, so this engine runs
the lean decoder (modeling/decoder.py) on the HF module's own parameters (read at every call, so it always
samples from the weights being trained), a preallocated KV cache, and batch compaction: rows that finished are
dropped from the batch so the long tail of a group does not pay for the short answers. For float32 models on
CPU with fused weights, each single-token step after the prefill runs its elementwise work and attention in C
(modeling/native.py, compiled at first use; 1.5-2.0x faster generation on the shipped student, same tokens drawn),
and PyTorch ops otherwise.

Models the decoder does not support (`unsupported_reason`: other architectures, quantised layers, DoRA) fall back
to HF `generate` (`HFEngine`).
"""

from __future__ import annotations

import torch

from reasonrl.modeling.decoder import Decoder, distinct_rows, native_step, prompt_attention_mask, unsupported_reason
from reasonrl.rollout.base import Rollouts, SamplingParams
from reasonrl.rollout.hf import HFEngine


def sample(logits: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next tokens and their log-probs under logits / temperature (before top-k/top-p, as HFEngine reports them)."""
    if params.greedy:
        return logits.argmax(-1), None
    scaled = logits / params.temperature
    logprobs = scaled.log_softmax(-1)
    filtered = scaled
    if params.top_k and params.top_k < scaled.shape[-1]:
        kth = scaled.topk(params.top_k, -1).values[:, -1:]
        filtered = filtered.masked_fill(filtered < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = filtered.sort(-1, descending=True)
        # drop a token when the tokens ranked above it already hold top_p of the mass (the top one always stays)
        drop = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1) >= params.top_p
        filtered = filtered.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    # Inverse-CDF sampling: one uniform per row instead of multinomial's one exponential per vocabulary entry.
    cdf = filtered.softmax(-1).cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, device=cdf.device).clamp_(min=1e-7) * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, u).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
    return tokens, logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _shrink(x: torch.Tensor, holes: torch.Tensor, movers: torch.Tensor, n: int, dim: int = 0) -> torch.Tensor:
    """The first n rows along `dim`, after running rows beyond n (`movers`) were copied into finished rows before n
    (`holes`): compaction moves only the rows that must move, and the result is a view of the same storage."""
    index = (slice(None),) * dim
    x[(*index, holes)] = x[(*index, movers)]
    return x[(*index, slice(0, n))]


class FastEngine(HFEngine):
    """Rollout engine with the lean decoder; falls back to HF `generate` for models it does not support."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_batch_size: int = 256, compact_below: float = 0.75):
        super().__init__(model, tokenizer, max_batch_size)
        # Drop finished rows once fewer than this share of the batch is running: a compaction copies the running
        # rows' caches, a finished row left in costs its share of every step.
        self.compact_below = compact_below
        self.native = True  # the fused C step where it applies (modeling/native.py); False keeps PyTorch ops
        self.decode_calls = 0  # forward passes of the decoder, for tests and benchmarks

    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams, out: Rollouts) -> None:
        if unsupported_reason(self.model, max(map(len, prompts)) + params.max_new_tokens):
            return super()._generate_chunk(prompts, params, out)
        tokens, logprobs, lengths, finished = self._decode(prompts, params)
        for i, p in enumerate(prompts):
            n = int(lengths[i])
            out.prompt_ids.append(list(p))
            out.completion_ids.append(tokens[i, :n].tolist())
            out.logprobs.append(logprobs[i, :n].tolist() if logprobs is not None else [])
            out.finished.append(bool(finished[i]))

    @torch.inference_mode()  # cheaper dispatch than no_grad: no version counters or view tracking
    def _decode(self, prompts: list[list[int]], params: SamplingParams):
        tok, device = self.tokenizer, next(self.model.parameters()).device
        decoder = Decoder(self.model, decode=True)
        batch, width, new = len(prompts), max(len(p) for p in prompts), params.max_new_tokens
        total = width + new
        ids = torch.full((batch, width), tok.pad_token_id, dtype=torch.long)
        real = torch.ones((batch, total), dtype=torch.bool)  # False on left padding
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            real[i, : width - len(p)] = False
        ids, real = ids.to(device), real.to(device)
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)
        cos_table, sin_table = decoder.rope_table(total, device)
        # Prefill each distinct prompt once (a group's G samples share it), then copy its cache to the group's rows.
        first, index = distinct_rows(ids, real[:, :width])
        shape = (len(decoder.layers), len(first), decoder.kv_heads, total, decoder.head_dim)
        k_cache, v_cache = (torch.empty(shape, device=device, dtype=decoder.dtype) for _ in range(2))
        mask, pos = prompt_attention_mask(real[first, :width]), positions[first, :width]
        logits = decoder.forward(ids[first], cos_table[pos], sin_table[pos], k_cache, v_cache, 0, mask)[index]
        k_cache, v_cache = k_cache[:, index], v_cache[:, index]
        self.decode_calls += 1

        # State per running row. Finished rows stay in the batch (sampling on, ignored) until compaction moves them
        # to the outputs and fills their slots with running rows from past the cut (only the columns filled so far).
        tokens_out = torch.full((batch, new), tok.pad_token_id, dtype=torch.long, device=device)
        logprobs_out, lengths_out = torch.zeros((batch, new), device=device), torch.full((batch,), new, device=device)
        finished_out = torch.zeros(batch, dtype=torch.bool, device=device)
        rows = torch.arange(batch, device=device)  # original row of each running row
        tokens, logprobs = torch.full_like(tokens_out, tok.pad_token_id), torch.zeros_like(logprobs_out)
        lengths, done = lengths_out.clone(), finished_out.clone()
        cos_rows, sin_rows = cos_table[positions], sin_table[positions]  # [B, T, D]: per step, a view
        fused_step = self.native and native_step(decoder, k_cache)
        if fused_step:  # the C step skips each row's left padding: it needs only where its real columns start
            padding = (~real[:, :width]).sum(-1)
        else:
            padding = torch.zeros(real.shape, dtype=decoder.dtype, device=device).masked_fill_(~real, float("-inf"))
            padding = padding.repeat_interleave(decoder.kv_heads, 0).unsqueeze(1)  # [B * KV, 1, T]: 0 or -inf per key

        def flush(which: torch.Tensor) -> None:
            original = rows[which]
            tokens_out[original], logprobs_out[original] = tokens[which], logprobs[which]
            lengths_out[original], finished_out[original] = lengths[which], done[which]

        for t in range(new):
            next_tokens, next_logprobs = sample(logits, params)
            tokens[:, t] = next_tokens
            if next_logprobs is not None:
                logprobs[:, t] = next_logprobs
            ended = (next_tokens == tok.eos_token_id) & ~done  # a finished, uncompacted row may sample on
            lengths = torch.where(ended, t + 1, lengths)
            done |= ended
            num_done, col = int(done.sum()), width + t
            if t == new - 1 or num_done == len(rows):
                break
            if len(rows) - num_done < self.compact_below * len(rows):
                flush(done)
                n = len(rows) - num_done
                holes, movers = done[:n].nonzero().squeeze(-1), (~done[n:]).nonzero().squeeze(-1) + n
                rows, next_tokens, tokens, logprobs, lengths, done, cos_rows, sin_rows = (
                    _shrink(x, holes, movers, n)
                    for x in (rows, next_tokens, tokens, logprobs, lengths, done, cos_rows, sin_rows)
                )
                for cache in (k_cache, v_cache):  # only the columns written so far need to move
                    _shrink(cache[:, :, :, :col], holes, movers, n, dim=1)
                k_cache, v_cache = k_cache[:, :n], v_cache[:, :n]
                if fused_step:
                    padding = _shrink(padding, holes, movers, n)
                else:
                    padding = _shrink(padding.view(-1, decoder.kv_heads * total), holes, movers, n).view(-1, 1, total)
            if fused_step:
                logits = fused_step(next_tokens, cos_rows[:, col], sin_rows[:, col], k_cache, v_cache, col, padding)
            else:
                logits = decoder.forward(
                    next_tokens.unsqueeze(-1),
                    cos_rows[:, col : col + 1],
                    sin_rows[:, col : col + 1],
                    k_cache,
                    v_cache,
                    col,
                    padding[:, :, : col + 1],
                )
            self.decode_calls += 1
        flush(torch.ones_like(done))
        logprobs = None if params.greedy else logprobs_out.cpu()
        return tokens_out.cpu(), logprobs, lengths_out.cpu(), finished_out.cpu()
