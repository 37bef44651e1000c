from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reasonrl.config import (
    ALGO_CONFIGS,
    AlgoConfig,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RewardConfig,
    RewardSpec,
    RolloutConfig,
    TrainConfig,
    config_to_dict,
    load_config,
    main_job_config,
    register_algo_config,
    save_config,
)


@dataclass
class Schedule:
    start: float = 1.0
    end: float = 0.0


@dataclass
class ToyConfig(AlgoConfig):
    name: str = "toy"
    beta: float = 0.04
    gamma: int = 3
    pair: tuple[float, float] = (0.1, 0.2)
    schedule: Schedule = field(default_factory=lambda: Schedule(start=2.0))


@dataclass
class OtherToyConfig(AlgoConfig):
    name: str = "other_toy"
    beta: float = 0.5


@pytest.fixture
def toy():
    """Register two algorithm configs through the public decorator, and unregister them afterwards."""
    register_algo_config("toy")(ToyConfig)
    register_algo_config("other_toy")(OtherToyConfig)
    yield
    del ALGO_CONFIGS["toy"], ALGO_CONFIGS["other_toy"]


def write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def error(overrides=(), path=None) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    return str(e.value)


def test_defaults_are_the_dataclass_defaults():
    cfg = load_config()
    assert (cfg.model, cfg.data, cfg.rollout) == (ModelConfig(), DataConfig(), RolloutConfig())
    assert (cfg.rewards, cfg.optim, cfg.train) == (RewardConfig(), OptimConfig(), TrainConfig())
    assert cfg.algo.name == "grpo"
    assert type(cfg.algo) is ALGO_CONFIGS.get("grpo", AlgoConfig)


def test_configs_grpo_yaml_spells_out_the_main_job():
    # `reasonrl train` alone starts from main_job_config(); the documented YAML must not drift from it
    main = main_job_config()
    assert load_config(Path(__file__).parents[1] / "configs" / "grpo.yaml") == main
    assert (main.data.levels, main.data.eval_levels, main.data.eval_n) == ([2, 3], [1, 2, 3], 200)
    assert (main.optim.lr, main.optim.schedule, main.train.steps) == (1e-4, "cosine", 600)


def test_yaml_file_is_merged_onto_defaults(tmp_path):
    path = write(tmp_path, "model:\n  path: teacher\noptim:\n  lr: 3.0e-5\n  betas: [0.9, 0.95]\ntrain.steps: 7\n")
    cfg = load_config(path)
    assert cfg.model == ModelConfig(path="teacher")
    assert cfg.optim == OptimConfig(lr=3e-5, betas=(0.9, 0.95))
    assert cfg.train.steps == 7


def test_empty_yaml_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == load_config()


def test_yaml_section_with_every_key_commented_out_is_empty(tmp_path):
    assert load_config(write(tmp_path, "train:\n  # steps: 3\n")) == load_config()


