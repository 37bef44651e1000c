"""The command line: a run directory with everything in it, JSON summaries, clear errors for bad input."""

import json

import pytest
import yaml
from transformers import AutoModelForCausalLM

from reasonrl.cli import main

FAST = [
    "rollout.num_generations=2",
    "rollout.max_completion_length=8",
    "train.prompts_per_step=2",
    "train.steps=2",
    "data.eval_n=2",
    "--quiet",
]


def last_json(out: str) -> dict:
    return json.loads([line for line in out.strip().splitlines() if line.startswith("{")][-1])


def test_train_writes_a_complete_run_directory(nano_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", f"model.path={nano_dir}", "--output-dir", str(run), *FAST]) == 0
    out = capsys.readouterr().out
    summary = last_json(out)
    assert summary["run_dir"] == str(run) and 0.0 <= summary["accuracy_after"] <= 1.0
    # the last line is for a person: before -> after on the eval set's size (data.eval_n=2 per level, 3 levels)
    before, after = f"{summary['accuracy_before']:.1%}", f"{summary['accuracy_after']:.1%}"
    assert out.strip().splitlines()[-1].startswith(f"eval accuracy on 6 held-out problems: {before} -> {after} (")
    saved = yaml.safe_load((run / "config.yaml").read_text())  # no --config: the main job's settings, then overrides
    assert (saved["data"]["levels"], saved["optim"]["schedule"], saved["train"]["steps"]) == ([2, 3], "cosine", 2)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[:3] == [0, 1, 2]
    assert list((run / "checkpoints").glob("step_000002"))
    reloaded = AutoModelForCausalLM.from_pretrained(run / "final")
    assert reloaded.config.model_type == "llama"
    assert main(["plot", str(run)]) == 0
    pngs = [line for line in capsys.readouterr().out.splitlines() if line.endswith(".png")]
    assert pngs and all((run / "plots").exists() for _ in pngs)


def test_unknown_config_key_is_one_clear_error_with_a_suggestion(tmp_path, capsys):
    assert main(["train", "algo.betta=0.1", "--output-dir", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert "algo.betta" in err and "algo.beta" in err and "Traceback" not in err
    assert not (tmp_path / "never").exists()


def test_missing_model_directory_is_one_clear_error(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "missing")]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_eval_on_a_jsonl_file_prints_a_json_summary(nano_dir, tmp_path, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text(
        "\n".join(json.dumps({"question": f"Compute {i}+1.", "answer": f"... #### {i + 1}"}) for i in range(3))
    )
    assert (
        main(
            [
                "eval",
                "--model",
                str(nano_dir),
                "--data",
                str(data),
                "--prompt-field",
                "question",
                "--max-new-tokens",
                "8",
            ]
        )
        == 0
    )
    summary = last_json(capsys.readouterr().out)
    assert summary["n"] == 3 and summary["accuracy"] == 0.0  # a random model answers nothing right
    assert summary["mean_completion_tokens"] <= 8


def test_sft_on_world_demonstrations_lowers_the_loss(nano_dir, tmp_path, capsys):
    run = tmp_path / "sft"
    args = [
        "sft",
        f"model.path={nano_dir}",
        "--output-dir",
        str(run),
        "train.steps=30",
        "train.prompts_per_step=8",
        "optim.lr=3e-3",
        "data.eval_n=1",
        "rollout.max_completion_length=4",
        "--quiet",
    ]
    assert main(args) == 0
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_eval_takes_config_files_and_dotted_overrides_with_its_flags_as_aliases(nano_dir, tmp_path, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"Compute {i}+1.", "answer": f"{i + 1}"}) for i in range(4)))
    flags = [
        "eval",
        "--model",
        str(nano_dir),
        "--data",
        str(data),
        "--prompt-field",
        "question",
        "--max-new-tokens",
        "6",
        "--n",
        "3",
    ]
    assert main(flags) == 0
    by_flags = last_json(capsys.readouterr().out)
    config = tmp_path / "eval.yaml"
    config.write_text(f"model:\n  path: {nano_dir}\ndata:\n  eval: {data}\n  eval_n: 3\n")
    assert (
        main(["eval", "--config", str(config), "data.prompt_field=question", "rollout.eval_max_completion_length=6"])
        == 0
    )
    assert last_json(capsys.readouterr().out) == by_flags
    assert by_flags["n"] == 3 and by_flags["mean_completion_tokens"] <= 6
    # Overrides come after the flags' aliases, so a key=value wins over its flag.
    assert main([*flags, "rollout.eval_max_completion_length=2"]) == 0
    assert last_json(capsys.readouterr().out)["mean_completion_tokens"] <= 2


def test_eval_unknown_key_is_the_same_error_with_a_suggestion_as_train(nano_dir, capsys):
    assert main(["eval", "--model", str(nano_dir), "data.prompt_feild=question"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reasonrl eval: error: unknown config key 'data.prompt_feild'")
    assert "did you mean 'data.prompt_field'" in err[0]
    assert main(["eval", "--n", "0", "--levels", "1,x"]) == 2  # an alias value is checked like the key's own
    assert "data.eval_levels" in capsys.readouterr().err


def test_commands_without_a_config_refuse_overrides(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["plot", str(tmp_path), "train.steps=2"])
    assert "unrecognized arguments: train.steps=2" in capsys.readouterr().err
