"""Micro-batching: every row exactly once, and length-sorted micro-batches carry less padding."""

import torch

from reasonrl.algos.base import TrainBatch, length_buckets
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


def test_rows_of_one_bucket_are_all_there():
    batch = batch_of([5, 1, 3], True)
    (micro,) = list(batch.micro_batches(8))
    assert sorted(micro.tensors["row"].tolist()) == [0, 1, 2]


def test_length_buckets_split_only_when_padding_costs_more_than_a_pass():
    assert length_buckets([5, 5, 5, 100], 4, overhead=10) == [(0, 3), (3, 4)]  # 3*5 + 100 + 20 < 4*100 + 10
    assert length_buckets([5, 5, 5, 100], 4, overhead=1000) == [(0, 4)]
    assert all(e - s <= 3 for s, e in length_buckets([1] * 10, 3, overhead=0))  # the row cap is a memory bound


def bucket_cost(cuts: list[tuple[int, int]], lengths: list[int], overhead: int) -> int:
    """Padded tokens plus a per-pass overhead: what length_buckets minimises (lengths sorted ascending)."""
    return sum((e - s) * lengths[e - 1] + overhead for s, e in cuts)


def test_length_buckets_are_optimal_against_brute_force():
    import itertools
    import random

    rng = random.Random(0)
    for _ in range(200):
        n, max_rows, overhead = rng.randint(1, 7), rng.randint(1, 4), rng.choice([0, 3, 20])
        lengths = sorted(rng.randint(1, 40) for _ in range(n))
        best = float("inf")
        for k in range(n):
            for inner in itertools.combinations(range(1, n), k):
                cuts = list(itertools.pairwise([0, *inner, n]))
                if all(e - s <= max_rows for s, e in cuts):
                    best = min(best, bucket_cost(cuts, lengths, overhead))
        got = length_buckets(lengths, max_rows, overhead)
        assert got[0][0] == 0 and got[-1][1] == n and all(a[1] == b[0] for a, b in itertools.pairwise(got))
        assert all(e - s <= max_rows for s, e in got)
        assert bucket_cost(got, lengths, overhead) == best
