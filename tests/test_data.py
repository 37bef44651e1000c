from __future__ import annotations

import contextlib
import json
import sys
import types
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reasonrl.config import DataConfig
from reasonrl.data import (
    DataError,
    Example,
    PromptStream,
    load_jsonl,
    load_parquet,
    load_source,
)
from reasonrl.sources.reasoning_gym import load_reasoning_gym, reasoning_gym_score


def write_jsonl(tmp_path, *lines: str | dict, name: str = "data.jsonl"):
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def data_error(*args, **kwargs) -> str:
    with pytest.raises(DataError) as e:
        load_jsonl(*args, **kwargs)
    return str(e.value)


def test_rows_become_examples_with_extra_fields_in_meta(tmp_path):
    rows = [{"prompt": "2+2?", "answer": "4", "level": 2, "id": 7}, {"prompt": "3+3?", "answer": 6}]
    path = write_jsonl(tmp_path, *rows)
    assert load_jsonl(path) == [
        Example(prompt="2+2?", answer="4", level=2, meta={"id": 7}),
        Example(prompt="3+3?", answer="6"),
    ]


def test_blank_lines_are_skipped_but_still_counted(tmp_path):
    path = write_jsonl(tmp_path, "", {"prompt": "a", "answer": "1"}, "   ", "{oops")
    assert "line 4" in data_error(path)
    path = write_jsonl(tmp_path, "", {"prompt": "a", "answer": "1"}, "  ", {"prompt": "b", "answer": "2"})
    assert [e.prompt for e in load_jsonl(path)] == ["a", "b"]


def test_gsm8k_answer_splits_into_solution_and_number(tmp_path):
    row = {"question": "Natalia sold clips...", "answer": "She sold 48/2 = 24 in May.\n48+24 = 72\n#### 1,072"}
    (example,) = load_jsonl(write_jsonl(tmp_path, row), prompt_field="question")
    assert example.answer == "1072"
    assert example.solution == "She sold 48/2 = 24 in May.\n48+24 = 72"


def test_explicit_solution_field_wins_over_gsm8k_reasoning(tmp_path):
    row = {"prompt": "p", "answer": "steps #### 5", "solution": "<think>mine</think>"}
    (example,) = load_jsonl(write_jsonl(tmp_path, row))
    assert (example.answer, example.solution) == ("5", "<think>mine</think>")


def test_chat_message_prompt(tmp_path):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    (example,) = load_jsonl(write_jsonl(tmp_path, {"prompt": messages, "answer": 2}))
    assert example.prompt == messages and example.answer == "2"


def test_field_mapping(tmp_path):
    row = {"question": "q", "final": "9", "worked": "w"}
    path = write_jsonl(tmp_path, row)
    (example,) = load_jsonl(path, prompt_field="question", answer_field="final", solution_field="worked")
    assert (example.prompt, example.answer, example.solution, example.meta) == ("q", "9", "w", {})


def test_answer_is_optional_when_not_required(tmp_path):
    (example,) = load_jsonl(write_jsonl(tmp_path, {"prompt": "write a poem"}), require_answer=False)
    assert example.answer == ""


@pytest.mark.parametrize(
    "lines, expected",
    [
        ([{"prompt": "a", "answer": "1"}, "{not json"], ["line 2", "malformed JSON"]),
        ([{"prompt": "a", "answer": "1"}, "", "[1, 2]"], ["line 3", "expected a JSON object", "list"]),
        (['"just a string"'], ["line 1", "expected a JSON object"]),
        (
            [{"prompt": "a", "answer": "1"}, {"question": "b", "answer": "2"}],
            ["line 2", "missing field 'prompt'", "['answer', 'question']"],
        ),
        ([{"prompt": "a"}], ["line 1", "missing field 'answer'", "['prompt']"]),
        ([{"prompt": "   ", "answer": "1"}], ["line 1", "empty prompt"]),
        ([{"prompt": [], "answer": "1"}], ["line 1", "empty prompt"]),
        ([{"prompt": 42, "answer": "1"}], ["line 1", "must be a string or a list of chat messages", "int"]),
        ([{"prompt": [{"role": "user"}], "answer": "1"}], ["line 1", "chat prompt messages"]),
        ([{"prompt": "a", "answer": {"x": 1}}], ["line 1", "'answer' must be a string, a number or a list"]),
        ([{"prompt": "a", "answer": True}], ["line 1", "'answer' must be a string, a number or a list"]),
        ([{"prompt": "a", "answer": "1", "level": "hard"}], ["line 1", "'level' must be an integer"]),
        ([{"prompt": "a", "answer": "1", "solution": 3}], ["line 1", "'solution' must be a string"]),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, lines, expected):
    path = write_jsonl(tmp_path, *lines)
    message = data_error(path)
    assert str(path) in message
    for part in expected:
        assert part in message


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"prompt": "a", "answer": "1"}\n{"prompt": "\xff", "answer": "1"}\n')
    assert "line 2" in data_error(path)


