"""Data parallel over the processes torchrun starts: each rank trains on its share of a step's prompts.

The design keeps one process's math exact at any number of ranks:
- The prompt stream advances globally; each rank keeps every world_size-th prompt of a draw (`ShardedStream`), so a
  prompt's whole group of samples lives on one rank and the union over ranks is the one-process batch.
- Losses are divided by batch-global totals (algos/base.py). `combine_totals` makes those totals the whole step's,
  so each rank's loss is its share of the one-process loss and the summed gradients (`all_reduce_gradients`) are
  the one-process gradient. Every rank then takes the same clipped optimizer step and the replicas stay identical
  (`replicas_agree` checks this at every checkpoint).
- Every statistic over a step's rows (group advantages, batch-scaled rewards, REINFORCE++, AutoThink's batch balance)
  is taken over every rank's rows (`gather_rows`, `across_ranks`), so it is the one-process statistic.
Rank 0 alone writes: metrics, checkpoints, the final model, evaluations.

Launch with `torchrun --nproc_per_node N -m reasonrl.cli train ...`: gloo on CPU, NCCL on GPU. (`accelerate launch
--cpu --num_processes 2` silently runs one process on CPU; torchrun does not.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist


def init_from_env() -> None:
    """Join the process group torchrun describes (WORLD_SIZE > 1); a single process needs none."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_gather_json(value: Any) -> list[Any]:
    """`value` from every rank, in rank order. JSON over a byte tensor: small records, and nothing is unpickled."""
    if world_size() == 1:
        return [value]
    data = torch.tensor(list(json.dumps(value).encode()), dtype=torch.uint8, device=_device())
    sizes = [torch.zeros(1, dtype=torch.long, device=_device()) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(data)], device=_device()))
    longest = int(max(sizes))
    parts = [torch.empty(longest, dtype=torch.uint8, device=_device()) for _ in sizes]
    dist.all_gather(parts, torch.nn.functional.pad(data, (0, longest - len(data))))
    return [json.loads(bytes(p[: int(n)].tolist()).decode()) for p, n in zip(parts, sizes)]


class ShardedStream:
    """A prompt stream whose draws are split across ranks: `next(n)` advances the stream by n prompts, as one process
    would, and returns this rank's every world_size-th of them. The position is global, so a checkpoint resumes on
    any number of ranks."""

    def __init__(self, stream, rank: int, world: int):
        self.stream, self.rank, self.world = stream, rank, world

    def next(self, n: int) -> list:
        return self.stream.next(n)[self.rank :: self.world]

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)

    def __getattr__(self, name: str):  # anything else (size, examples ...) is the global stream's
        return getattr(self.stream, name)


def sum_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """Per-key sums over ranks (metrics already divided by global totals add up to the step's value)."""
    return combine_sums(all_gather_json(values)) if world_size() > 1 else values


# Reductions of records already gathered with `all_gather_json`, one per rank, so that a caller with several
# things to agree on makes one collective (trainer._gather).


def combine_totals(parts: list[dict[str, float]]) -> dict[str, float]:
    """The whole step's loss normalisers: counts are summed over ranks; `max_*` entries (a limit such as Dr.GRPO's
    max_completion_length) are the largest. A rank with an empty batch contributes nothing."""
    out: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = max(out.get(k, v), v) if k.startswith("max_") else out.get(k, 0.0) + v
    return out


def combine_sums(parts: list[dict[str, float]]) -> dict[str, float]:
    """Per-key sums."""
    out: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = out.get(k, 0.0) + v
    return out


def combine_means(parts: list[dict[str, float]]) -> dict[str, float]:
    """Per-key means over the ranks that report the key (per-rank averages such as the mean reward)."""
    seen: dict[str, list[float]] = {}
    for part in parts:
        for k, v in part.items():
            seen.setdefault(k, []).append(v)
    return {k: sum(v) / len(v) for k, v in seen.items()}


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Rank 0's weights on every rank, as DDP does at construction: anything initialised randomly after loading
    (LoRA's A matrices, a new head) would otherwise start different on each rank, and the replicas would never agree."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks in one flat buffer per dtype. Sum, not mean: each rank's loss is already its share
    of the global loss. A parameter a rank never touched counts as a zero gradient."""
    if world_size() == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for dtype in {p.grad.dtype for p in params}:
        grads = [p.grad for p in params if p.grad.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        for g, reduced in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(reduced.view_as(g))


def gather_rows(groups: torch.Tensor, *columns: torch.Tensor | list) -> tuple[torch.Tensor, list, slice]:
    """Every rank's rows of the step, in rank order, as one process would hold them: the group ids (each rank's kept
    apart from the others'), each per-row column (a tensor [N] or a list with one entry per row, e.g. token lists),
    and the slice of them that is this rank's rows. Statistics over these rows are the one-process statistics."""
    if world_size() == 1:
        return groups, list(columns), slice(0, len(groups))
    plain = [c.tolist() if isinstance(c, torch.Tensor) else list(c) for c in columns]
    parts = all_gather_json({"groups": groups.tolist(), "columns": plain})
    all_groups, merged, mine, offset = [], [[] for _ in columns], slice(0, 0), 0
    for r, part in enumerate(parts):
        if r == rank():
            mine = slice(len(all_groups), len(all_groups) + len(groups))
        all_groups += [g + offset for g in part["groups"]]  # a rank's group ids must not merge with another's
        offset += max(part["groups"], default=-1) + 1
        for out, values in zip(merged, part["columns"]):
            out += values
    rebuilt = [torch.tensor(m, dtype=c.dtype) if isinstance(c, torch.Tensor) else m for m, c in zip(merged, columns)]
    return torch.tensor(all_groups, dtype=groups.dtype), rebuilt, mine


def across_ranks(fn: Callable[..., Any], groups: torch.Tensor, *columns: torch.Tensor | list) -> Any:
    """`fn(groups, *columns)` over the whole step's rows (`gather_rows`), returning this rank's rows of its result:
    group and batch statistics (a batch's reward std, REINFORCE++'s whitening, a batch share) are the one-process
    ones at any number of ranks."""
    all_groups, all_columns, mine = gather_rows(groups, *columns)
    return fn(all_groups, *all_columns)[mine]


def replicas_agree(model: torch.nn.Module) -> bool:
    """Whether every rank holds bit-identical weights (compared through a float64 fingerprint per tensor)."""
    if world_size() == 1:
        return True
    with torch.no_grad():
        fingerprint = [float(p.double().sum()) + float((p.double() ** 2).sum()) for p in model.parameters()]
    parts = all_gather_json(fingerprint)
    return all(part == parts[0] for part in parts)
