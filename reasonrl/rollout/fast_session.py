"""A KV-cached multi-turn session over the lean decoder (FastEngine.open): history is never recomputed.

The session stores one KV cache row per episode [L, E, KV, T, D] and, per row, which columns hold its tokens (a
turn that stopped early leaves holes after it; an observation chunk leaves left padding inside it) and how many it
holds. Each operation works on a batch of its rows, laid out as the decoder expects (`KVBatch`: each row's tokens
contiguous and ending at one common column) by one gather along the column axis (`realign`; keys carry their RoPE
rotation already, so moving columns changes nothing), and writes the batch back:

- `append(rows, ids)`: one forward over the new tokens only, written at the common columns, each row's chunk
  left-padded inside the chunk; the mask hides the chunk padding, RoPE positions count each row's real tokens.
  Projections and MLP run on the real tokens only (`ragged_forward`), so only attention pays for the padding.
- `generate(rows, params)`: FastEngine's decode loop (the fused C step where it applies) from the rows' next-token
  logits, until each row hits EOS, a stop id or max_new_tokens; other rows stay as they are.

A turn's last sampled token is not in the cache yet: it waits as the row's pending token and goes through the next
forward (with the observation appended after it, or alone, as one decode step, when the row generates again).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reasonrl.modeling.decoder import Decoder, native_step, unsupported_reason
from reasonrl.rollout.base import SamplingParams
from reasonrl.rollout.fast import FastEngine, KVBatch, padding_bias
from reasonrl.rollout.session import TurnSample


def realign(k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, real: torch.Tensor, room: int) -> KVBatch:
    """Rows `rows` of caches [L, E, KV, T, D], whose tokens sit at the columns where `real` [len(rows), T] is True
    (in order), gathered into a new batch where each row's tokens are contiguous and end at one common column,
    with `room` free columns after it."""
    length = real.shape[1]
    counts = real.sum(-1)
    col = int(counts.max())
    target = torch.where(real, col - counts[:, None] + real.long().cumsum(-1) - 1, col)  # spare column: not real
    source = torch.arange(length, device=real.device).expand(len(rows), length)
    index = torch.zeros((len(rows), col + 1), dtype=torch.long, device=real.device).scatter_(1, target, source)
    _, _, heads, total, dim = k.shape
    # flat row of (row, head, column) in one layer [E * KV * T, D]: one index_select per layer picks the rows and
    # moves the columns at once (keys carry their RoPE rotation already, so moving columns changes nothing)
    flat = ((rows[:, None, None] * heads + torch.arange(heads, device=rows.device)[:, None]) * total).add(
        index[:, None, :col]
    )
    out = []
    for cache in (k, v):
        moved = cache.new_empty((len(cache), len(rows), heads, col + room, dim))
        for layer in range(len(cache)):
            moved[layer, :, :, :col] = (
                cache[layer].view(-1, dim).index_select(0, flat.view(-1)).view(-1, heads, col, dim)
            )
        out.append(moved)
    return KVBatch(out[0], out[1], col - counts, col, counts)


def ragged_forward(
    decoder: Decoder,
    ids: torch.Tensor,
    chunk_real: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: int,
    mask: torch.Tensor,
) -> torch.Tensor:
    """`decoder.forward` over left-padded chunks ids [B, W] (real where `chunk_real`), with the per-token work
    (projections, MLP) on the real tokens only: observations of mixed lengths pay no padding but in attention.
    Padding columns get zero keys and values (masked, but finite). Logits [B, V] of each row's last token."""
    rows, cols = chunk_real.nonzero(as_tuple=True)  # row-major: each row's tokens in order
    batch, width = ids.shape
    end = start + width
    x = decoder.base.embed_tokens(ids[rows, cols])[None]  # [1, N, E]: the packed residual stream
    cos, sin = cos[rows, cols][None, None], sin[rows, cols][None, None]
    for i, w in enumerate(decoder.layers):
        q, k, v = decoder.attention_inputs(w, x, cos, sin)  # [1, heads, N, D]
        for cache, new in ((k_cache, k), (v_cache, v)):
            chunk = cache[i, :, :, start:end].transpose(1, 2)  # [B, W, KV, D], a view of the cache
            chunk.zero_()
            chunk[rows, cols] = new[0].transpose(0, 1)
        queries = q.new_zeros((batch, width, q.shape[1], q.shape[3]))
        queries[rows, cols] = q[0].transpose(0, 1)
        o = decoder.attend(queries.transpose(1, 2), k_cache[i, :, :, :end], v_cache[i, :, :, :end], mask)
        x = decoder.attention_output_and_mlp(w, x, o.transpose(1, 2)[rows, cols].transpose(0, 1)[None])
    return decoder.logits(x[0, chunk_real.sum(-1).cumsum(0) - 1])