def test_overrides_apply_after_the_file(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  steps: 7\n  seed: 3\n"), ["train.steps=9"])
    assert (cfg.train.steps, cfg.train.seed) == (9, 3)


@pytest.mark.parametrize(
    "override, get, expected",
    [
        ("train.steps=12", lambda c: c.train.steps, 12),
        ("optim.lr=0.1", lambda c: c.optim.lr, 0.1),
        ("optim.lr=1e-4", lambda c: c.optim.lr, 1e-4),  # PyYAML reads this as a string
        ("optim.lr=1", lambda c: c.optim.lr, 1.0),  # ints are fine for floats
        ("train.progress=false", lambda c: c.train.progress, False),
        ("model.dtype=bfloat16", lambda c: c.model.dtype, "bfloat16"),
        ("model.path=1.10", lambda c: c.model.path, "1.10"),  # str fields keep the text, not the number
        ("model.ref_path=teacher", lambda c: c.model.ref_path, "teacher"),
        ("data.system_prompt=null", lambda c: c.data.system_prompt, None),
        ("rollout.eval_max_completion_length=128", lambda c: c.rollout.eval_max_completion_length, 128),
        ("data.levels=[1,2,3,4]", lambda c: c.data.levels, [1, 2, 3, 4]),
        ("data.levels=4,5", lambda c: c.data.levels, [4, 5]),
        ("data.eval_levels=[6]", lambda c: c.data.eval_levels, [6]),
        ("optim.betas=[0.8,0.9]", lambda c: c.optim.betas, (0.8, 0.9)),
        ("train.report_to=[tensorboard,wandb]", lambda c: c.train.report_to, ["tensorboard", "wandb"]),
        ("train.report_to=wandb", lambda c: c.train.report_to, ["wandb"]),
        (
            "rewards.funcs=accuracy:1.0,format:0.2",
            lambda c: c.rewards.funcs,
            [RewardSpec("accuracy", 1.0), RewardSpec("format", 0.2)],
        ),
        ("rewards.funcs=[{name: format, weight: 2}]", lambda c: c.rewards.funcs, [RewardSpec("format", 2.0)]),
        ("rewards.funcs=accuracy", lambda c: c.rewards.funcs, [RewardSpec("accuracy", 1.0)]),
        ("model={path: teacher, dtype: float16}", lambda c: (c.model.path, c.model.dtype), ("teacher", "float16")),
    ],
)
def test_override_is_parsed_and_coerced_to_the_field_type(override, get, expected):
    value = get(load_config(overrides=[override]))
    assert value == expected and type(value) is type(expected)


def test_reward_list_from_yaml_mappings(tmp_path):
    path = write(tmp_path, "rewards:\n  funcs:\n    - {name: accuracy}\n    - {name: format, weight: 0.5}\n")
    cfg = load_config(path)
    assert cfg.rewards.funcs == [RewardSpec("accuracy", 1.0), RewardSpec("format", 0.5)]


def test_algo_shorthand_selects_the_registered_dataclass(toy):
    cfg = load_config(overrides=["algo=toy", "algo.beta=0.1", "algo.pair=[0.3,0.4]", "algo.schedule.end=0.5"])
    assert cfg.algo == ToyConfig(beta=0.1, pair=(0.3, 0.4), schedule=Schedule(2.0, 0.5))  # nested default kept


def test_algo_name_in_yaml_is_applied_before_its_sibling_keys(toy, tmp_path):
    cfg = load_config(write(tmp_path, "algo:\n  gamma: 5\n  name: toy\n"))
    assert cfg.algo == ToyConfig(gamma=5)


def test_switching_algo_keeps_values_valid_for_the_new_one(toy):
    cfg = load_config(overrides=["algo=toy", "algo.beta=0.3", "algo=other_toy"])
    assert cfg.algo == OtherToyConfig(beta=0.3)


def test_switching_algo_revalidates_values_set_for_the_old_one(toy):
    message = error(["algo=toy", "algo.gamma=5", "algo=other_toy"])
    assert "algo.gamma" in message and "other_toy" in message


def test_switching_algo_does_not_carry_the_old_defaults(toy):
    assert load_config(overrides=["algo=toy", "algo=other_toy"]).algo == OtherToyConfig()


def test_unknown_algorithm_suggests_registered_names(toy):
    message = error(["algo=tyo"])
    assert "'tyo'" in message and "did you mean 'toy'" in message


def test_base_config_is_the_starting_point(toy):
    base = load_config(overrides=["algo=toy", "algo.beta=0.2", "train.steps=5"])
    cfg = load_config(overrides=["train.seed=1"], base=base)
    assert (cfg.algo, cfg.train.steps, cfg.train.seed) == (base.algo, 5, 1)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optim.lrr=0.1", "unknown config key 'optim.lrr'; did you mean 'optim.lr' or 'optim.llr'?"),
        ("modle.path=x", "unknown config key 'modle'; did you mean 'model'?"),
        ("rollout.temprature=0.7", "did you mean 'rollout.temperature'?"),
        ("rewards.funcs=[{name: a, wieght: 2}]", "'rewards.funcs[0].wieght'; did you mean 'rewards.funcs[0].weight'?"),
        ("model.path.sub=x", "unknown config key 'model.path.sub'"),
    ],
)
def test_unknown_key_names_the_dotted_key_and_close_matches(override, expected):
    assert expected in error([override])


def test_unknown_algo_key_suggests_close_matches(toy):
    assert "unknown config key 'algo.betta'; did you mean 'algo.beta'?" in error(["algo=toy", "algo.betta=1"])


def test_unknown_key_without_close_match_lists_valid_keys():
    assert "model.path" in error(["model.zzzzzz=1"])


def test_unknown_key_in_yaml_file(tmp_path):
    assert "did you mean 'train.steps'" in error(path=write(tmp_path, "train:\n  stepz: 3\n"))


@pytest.mark.parametrize(
    "old, new",
    [
        ("optim.llr_every", "optim.llr.every"),
        ("optim.alphadecay_max_ratio", "optim.alphadecay.max_ratio"),
        ("rollout.vllm_sleep", "rollout.vllm.sleep"),
        ("rollout.vllm_server_url", "rollout.vllm.server_url"),
    ],
)
def test_grouped_keys_old_flat_names_are_errors_naming_the_new_key(tmp_path, old, new):
    section, key = old.split(".")
    assert error([f"{old}=1"]) == f"{old} was renamed {new}"
    assert error(path=write(tmp_path, f"{section}:\n  {key}: 1\n")) == f"{old} was renamed {new}"


