"""How a run spreads over processes, as one strategy object the trainer talks to: `Single`, `DataParallel`, `FSDP`.

Each strategy offers the few operations the training loop needs: prepare the model, a context for generation,
scoring and evaluation (`gathered`), gradient reduction after the micro-batches, the clipped grad norm, full state
for checkpoints (saved and restored in the one-process layout), an exported copy for the final model, the replica
check before a checkpoint, and the small collectives that keep ranks in step. The mechanics live in distributed.py
(replicated data parallel) and fsdp.py (FSDP2); docs/scaling.md explains the design. `from_config` chooses once.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from reasonrl import distributed, fsdp


class Single:
    """One process: every operation is the plain local one."""

    rank, world = 0, 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare(self, model: torch.nn.Module) -> None:
        """Make the model ready for training under this strategy (before the optimizer is built)."""

    def shard_stream(self, stream):
        """The prompt stream this rank draws from."""
        return stream

    def gathered(self, model: torch.nn.Module) -> AbstractContextManager:
        """A block in which forwards need no collectives (generation, scoring, evaluation)."""
        return nullcontext()

    @property
    def joins_eval(self) -> bool:
        """Whether this rank runs the evaluation (a replica other than rank 0 need not)."""
        return self.is_main

    def backward_passes(self, count: int) -> int:
        """How many backward passes this rank runs in an update where it has `count` micro-batches."""
        return count

    def reduce_gradients(
        self, model: torch.nn.Module, params: list[torch.nn.Parameter], run: int, planned: int
    ) -> None:
        """After `run` of the `planned` backward passes: make the gradients the whole step's."""

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        """Clip the gradients to `max_norm`; their total norm before clipping."""
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def replicas_agree(self, model: torch.nn.Module) -> bool:
        return True

    def full_state(self, model: torch.nn.Module, optimizer) -> dict[str, dict]:
        """Model and optimizer states for save_checkpoint, when they are not the objects' own state dicts."""
        return {}

    def restorer(self, model: torch.nn.Module, optimizer) -> Callable[[dict, dict | None], None] | None:
        """What load_checkpoint calls to restore model and optimizer (None: their own load_state_dict)."""
        return None

    def exported(self, model: torch.nn.Module) -> torch.nn.Module | None:
        """The model to write as RUN_DIR/final on rank 0 (None on other ranks)."""
        return model if self.is_main else None

    def all_gather(self, value: Any) -> list[Any]:
        """`value` (JSON) from every rank, in rank order."""
        return [value]

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (JSON) on every rank."""
        return self.all_gather(value)[0]

    def any_rank(self, flag: bool) -> bool:
        return any(self.all_gather(bool(flag)))

    def sum_across_ranks(self, values: dict[str, float]) -> dict[str, float]:
        return distributed.combine_sums(self.all_gather(values))

    def shutdown(self) -> None:
        """Leave the process group (if any)."""


class DataParallel(Single):
    """Replicas under torchrun: each rank trains on its share of a step's prompts; gradients are summed over ranks."""

    def __init__(self):
        self.rank, self.world = distributed.rank(), distributed.world_size()

    def prepare(self, model: torch.nn.Module) -> None:
        distributed.broadcast_parameters(model)  # identical replicas from step 0 (e.g. LoRA's random A)

    def shard_stream(self, stream):
        return distributed.ShardedStream(stream, self.rank, self.world)

    def reduce_gradients(
        self, model: torch.nn.Module, params: list[torch.nn.Parameter], run: int, planned: int
    ) -> None:
        distributed.all_reduce_gradients(params)

    def replicas_agree(self, model: torch.nn.Module) -> bool:
        return distributed.replicas_agree(model)

    def all_gather(self, value: Any) -> list[Any]:
        return distributed.all_gather_json(value)

    def shutdown(self) -> None:
        distributed.shutdown()


class FSDP(DataParallel):
    """FSDP2 (`train.fsdp=true`): weights, gradients and optimizer states sharded over the ranks."""

    def prepare(self, model: torch.nn.Module) -> None:
        super().prepare(model)
        fsdp.shard(model)  # before the optimizer, which must hold the sharded parameters

    def gathered(self, model: torch.nn.Module) -> AbstractContextManager:
        return fsdp.gathered(model)

    @property
    def joins_eval(self) -> bool:
        return True  # every rank must join the weight gathering; rank 0 reports

    def backward_passes(self, count: int) -> int:
        # Each backward is a collective: count every rank's passes before the first of them.
        return max(self.all_gather(count))

    def reduce_gradients(
        self, model: torch.nn.Module, params: list[torch.nn.Parameter], run: int, planned: int
    ) -> None:
        fsdp.pad_backward_passes(model, planned - run)  # FSDP summed the gradients in each backward

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        return fsdp.grad_norm(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def replicas_agree(self, model: torch.nn.Module) -> bool:
        return True  # one sharded copy: nothing to compare

    def full_state(self, model: torch.nn.Module, optimizer) -> dict[str, dict]:
        model_state, optimizer_state = fsdp.full_state(model, optimizer)  # rank 0 writes a one-process run's files
        return {"model_state": model_state, "optimizer_state": optimizer_state}

    def restorer(self, model: torch.nn.Module, optimizer) -> Callable[[dict, dict | None], None]:
        return lambda weights, optim: fsdp.load_full_state(model, optimizer, weights, optim)

    def exported(self, model: torch.nn.Module) -> torch.nn.Module | None:
        return fsdp.unsharded_copy(model)  # collective; a plain copy on rank 0


def from_config(cfg) -> Single:
    """The strategy of this run: FSDP with train.fsdp, replicas under torchrun (WORLD_SIZE > 1), else one process.
    Joins the process group torchrun describes; FSDP's config checks run before any weights load."""
    distributed.init_from_env()
    if cfg.train.fsdp:
        fsdp.check_config(cfg)
        return FSDP()
    return DataParallel() if distributed.world_size() > 1 else Single()