class FastSession:
    """Rows (episodes) with a KV cache each, kept across turns; see the module docstring. It computes with the
    weights the model had when it was opened (one rollout's sessions never see an update)."""

    @torch.inference_mode()
    def __init__(self, engine: FastEngine, prompt_ids: list[list[int]], n: int):
        prompts = [list(p) for p in prompt_ids for _ in range(n)]
        if not prompts or any(not p for p in prompts):
            raise ValueError("FastSession needs at least one row, and no empty prompt")
        if reason := unsupported_reason(engine.model, max(map(len, prompts))):
            raise ValueError(f"FastEngine cannot keep KV caches for this model ({reason}): use StatelessSession")
        self.engine, self.decoder = engine, Decoder(engine.model, decode=True)
        batch, logits = engine.prefill(self.decoder, prompts, 0)
        width = batch.col
        self.k, self.v = batch.k, batch.v
        self.real = torch.arange(width, device=logits.device) >= batch.starts[:, None]  # [E, T]: column holds a token
        self.logits = logits  # [E, V]: next-token logits, valid where `ready`
        self.ready = torch.ones(len(prompts), dtype=torch.bool)
        self.pending: list[list[int]] = [[] for _ in prompts]  # tokens of the sequence not in the cache yet
        self.sequences = prompts

    def tokens(self, row: int) -> list[int]:
        return list(self.sequences[row])

    def close(self) -> None:
        self.k = self.v = self.real = self.logits = None

    @torch.inference_mode()
    def append(self, rows: Sequence[int], ids: Sequence[Sequence[int]]) -> None:
        rows = self._check(rows)
        if len(ids) != len(rows):
            raise ValueError(f"append: {len(rows)} rows but {len(ids)} id lists")
        chunks = []
        for r, chunk in zip(rows, ids):
            self.sequences[r] += list(chunk)
            chunks.append(self.pending[r] + list(chunk))
        self._extend([r for r, c in zip(rows, chunks) if c], [c for c in chunks if c])

    @torch.inference_mode()
    def next_logits(self, rows: Sequence[int]) -> torch.Tensor:
        """[len(rows), V]: each row's logits for its next token (a forward over pending tokens where needed)."""
        rows = self._check(rows)
        waiting = [r for r in rows if not self.ready[r]]
        self._extend(waiting, [self.pending[r] for r in waiting])
        return self.logits[torch.tensor(rows, device=self.logits.device)].clone()

    @torch.inference_mode()
    def generate(self, rows: Sequence[int], params: SamplingParams) -> list[TurnSample]:
        rows = self._check(rows)
        logits = self.next_logits(rows)
        self._room(rows, params.max_new_tokens)
        index = torch.tensor(rows, device=logits.device)
        batch = realign(self.k, self.v, index, self.real[index], params.max_new_tokens)
        turn = self.engine.decode_until_stop(self.decoder, batch, logits, params, compact=False)
        # the cache holds each row's history and all its turn's tokens but the last (fed at batch.col onwards)
        columns = torch.arange(batch.k.shape[3], device=logits.device)
        end = batch.col + (turn.lengths - 1).clamp(min=0)
        self._store(index, batch.k, batch.v, (columns >= batch.starts[:, None]) & (columns < end[:, None]))
        out = []
        tokens, lengths, finished = turn.tokens.cpu(), turn.lengths.cpu(), turn.finished.cpu()
        logprobs = None if params.greedy else turn.logprobs.cpu()
        for i, r in enumerate(rows):
            ids = tokens[i, : int(lengths[i])].tolist()
            self.sequences[r] += ids
            self.pending[r] = ids[-1:]
            self.ready[r] = not ids
            lp = logprobs[i, : len(ids)].tolist() if logprobs is not None else []
            out.append(TurnSample(ids=ids, logprobs=lp, stopped=bool(finished[i])))
        return out

    @torch.inference_mode()
    def fork(self, rows: Sequence[int]) -> FastSession:
        rows = self._check(rows, unique=False)
        index = torch.tensor(rows, device=self.real.device)
        copy = FastSession.__new__(FastSession)
        copy.engine, copy.decoder = self.engine, self.decoder
        copy.k, copy.v, copy.real, copy.logits = (
            self.k[:, index],
            self.v[:, index],
            self.real[index],
            self.logits[index],
        )
        copy.ready = self.ready[index.cpu()]
        copy.pending = [list(self.pending[r]) for r in rows]
        copy.sequences = [list(self.sequences[r]) for r in rows]
        return copy

    def _check(self, rows: Sequence[int], unique: bool = True) -> list[int]:
        if self.k is None:
            raise ValueError("the session is closed")
        rows = [int(r) for r in rows]
        if any(not 0 <= r < len(self.sequences) for r in rows):
            raise ValueError(f"rows {rows} out of range for a session of {len(self.sequences)} rows")
        if unique and len(set(rows)) != len(rows):
            raise ValueError(f"rows {rows} repeat a row")
        return rows

    def _room(self, rows: list[int], new: int) -> None:
        length = max(len(self.sequences[r]) for r in rows) + new
        if reason := unsupported_reason(self.engine.model, length):
            raise ValueError(f"FastSession cannot grow rows to {length} tokens: {reason}")

    def _extend(self, rows: list[int], chunks: list[list[int]]) -> None:
        """One forward over each row's chunk (left-padded to a common width); stores the rows' next-token logits."""
        if not rows:
            return
        self._room(rows, 0)
        engine, decoder, device = self.engine, self.decoder, self.logits.device
        index, width = torch.tensor(rows, device=device), max(map(len, chunks))
        batch = realign(self.k, self.v, index, self.real[index], width)
        ids = torch.full((len(rows), width), engine.tokenizer.pad_token_id, dtype=torch.long)
        for i, chunk in enumerate(chunks):
            ids[i, width - len(chunk) :] = torch.tensor(chunk)
        ids, col = ids.to(device), batch.col
        chunk_real = ids.new_tensor([[j >= width - len(c) for j in range(width)] for c in chunks], dtype=torch.bool)
        real = torch.cat([torch.arange(col, device=device) >= batch.starts[:, None], chunk_real], 1)
        positions = (batch.positions[:, None] + chunk_real.long().cumsum(-1) - 1).clamp(min=0)
        cos_table, sin_table = decoder.rope_table(int(positions.max()) + 1, device)
        cos, sin = cos_table[positions], sin_table[positions]
        step = width == 1 and engine.native and native_step(decoder, batch.k)
        if step:  # one token per row: exactly a decode step
            logits = step(ids[:, 0], cos[:, 0], sin[:, 0], batch.k, batch.v, col, batch.starts)
        elif width == 1:
            logits = decoder.forward(ids, cos, sin, batch.k, batch.v, col, padding_bias(decoder, batch.starts, col + 1))
        else:
            # query j sees the row's tokens up to column col + j; a padding query sees itself, so no row is empty
            causal = torch.ones((width, col + width), dtype=torch.bool, device=device).tril(col)
            own = torch.zeros_like(causal)
            own[:, col:] = torch.eye(width, dtype=torch.bool, device=device)
            mask = ((causal & real[:, None, :]) | own)[:, None]
            logits = ragged_forward(decoder, ids, chunk_real, cos, sin, batch.k, batch.v, col, mask)
        engine.decode_calls += 1
        self._store(index, batch.k, batch.v, real)
        self.logits[index] = logits
        self.ready[index.cpu()] = True
        for r in rows:
            self.pending[r] = []

    def _store(self, index: torch.Tensor, k: torch.Tensor, v: torch.Tensor, real: torch.Tensor) -> None:
        """Keep rows `index`'s caches [L, len(index), KV, T', D] (`real` [len(index), T'] marks the columns holding
        tokens): a batch of every row in order becomes the store itself; others are copied into it."""
        if len(index) == len(self.sequences) and bool((index == torch.arange(len(index), device=index.device)).all()):
            self.k, self.v, self.real = k, v, real
            return
        width = k.shape[3]
        if width > self.k.shape[3]:  # grow the store, with slack so a few turns fit before the next copy
            grown = max(width, self.k.shape[3] * 2)
            self.k, self.v = (
                torch.cat([c, c.new_empty((*c.shape[:3], grown - c.shape[3], c.shape[4]))], 3) for c in (self.k, self.v)
            )
            self.real = torch.cat([self.real, self.real.new_zeros((len(self.real), grown - self.real.shape[1]))], 1)
        self.k[:, index, :, :width], self.v[:, index, :, :width] = k, v
        self.real[index] = False
        self.real[index, :width] = real