def test_grouped_keys_load_from_yaml_and_overrides(tmp_path):
    cfg = load_config(
        write(tmp_path, "optim:\n  llr:\n    every: 7\nrollout:\n  vllm:\n    sleep: false\n"),
        ["optim.alphadecay.mapping=sqrt", "optim.muon.ns_steps=3"],
    )
    assert (cfg.optim.llr.every, cfg.rollout.vllm.sleep, cfg.optim.alphadecay.mapping) == (7, False, "sqrt")
    assert cfg.optim.muon.ns_steps == 3 and cfg.optim.llr.ramp == 20 and cfg.optim.name == "adamw"


@pytest.mark.parametrize(
    "override, key, typename, value",
    [
        ("optim.lr=fast", "optim.lr", "float", "'fast'"),
        ("train.steps=1.5", "train.steps", "int", "1.5"),
        ("train.steps=true", "train.steps", "int", "True"),
        ("train.progress=maybe", "train.progress", "bool", "'maybe'"),
        ("data.levels=[1,x]", "data.levels[1]", "int", "'x'"),
        ("optim.betas=[0.9]", "optim.betas", "tuple[float, float]", "[0.9]"),
        ("rollout.eval_max_completion_length=lots", "rollout.eval_max_completion_length", "int | None", "'lots'"),
        ("model.path=[a, b]", None, None, None),
    ],
)
def test_wrong_type_names_key_expected_type_and_value(override, key, typename, value):
    message = error([override])
    if key is not None:
        assert f"'{key}'" in message and typename in message and value in message


def test_section_must_be_a_mapping():
    assert "'model'" in error(["model=3"])


@pytest.mark.parametrize("override", ["train.steps", "=3", ""])
def test_malformed_override(override):
    assert "malformed override" in error([override])


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "a: [1, 2\n", "{1: 2}\n", "train: {5: 1}\n"])
def test_bad_yaml_files_are_config_errors(tmp_path, text):
    error(path=write(tmp_path, text))


def test_missing_file_is_a_config_error(tmp_path):
    assert "nope.yaml" in error(path=tmp_path / "nope.yaml")


def test_save_and_load_round_trip(tmp_path, toy):
    cfg = load_config(
        overrides=[
            "algo=toy",
            "algo.pair=[0.5,0.25]",
            "algo.schedule.start=2",
            "model.path=1.10",
            "model.ref_path=teacher",
            "data.system_prompt=yes",
            "rewards.funcs=accuracy:1,format:0.2",
            "train.report_to=[wandb]",
            "optim.eps=1e-12",
        ]
    )
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # the temp file was renamed away


def test_config_to_dict_is_plain_yaml_data():
    d = config_to_dict(load_config())
    assert d["optim"]["betas"] == [0.9, 0.999]
    assert d["rewards"]["funcs"] == [{"name": "accuracy", "weight": 1.0}]
    assert yaml.safe_load(yaml.safe_dump(d)) == d


KEYS = [f"{section}.{key}" for section, values in config_to_dict(Config()).items() for key in values]
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def only_config_errors(call) -> None:
    with contextlib.suppress(ConfigError):
        call()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(st.text(max_size=30), max_size=3))
def test_arbitrary_override_text_parses_or_raises_config_error(overrides):
    only_config_errors(lambda: load_config(overrides=overrides))


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(KEYS + ["algo", "model", "algo.name"]), value=VALUES)
def test_any_value_for_a_real_key_parses_or_raises_config_error(key, value):
    only_config_errors(lambda: load_config(overrides=[f"{key}={yaml.safe_dump(value, default_flow_style=True)}"]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80) | st.one_of(VALUES, st.dictionaries(st.sampled_from(KEYS), VALUES)).map(yaml.dump))
def test_arbitrary_yaml_document_parses_or_raises_config_error(tmp_path, text):
    only_config_errors(lambda: load_config(write(tmp_path, text)))


def test_kl_estimator_is_checked_by_the_grpo_config():
    assert load_config(overrides=["algo=dapo", "algo.kl_estimator=k3_is"]).algo.kl_estimator == "k3_is"
    assert load_config(overrides=["algo=grpo"]).algo.kl_estimator == "k3"
    assert "algo.kl_estimator" in error(["algo=grpo", "algo.kl_estimator=k2"])