def test_missing_file(tmp_path):
    assert "not found" in data_error(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("text", ["", "\n\n   \n"])
def test_file_without_examples(tmp_path, text):
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    assert "no examples" in data_error(path)


def test_parquet_without_datasets_tells_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail even if installed
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    for call in (lambda: load_parquet(path), lambda: load_source("hf:some/dataset", DataConfig(), "train")):
        with pytest.raises(DataError, match="pip install datasets"):
            call()


class FakeDatasets(types.ModuleType):
    """Stands in for the optional `datasets` package: serves `rows` for any parquet file or dataset name."""

    class DatasetDict(dict):
        pass

    def __init__(self, rows):
        super().__init__("datasets")
        self.rows, self.calls = rows, []

    def load_dataset(self, *args, **kwargs):
        self.calls.append(("load_dataset", args, kwargs))
        return self.rows

    def load_from_disk(self, path):
        self.calls.append(("load_from_disk", path))
        return self.DatasetDict(test=self.rows)


def test_parquet_rows_are_mapped_like_jsonl_rows(tmp_path, monkeypatch):
    fake = FakeDatasets([{"question": "q", "answer": "a #### 3"}, {"question": "", "answer": "1"}])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match=r"row 2.*empty prompt"):
        load_source(str(path), DataConfig(prompt_field="question"), "train")
    fake.rows.pop()
    assert load_source(str(path), DataConfig(prompt_field="question"), "train") == [
        Example(prompt="q", answer="3", solution="a")
    ]


def test_hf_spec_picks_the_split_of_a_saved_dataset(tmp_path, monkeypatch):
    fake = FakeDatasets([{"prompt": "p", "answer": "1"}])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    (tmp_path / "dataset_dict.json").write_text("{}")
    assert load_source(f"hf:{tmp_path}", DataConfig(), "eval") == [Example(prompt="p", answer="1")]
    with pytest.raises(DataError, match="no split 'train'"):
        load_source(f"hf:{tmp_path}:train", DataConfig(), "train")
    load_source("hf:org/name:validation", DataConfig(), "train")
    assert fake.calls[-1] == ("load_dataset", ("org/name",), {"split": "validation"})


def test_load_source_reads_jsonl_with_config_field_names(tmp_path):
    path = write_jsonl(tmp_path, *({"question": f"q{i}", "answer": str(i)} for i in range(5)))
    cfg = DataConfig(prompt_field="question", eval_n=3)
    assert [e.prompt for e in load_source(str(path), cfg, "train")] == [f"q{i}" for i in range(5)]
    assert len(load_source(str(path), cfg, "eval")) == 3  # eval files are capped at eval_n


@pytest.mark.parametrize("spec", ["data.csv", "nowhere:thing", "world:nope", "reasoning_gym:basic_arithmetc"])
def test_unknown_source_is_a_data_error(spec):
    with pytest.raises(DataError):
        load_source(spec, DataConfig(), "train", 2)


def test_generated_train_sources_need_a_count():
    with pytest.raises(DataError, match="pass n"):
        load_source("world:arith", DataConfig(), "train")


