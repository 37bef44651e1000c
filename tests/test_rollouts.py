"""Rollouts' multi-turn fields survive select / concat / save / load, and the loss mask reaches the completion mask."""

import json

import pytest
import torch

from reasonrl.algos.common import build_sequences
from reasonrl.rollout.base import Rollouts


def two_turn_rollouts() -> Rollouts:
    return Rollouts(
        prompt_ids=[[1, 2], [1, 2], [3]],
        completion_ids=[[5, 6, 7, 8], [5, 9], [4]],
        logprobs=[[-0.1, 0.0, -0.3, -0.4], [-0.5, -0.6], [-0.7]],
        finished=[True, False, True],
        group=[0, 0, 1],
        loss_mask=[[1, 0, 1, 1], [1, 1], [1]],
        token_rewards=[[0.0, 0.0, 0.0, 1.0], [0.0, 0.5], [0.0]],
        episode=[0, 0, 1],
    )


def test_select_and_concat_keep_the_multi_turn_fields_and_renumber_episodes():
    r = two_turn_rollouts()
    picked = r.select([2, 0])
    assert picked.loss_mask == [[1], [1, 0, 1, 1]] and picked.token_rewards[1] == [0.0, 0.0, 0.0, 1.0]
    joined = Rollouts.concat([r, r])
    assert joined.episode == [0, 0, 1, 2, 2, 3]  # the second part's episodes never merge with the first's
    assert joined.group == [0, 0, 1, 2, 2, 3]
    assert joined.loss_mask == r.loss_mask * 2


def test_save_load_round_trip_and_files_written_before_the_fields_existed(tmp_path):
    r = two_turn_rollouts()
    r.save(tmp_path / "calls.jsonl")
    back = Rollouts.load(tmp_path / "calls.jsonl")
    assert (back.loss_mask, back.token_rewards, back.episode) == (r.loss_mask, r.token_rewards, r.episode)
    old = {"prompt_ids": [1], "completion_ids": [2, 3], "logprobs": [-0.1, -0.2], "finished": True, "group": 0}
    (tmp_path / "old.jsonl").write_text(json.dumps(old) + "\n")
    legacy = Rollouts.load(tmp_path / "old.jsonl")
    assert legacy.completion_ids == [[2, 3]] and legacy.loss_mask == [] and legacy.episode == []


def test_environment_tokens_are_attended_to_but_not_in_the_completion_mask():
    r = two_turn_rollouts()
    t = build_sequences(r.prompt_ids, r.completion_ids, pad_id=0, loss_mask=r.loss_mask)
    assert t["completion_mask"].tolist() == [[1, 0, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]
    assert t["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 1]  # the env token (column 3) is still seen
    plain = build_sequences(r.prompt_ids, r.completion_ids, pad_id=0)
    assert torch.equal(plain["input_ids"], t["input_ids"])
    with pytest.raises(ValueError, match="row 1: loss_mask has 1 entries for 2 completion tokens"):
        build_sequences(r.prompt_ids, r.completion_ids, pad_id=0, loss_mask=[[1, 0, 1, 1], [1], [1]])
