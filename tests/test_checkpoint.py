import json
import logging
import random
import re

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from reasonrl.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_pretrained_atomic,
)


def tiny_llama(hidden_size: int = 16) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=hidden_size,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def make_run(seed: int = 0):
    torch.manual_seed(seed)
    model = tiny_llama()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def train_steps(model, opt, sched, n: int) -> None:
    for _ in range(n):
        ids = torch.randint(0, 32, (2, 6))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def save(run_dir, step, model, opt, sched, keep=3):
    return save_checkpoint(run_dir, step, model, opt, sched, {"data_position": step * 8}, keep=keep)


def flip_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(data)


def test_round_trip_restores_weights_optimizer_scheduler_and_rng(tmp_path):
    model, opt, sched = make_run()
    train_steps(model, opt, sched, 3)
    path = save(tmp_path, 3, model, opt, sched)
    draws_after_save = (torch.rand(4), random.random(), np.random.rand())

    model2, opt2, sched2 = make_run(seed=1)
    state = load_checkpoint(path, model2, opt2, sched2)

    assert state == {"data_position": 24, "step": 3}
    assert torch.equal(torch.rand(4), draws_after_save[0])
    assert (random.random(), np.random.rand()) == draws_after_save[1:]
    for k, v in model.state_dict().items():
        assert torch.equal(model2.state_dict()[k], v), k
    assert model2.lm_head.weight.data_ptr() == model2.model.embed_tokens.weight.data_ptr()  # still tied
    assert sched2.state_dict() == sched.state_dict()
    for s1, s2 in zip(opt.state.values(), opt2.state.values(), strict=True):
        for key in s1:
            assert torch.equal(s1[key], s2[key]), key
    # Training goes on identically from the restored state.
    for m, o, s in ((model, opt, sched), (model2, opt2, sched2)):
        torch.manual_seed(7)
        train_steps(m, o, s, 1)
    assert sched2.get_last_lr() == sched.get_last_lr()
    for k, v in model.state_dict().items():
        assert torch.equal(model2.state_dict()[k], v), k


def test_torch_draw_after_restore_equals_draw_after_save(tmp_path):
    model, opt, sched = make_run()
    path = save(tmp_path, 1, model, opt, sched)
    after_save = torch.rand(8)
    torch.rand(100)
    load_checkpoint(path, model, opt, sched)
    assert torch.equal(torch.rand(8), after_save)


def test_keep_prunes_older_checkpoints_and_never_the_new_one(tmp_path):
    model, opt, sched = make_run()
    for step in (1, 2, 3, 4):
        save(tmp_path, step, model, opt, sched, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_000003", "step_000004"]
    save(tmp_path, 5, model, opt, sched, keep=1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000005"]
    assert latest_checkpoint(tmp_path).name == "step_000005"


def test_saving_an_earlier_step_removes_checkpoints_of_the_abandoned_run(tmp_path):
    model, opt, sched = make_run()
    for step in (1, 2, 3):
        save(tmp_path, step, model, opt, sched, keep=5)
    save(tmp_path, 2, model, opt, sched, keep=5)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000001", "step_000002"]
    assert latest_checkpoint(tmp_path).name == "step_000002"


@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_corrupted_file_falls_back_to_previous_checkpoint(tmp_path, caplog, victim):
    model, opt, sched = make_run()
    save(tmp_path, 1, model, opt, sched)
    newest = save(tmp_path, 2, model, opt, sched)
    flip_byte(newest / victim)
    with caplog.at_level(logging.WARNING, logger="reasonrl"):
        assert latest_checkpoint(tmp_path).name == "step_000001"
    assert "step_000002" in caplog.text and victim in caplog.text
    with pytest.raises(CheckpointError, match=victim):
        load_checkpoint(newest, model, opt, sched)


def test_checkpoint_without_manifest_is_skipped(tmp_path):
    model, opt, sched = make_run()
    save(tmp_path, 1, model, opt, sched)
    newest = save(tmp_path, 2, model, opt, sched)
    (newest / "manifest.json").unlink()
    assert latest_checkpoint(tmp_path).name == "step_000001"
    with pytest.raises(CheckpointError, match="manifest"):
        load_checkpoint(newest, model, opt, sched)


def test_leftover_tmp_dir_is_ignored_and_cleaned_by_next_save(tmp_path):
    model, opt, sched = make_run()
    save(tmp_path, 1, model, opt, sched)
    leftover = tmp_path / "checkpoints" / "step_000002.tmp-99999"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half-written")
    assert latest_checkpoint(tmp_path).name == "step_000001"
    save(tmp_path, 2, model, opt, sched)
    assert not leftover.exists()
    assert latest_checkpoint(tmp_path).name == "step_000002"


def test_no_checkpoint_gives_none(tmp_path):
    assert latest_checkpoint(tmp_path) is None


def test_shape_mismatch_names_the_tensor_and_leaves_model_untouched(tmp_path):
    model, opt, sched = make_run()
    path = save(tmp_path, 1, model, opt, sched)
    other = tiny_llama(hidden_size=8)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"model\.embed_tokens\.weight.*\[32, 16\].*\[32, 8\]"):
        load_checkpoint(path, other, None, None)
    for k, v in other.state_dict().items():
        assert torch.equal(v, before[k])


def test_missing_tensor_is_named(tmp_path):
    model, opt, sched = make_run()
    path = save(tmp_path, 1, model, opt, sched)
    untied = tiny_llama()
    untied.config.tie_word_embeddings = False
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    with pytest.raises(CheckpointError, match=re.escape("lm_head.weight")):
        load_checkpoint(path, untied, None, None)


def test_trainer_state_and_manifest_are_plain_json(tmp_path):
    model, opt, sched = make_run()
    path = save(tmp_path, 7, model, opt, sched)
    state = json.loads((path / "trainer_state.json").read_text())
    assert state["step"] == 7 and set(state["rng"]) >= {"python", "numpy", "torch"}
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"}


def test_save_pretrained_atomic_replaces_directory_in_one_rename(tmp_path):
    model = tiny_llama()
    out = tmp_path / "final"
    (tmp_path / "final.tmp-12345").mkdir()  # leftover of a crashed save
    save_pretrained_atomic(model, None, out)
    save_pretrained_atomic(model, None, out)  # overwriting an existing final/ works
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    reloaded = LlamaForCausalLM.from_pretrained(out)
    for k, v in model.state_dict().items():
        assert torch.equal(v, reloaded.state_dict()[k]), k
