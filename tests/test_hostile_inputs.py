"""Hostile inputs and safe loading: answer extraction on arbitrary text, bad data files, no unpickling.

docs/reliability.md lists each guarantee with the test that proves it (rows 9-11 are here).
"""

from __future__ import annotations

import ast
import math
import random
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reasonrl
from reasonrl.cli import main
from reasonrl.rewards import accuracy, extract_boxed, math_verifier

# --- hostile answers --------------------------------------------------------------------------------------------

NO_BRACES = st.text(st.characters(blacklist_characters="{}\\", blacklist_categories=("Cs",)), max_size=12)
ESCAPES = st.sampled_from(["\\{", "\\}", "\\frac", "\\\\", "\\left(", "\\right)", "\\sqrt"])
BALANCED = st.recursive(
    NO_BRACES,
    lambda inner: st.lists(inner | inner.map(lambda s: "{" + s + "}") | ESCAPES, max_size=4).map("".join),
    max_leaves=25,
).filter(lambda s: "boxed" not in s)


@settings(max_examples=300, deadline=2000)
@given(text=st.text(max_size=400) | st.text(st.sampled_from("\\boxed{}x1 "), max_size=400))
def test_extract_boxed_on_arbitrary_text_returns_a_substring_or_none(text):
    out = extract_boxed(text)
    assert out is None or (out in text and "\\boxed" in text)


@settings(max_examples=300, deadline=2000)
@given(prefix=st.text(max_size=60), content=BALANCED, suffix=st.text(max_size=60).filter(lambda s: "boxed" not in s))
def test_extract_boxed_finds_the_content_of_the_last_box(prefix, content, suffix):
    assert extract_boxed(prefix + "\\boxed{" + content + "}" + suffix) == content.strip()


