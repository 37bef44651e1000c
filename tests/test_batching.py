"""Micro-batching: every row exactly once, and length-sorted micro-batches carry less padding."""

import torch

from reasonrl.algos.base import TrainBatch
from reasonrl.algos.common import build_sequences


def batch_of(lengths: list[int], sort: bool) -> TrainBatch:
    prompts = [[5, 6, 7]] * len(lengths)
    completions = [[10 + i] * n for i, n in enumerate(lengths)]
    tensors = build_sequences(prompts, completions, pad_id=0)
    tensors["row"] = torch.arange(len(lengths))
    return TrainBatch(tensors, sort_by_length=sort)


def test_sorted_micro_batches_cover_every_row_once_with_less_padding():
    lengths = [30, 2, 29, 3, 31, 1, 28, 4]
    plain, sorted_ = batch_of(lengths, False), batch_of(lengths, True)
    cells = lambda b: sum(m.tensors["input_ids"].numel() for m in b.micro_batches(4))  # noqa: E731
    rows = sorted(int(r) for m in sorted_.micro_batches(4) for r in m.tensors["row"])
    assert rows == list(range(len(lengths)))
    assert cells(sorted_) == 4 * (3 + 4) + 4 * (3 + 31)  # short rows together, long rows together
    assert cells(plain) == 4 * (3 + 30) + 4 * (3 + 31)
    for micro in sorted_.micro_batches(4):  # rows keep their own tokens after the reorder and trim
        for row, ids in zip(micro.tensors["row"], micro.tensors["input_ids"]):
            assert int((ids == 10 + int(row)).sum()) == lengths[int(row)]


def test_one_micro_batch_keeps_the_original_order():
    batch = batch_of([5, 1, 3], True)
    (micro,) = list(batch.micro_batches(8))
    assert micro.tensors["row"].tolist() == [0, 1, 2]
