"""SFT's loss against an independent computation: the mean NLL over the step's demonstration tokens, any micro-batch."""

import pytest
import torch

from reasonrl.trainer import Trainer


def test_sft_loss_is_the_token_mean_nll_of_the_steps_completions_in_any_micro_batches(quick_config, tmp_path):
    trainer = Trainer(quick_config("algo=sft", "train.prompts_per_step=3"), run_dir=tmp_path / "sft")
    batch = trainer.algo.gather(trainer.ctx)
    t = batch.tensors
    nll, tokens = 0.0, 0
    with torch.no_grad():  # each row alone and unpadded: prompt, then its n completion tokens
        for ids, attention, completion in zip(t["input_ids"], t["attention_mask"], t["completion_mask"]):
            seq, n = ids[attention.bool()], int(completion.sum())
            logp = trainer.model(input_ids=seq[None]).logits[0].float().log_softmax(-1)
            nll -= float(logp[-n - 1 : -1].gather(-1, seq[-n:, None]).sum())
            tokens += n
    assert len({int(c.sum()) for c in t["completion_mask"]}) > 1  # ragged rows: a row mean would differ
    for size in (len(batch), 1):
        total = sum(float(trainer.algo.loss(trainer.ctx, micro)[0].detach()) for micro in batch.micro_batches(size))
        assert total == pytest.approx(nll / tokens, rel=1e-4)


def test_turn_weights_must_map_one_word_to_a_non_negative_weight(quick_config):
    from reasonrl.config_types import ConfigError

    for bad in ("{take: -1.0}", "{'go to': 2.0}", "{take: .nan}"):
        with pytest.raises(ConfigError, match="turn_weights maps one word"):
            quick_config("algo=sft", f"algo.turn_weights={bad}")