HOSTILE = {
    "many unclosed boxes": "\\boxed{" * 100_000,
    "unclosed deep nesting": "\\boxed{" + "{" * 300_000,
    "deep nesting": "\\boxed{" + "{" * 100_000 + "7" + "}" * 100_000 + "}",
    "backslashes": "\\boxed{" + "\\" * 300_001 + "}",
    "whitespace after boxed": ("\\boxed" + " " * 1000) * 300,
    "unicode": "\\boxed{\u0663\u0664}\u202e\ufeff\U0001f600\\boxed{\u00bd}",
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_extract_boxed_on_huge_hostile_text_is_fast(text):
    started = time.perf_counter()
    out = extract_boxed(text)
    assert time.perf_counter() - started < 5.0
    assert out is None or out in text


@pytest.fixture(scope="module")
def short_pool():
    pool = math_verifier(timeout=2.0)
    yield pool
    pool.close()


def assert_scored(values, golds, completions, started, pool):
    """0.0 or 1.0 per row, or NaN only with a failed/timeout status; never slower than the per-item timeouts."""
    for v, s in zip(values, values.status):
        assert (s == "ok" and v in (0.0, 1.0)) or (s in ("failed", "timeout") and math.isnan(v)), (v, s)
    assert time.perf_counter() - started < pool.timeout * len(completions) + 30


BIG = st.integers(min_value=-(10**60), max_value=10**60).map(str) | st.integers(min_value=0, max_value=10**4).map(
    lambda k: "9" * (k + 1)
)  # beyond Python's 4300-digit int conversion limit
ANSWER_TEXT = (
    st.text(max_size=60)
    | BALANCED
    | st.sampled_from(
        ["1e999999", "10^{10^{10^{10}}}", "\\frac{1}{0}", "0/0", "\\infty", "x^" * 50 + "2", "(" * 200, "1,000,000.5"]
    )
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gold=BIG, noise=st.text(max_size=40), boxed=ANSWER_TEXT)
def test_accuracy_on_hostile_completions_scores_or_marks_the_row_never_raises(short_pool, gold, noise, boxed):
    completions = [noise, f"{noise}\\boxed{{{boxed}}}", f"{noise} \\boxed{{{gold}}}", "\\boxed{" + boxed]
    golds = [gold] * len(completions)
    started = time.perf_counter()
    values = accuracy([""] * len(completions), completions, golds, verifier=short_pool)
    assert_scored(values, golds, completions, started, short_pool)
    assert values[2] == 1.0  # the gold answer itself, however large, is right
    assert values[0] == 0.0 or "\\boxed" in noise  # no box, no credit


@pytest.mark.parametrize("pred", ["10^{10^{10^{10}}}", "\\frac{" * 2000 + "1" + "}{2}" * 2000, "9" * 200_000])
def test_accuracy_on_pathological_answers_ends_within_the_timeout(short_pool, pred):
    started = time.perf_counter()
    values = accuracy([""], ["\\boxed{" + pred + "}"], ["3"], verifier=short_pool)
    assert_scored(values, ["3"], [pred], started, short_pool)
    assert values[0] != 1.0


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\n  \n\t\n",
        bytes(random.Random(0).randrange(256) for _ in range(4096)),
        b"\x00" * 100,
        b"[1, 2, 3]\n",
        b"PK\x03\x04\x14\x00\x00\x00",
    ],
    ids=["empty", "blank", "random-bytes", "nul-bytes", "json-array", "zip-header"],
)
def test_eval_on_an_empty_or_garbage_data_file_is_one_clear_error(nano_dir, tmp_path, capsys, content):
    data = tmp_path / "data.jsonl"
    data.write_bytes(content)
    assert main(["eval", "--model", str(nano_dir), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("reasonrl eval: error: ") and str(data) in err[0] and "Traceback" not in err[0]


# --- safe loading -----------------------------------------------------------------------------------------------
# A manifest hash mismatch and a shape mismatch are refused by load_checkpoint: see test_checkpoint.py,
# test_corrupted_file_falls_back_to_previous_checkpoint and
# test_shape_mismatch_names_the_tensor_and_leaves_model_untouched.


def unsafe_loads(source: str) -> list[str]:
    """Calls that can unpickle arbitrary objects: torch.load without weights_only=True, pickle/dill/joblib loads,
    numpy loads with allow_pickle=True, yaml.load / yaml.unsafe_load."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        kwargs = {k.arg: k.value for k in node.keywords}
        literal = {k: v.value for k, v in kwargs.items() if isinstance(v, ast.Constant)}
        if name.endswith("torch.load") and literal.get("weights_only") is not True:
            problems.append(f"line {node.lineno}: {name} without weights_only=True")
        elif re.fullmatch(r"(c?pickle|dill|joblib|marshal|shelve)\.(load|loads|Unpickler|open)", name):
            problems.append(f"line {node.lineno}: {name}")
        elif re.fullmatch(r"(np|numpy)\.load", name) and literal.get("allow_pickle", False) is not False:
            problems.append(f"line {node.lineno}: {name} with allow_pickle")
        elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
            problems.append(f"line {node.lineno}: {name}")
    return problems


@pytest.mark.parametrize(
    "snippet",
    [
        "torch.load(f)",
        "torch.load(f, weights_only=False)",
        "torch.load(f, map_location='cpu')",
        "pickle.loads(b)",
        "np.load(f, allow_pickle=True)",
        "yaml.load(text)",
    ],
)
def test_the_unsafe_load_check_catches_each_unsafe_call(snippet):
    assert unsafe_loads(snippet)


def test_no_library_code_unpickles_untrusted_files():
    package = Path(reasonrl.__file__).parent
    sources = sorted(package.rglob("*.py"))
    assert len(sources) > 20
    found = {str(p.relative_to(package)): unsafe_loads(p.read_text()) for p in sources}
    assert {k: v for k, v in found.items() if v} == {}
    assert any("weights_only=True" in p.read_text() for p in sources)  # the optimizer/scheduler loads