def test_world_eval_and_train_never_share_a_problem():
    cfg = DataConfig(levels=[1, 2, 3, 4, 5, 6], eval_n=30)
    eval_set = load_source("world:arith", cfg, "eval")
    train = load_source("world:arith", cfg, "train", 3000)
    assert {e.level for e in eval_set} == set(range(1, 7)) and {e.level for e in train} == set(range(1, 7))
    assert not {e.meta["expression"] for e in eval_set} & {e.meta["expression"] for e in train}


def test_world_eval_uses_eval_levels():
    cfg = DataConfig(levels=[1, 2], eval_levels=[5], eval_n=4)
    assert {e.level for e in load_source("world:arith", cfg, "eval")} == {5}


def resumed_equals_uninterrupted(spec: str, cfg: DataConfig) -> None:
    uninterrupted = PromptStream(spec, cfg)
    expected = uninterrupted.next(12)[7:]
    first = PromptStream(spec, cfg)
    first.next(3), first.next(4)
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints store it as JSON
    resumed = PromptStream(spec, cfg)
    resumed.load_state_dict(state)
    assert resumed.position == 7
    assert resumed.next(5) == expected


def test_world_stream_resumes_exactly():
    resumed_equals_uninterrupted("world:arith", DataConfig(levels=[2, 3, 4]))


def test_file_stream_resumes_exactly_across_epochs(tmp_path):
    path = write_jsonl(tmp_path, *({"prompt": f"q{i}", "answer": str(i)} for i in range(5)))
    resumed_equals_uninterrupted(str(path), DataConfig(seed=3))


def test_file_stream_shows_every_example_once_per_epoch_in_fresh_orders(tmp_path):
    path = write_jsonl(tmp_path, *({"prompt": f"q{i}", "answer": str(i)} for i in range(20)))
    stream = PromptStream(str(path), DataConfig())
    epochs = [[e.prompt for e in stream.next(20)] for _ in range(3)]
    assert all(Counter(epoch) == Counter(f"q{i}" for i in range(20)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 3


def test_stream_refuses_state_from_another_source():
    stream = PromptStream("world:arith", DataConfig(seed=1))
    with pytest.raises(DataError):
        stream.load_state_dict({"spec": "world:arith", "seed": 2, "position": 4})


def test_reasoning_gym_examples_score_with_the_generators_own_scorer():
    examples = load_reasoning_gym("basic_arithmetic", size=4, seed=5)
    assert len(examples) == 4
    for ex in examples:
        assert ex.prompt.endswith("Put the final answer in \\boxed{}.")
        assert ex.meta["rg_name"] == "basic_arithmetic" and ex.meta["rg_entry"]["answer"] == ex.answer
        json.dumps(ex.meta)
        assert reasoning_gym_score(ex.answer, ex.meta) == 1.0
        assert reasoning_gym_score(ex.answer + "7", ex.meta) < 1.0
        assert reasoning_gym_score("not a number", ex.meta) == 0.0


def test_reasoning_gym_train_and_eval_are_disjoint():
    cfg = DataConfig(eval_n=50)
    train = load_source("reasoning_gym:basic_arithmetic", cfg, "train", 200)
    eval_set = load_source("reasoning_gym:basic_arithmetic", cfg, "eval")
    assert len(eval_set) == 50
    assert not {e.prompt for e in train} & {e.prompt for e in eval_set}


def test_reasoning_gym_stream_resumes_exactly():
    resumed_equals_uninterrupted("reasoning_gym:basic_arithmetic", DataConfig())


def test_unknown_reasoning_gym_generator_suggests_close_names():
    with pytest.raises(DataError, match="basic_arithmetic"):
        load_reasoning_gym("basic_arithmetc", 2, 0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_arbitrary_bytes_load_or_raise_data_error(tmp_path, data):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(data)
    with contextlib.suppress(DataError):
        load_jsonl(path)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["prompt", "answer", "role", "content", "level", "x"]), inner, max_size=4)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(JSON, min_size=1, max_size=4))
def test_arbitrary_json_rows_load_or_raise_data_error(tmp_path, rows):
    path = write_jsonl(tmp_path, *(json.dumps(row) for row in rows), name="fuzz.jsonl")
    try:
        examples = load_jsonl(path)
    except DataError:
        return
    assert all(isinstance(e.answer, str) and e.prompt for e in examples)
