"""Reflectors: the prompt, the strict parser, the template reflector on textgame episodes, and an OpenAI-compatible
endpoint (a loopback stub) that answers well, answers badly, errors or hangs: counted, never fatal."""

import sys
import time

import pytest
from stub_http import StubHTTP, chat_completion

from reasonrl.skills import (
    PolicyReflector,
    ReflectionError,
    ReflectorConfig,
    TemplateReflector,
    Trajectory,
    make_reflector,
    parse_reflection,
    reflection_prompt,
    skills_from,
    step_query,
)

TASK = "put a hot apple in countertop."
FRIDGE_OPEN = "You open the fridge 1. The fridge 1 is open. In it, you see a apple 1, and a egg 2."
SUCCESS = Trajectory(
    TASK,
    [
        ("You are in the middle of a room.", "go to fridge 1"),
        ("You arrive at fridge 1. The fridge 1 is closed.", "open fridge 1"),
        (FRIDGE_OPEN, "take apple 1 from fridge 1"),
        ("You pick up the apple 1 from the fridge 1.", "go to microwave 1"),
        ("You arrive at microwave 1. The microwave 1 is closed.", "heat apple 1 with microwave 1"),
        ("You heat the apple 1 using the microwave 1.", "go to countertop 1"),
        ("You arrive at countertop 1. On the countertop 1, you see nothing.", "put apple 1 in/on countertop 1"),
    ],
    True,
)
FAILED = Trajectory(
    TASK,
    [
        ("You are in the middle of a room.", "go to fridge 1"),
        ("You arrive at fridge 1. The fridge 1 is closed.", "open fridge 1"),
        (FRIDGE_OPEN, "close fridge 1"),
        ("You close the fridge 1.", "go to cabinet 1"),
    ],
    False,
)
GOOD_ANSWER = """Some analysis first.
FIRST_ERROR_STEP: 3

STEP_REFLECTION:
{"title": "Take what you came for", "principle": "When the open fridge holds the apple, take it.",
 "when_to_apply": "At an open fridge"}

TASK_REFLECTION:
{"title": "Heat then put", "principle": "Find the apple, heat it in the microwave, then put it.", "when_to_apply": ""}
"""


def test_prompt_has_the_three_sections_and_cut_observations():
    long_failed = Trajectory(TASK, [("x" * 900, "look")], False)
    prompt = reflection_prompt(long_failed, SUCCESS)
    assert "one failed trajectory and one successful trajectory" in prompt
    assert "Turn 1:\n  Observation: " + "x" * 800 + "...\n  Action: look" in prompt
    assert "Successful trajectory (reference):\nTurn 1:" in prompt and "Action: take apple 1 from fridge 1" in prompt
    for header in ("FIRST_ERROR_STEP: N", "STEP_REFLECTION:", "TASK_REFLECTION:"):
        assert header in prompt
    assert "Successful trajectory" not in reflection_prompt(FAILED)


def test_parse_accepts_a_well_formed_answer_and_markdown_headers():
    reflection = parse_reflection(GOOD_ANSWER)
    assert reflection.first_error_step == 3
    assert reflection.step_skill == {
        "title": "Take what you came for",
        "principle": "When the open fridge holds the apple, take it.",
        "when_to_apply": "At an open fridge",
    }
    assert reflection.task_skill["title"] == "Heat then put" and reflection.task_skill["when_to_apply"] == ""
    markdown = GOOD_ANSWER.replace("FIRST_ERROR_STEP: 3", "**FIRST_ERROR_STEP:** Turn 2.").replace(
        "STEP_REFLECTION:", "## STEP_REFLECTION:"
    )
    assert parse_reflection(markdown).first_error_step == 2


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (GOOD_ANSWER.replace("FIRST_ERROR_STEP: 3", ""), "missing FIRST_ERROR_STEP"),
        (GOOD_ANSWER.replace("FIRST_ERROR_STEP: 3", "FIRST_ERROR_STEP: three"), "FIRST_ERROR_STEP is not an integer"),
        (GOOD_ANSWER.split("TASK_REFLECTION:")[0], "missing TASK_REFLECTION section"),
        (GOOD_ANSWER.replace("STEP_REFLECTION:", "STEP:"), "missing STEP_REFLECTION section"),
        (GOOD_ANSWER.replace('"At an open fridge"}', '"At an open fridge",}'), "bad JSON in STEP_REFLECTION"),
        (GOOD_ANSWER.replace('"principle": "Find', '"how": "Find'), "TASK_REFLECTION lacks 'principle'"),
        (GOOD_ANSWER.replace('"title": "Take what you came for"', '"title": ""'), "STEP_REFLECTION lacks 'title'"),
        (GOOD_ANSWER.rsplit("{", 1)[0] + "none", "no JSON object in TASK_REFLECTION"),
    ],
)
def test_parse_rejects_each_malformed_kind_with_its_reason(answer, reason):
    with pytest.raises(ReflectionError) as info:
        parse_reflection(answer)
    assert info.value.reason == reason


def test_skills_from_keys_the_step_skill_at_the_first_error_turn():
    reflection = parse_reflection(GOOD_ANSWER)
    (step_pool, title, *_, step_key), (task_pool, *_, task_key) = skills_from(reflection, FAILED)
    assert (step_pool, title, task_pool, task_key) == ("step", "Take what you came for", "task", TASK)
    assert step_key == step_query(TASK, FRIDGE_OPEN) == f"{TASK}\n\nCurrent observation: {FRIDGE_OPEN}"
    reflection.first_error_step = 99  # clamped to the last turn
    assert skills_from(reflection, FAILED)[0][4] == step_query(TASK, "You close the fridge 1.")
    reflection.first_error_step = 0  # unclear: the task alone
    assert skills_from(reflection, FAILED)[0][4] == TASK


def test_template_reflector_contrasts_failed_and_successful_episodes():
    reflector = TemplateReflector()
    [reflection] = reflector.reflect([(FAILED, SUCCESS)])
    assert reflection.first_error_step == 3  # "close fridge 1" where the success took the apple
    assert reflection.step_skill["principle"] == "When looking for a apple, check the fridge first."
    assert (
        reflection.task_skill["principle"]
        == "A successful episode of this task went: go to, open, take, go to, heat, go to, put."
    )
    assert skills_from(reflection, FAILED)[0][4] == step_query(TASK, FRIDGE_OPEN)
    assert reflector.stats() == {"calls": 1, "failures": 0, "rejected": 0, "skipped": 0}


def test_template_reflector_on_put_two_uses_the_tasks_object():
    task = "put two mug in countertop."
    success = Trajectory(
        task,
        [
            ("", a)
            for a in [
                "go to cabinet 1",
                "go to shelf 1",
                "take mug 1 from shelf 1",
                "go to countertop 1",
                "put mug 1 in/on countertop 1",
                "go to shelf 1",
                "take mug 2 from shelf 1",
                "go to countertop 1",
                "put mug 2 in/on countertop 1",
            ]
        ],
        True,
    )
    failed = Trajectory(task, [("You arrive at cabinet 1.", "go to cabinet 1"), ("Nothing.", "open cabinet 1")], False)
    [reflection] = TemplateReflector().reflect([(failed, success)])
    assert reflection.first_error_step == 2
    assert reflection.step_skill["title"] == "Where to find a mug"
    assert reflection.step_skill["principle"] == "When looking for a mug, check the shelf first."
    assert reflection.task_skill["principle"].endswith("go to, take, go to, put, go to, take, go to, put.")


def test_template_reflector_without_success_uses_the_oracle_or_skips():
    plan = [a for _, a in SUCCESS.turns]
    oracle_reflector = make_reflector(ReflectorConfig(oracle=True), oracle=lambda trajectory: plan)
    [reflection] = oracle_reflector.reflect([(FAILED, None)])
    assert reflection.first_error_step == 3 and "fridge" in reflection.step_skill["principle"]
    plain = make_reflector(ReflectorConfig())
    assert plain.reflect([(FAILED, None)]) == [None]
    assert plain.skipped == 1 and plain.reasons["no success and no oracle"] == 1
    with pytest.raises(ValueError, match="oracle"):
        make_reflector(ReflectorConfig(oracle=True))

    def unsolvable(trajectory):
        raise RuntimeError("no plan")

    broken = make_reflector(ReflectorConfig(oracle=True), oracle=unsolvable)
    assert broken.reflect([(FAILED, None)]) == [None] and broken.stats()["failures"] == 1


def test_template_without_a_take_falls_back_to_the_successful_action():
    task = "turn on the desklamp."
    success = Trajectory(task, [("", "go to desk 1"), ("", "use desklamp 1")], True)
    failed = Trajectory(task, [("a", "go to desk 1"), ("b", "go to shelf 1")], False)
    [reflection] = TemplateReflector().reflect([(failed, success)])
    assert reflection.first_error_step == 2 and "use desklamp 1" in reflection.step_skill["principle"]


def test_max_per_step_caps_the_calls():
    reflector = TemplateReflector(max_per_step=2)
    out = reflector.reflect([(FAILED, SUCCESS)] * 3)
    assert [r is None for r in out] == [False, False, True]
    assert reflector.stats() == {"calls": 2, "failures": 0, "rejected": 0, "skipped": 1}


def test_policy_reflector_counts_failures_and_rejections():
    answers = iter([GOOD_ANSWER, "I cannot help with that."])

    def generate(prompt):
        assert prompt == reflection_prompt(FAILED, SUCCESS)
        return next(answers)  # the third call raises StopIteration: a failed call

    reflector = make_reflector(ReflectorConfig(name="policy"), generate=generate)
    assert isinstance(reflector, PolicyReflector)
    out = reflector.reflect([(FAILED, SUCCESS)] * 3)
    assert out[0].first_error_step == 3 and out[1:] == [None, None]
    assert reflector.stats() == {"calls": 3, "failures": 1, "rejected": 1, "skipped": 0}
    assert reflector.reasons["missing FIRST_ERROR_STEP"] == 1
    with pytest.raises(ValueError, match="generate"):
        make_reflector(ReflectorConfig(name="policy"))


@pytest.fixture
def stub(monkeypatch):
    pytest.importorskip("openai", reason="the openai extra is not installed")
    monkeypatch.setenv("REASONRL_TEST_KEY", "sk-test")
    server = StubHTTP(lambda body: chat_completion(server.content, body["model"]))  # /v1/chat/completions
    server.content, server.base_url = GOOD_ANSWER, f"{server.root}/v1"
    yield server
    server.close()


def stub_reflector(stub):
    config = ReflectorConfig(
        name="openai",
        base_url=stub.base_url,
        model="stub-model",
        api_key_env="REASONRL_TEST_KEY",
        timeout_s=0.5,
        max_retries=0,
    )
    return make_reflector(config)


def test_openai_reflector_parses_a_good_answer(stub):
    reflector = stub_reflector(stub)
    [reflection] = reflector.reflect([(FAILED, SUCCESS)])
    assert reflection == parse_reflection(GOOD_ANSWER)
    [(path, auth, body)] = stub.requests
    assert (path, auth, body["model"], body["temperature"]) == (
        "/v1/chat/completions",
        "Bearer sk-test",
        "stub-model",
        0.0,
    )
    assert body["messages"] == [{"role": "user", "content": reflection_prompt(FAILED, SUCCESS)}]
    assert reflector.stats() == {"calls": 1, "failures": 0, "rejected": 0, "skipped": 0}


def test_openai_reflector_rejects_a_malformed_answer(stub):
    stub.content = "FIRST_ERROR_STEP: 2\nSTEP_REFLECTION: {not json}\nTASK_REFLECTION: {}"
    reflector = stub_reflector(stub)
    assert reflector.reflect([(FAILED, SUCCESS)]) == [None]
    assert reflector.stats() == {"calls": 1, "failures": 0, "rejected": 1, "skipped": 0}
    assert reflector.reasons["bad JSON in STEP_REFLECTION"] == 1


def test_openai_reflector_counts_an_http_500_as_a_failure(stub):
    stub.mode = "error"
    reflector = stub_reflector(stub)
    assert reflector.reflect([(FAILED, SUCCESS)]) == [None]
    assert reflector.stats()["failures"] == 1 and len(stub.requests) == 1  # max_retries=0: no second try


def test_openai_reflector_gives_up_on_a_hang_within_the_timeout(stub):
    stub.mode = "hang"
    reflector = stub_reflector(stub)
    start = time.monotonic()
    assert reflector.reflect([(FAILED, SUCCESS)]) == [None]
    assert time.monotonic() - start < 3.0
    assert reflector.stats()["failures"] == 1 and sum("Timeout" in r for r in reflector.reasons) == 1


def test_openai_config_errors_are_clear(monkeypatch):
    monkeypatch.delenv("REASONRL_MISSING_KEY", raising=False)
    with pytest.raises(ValueError, match="model"):
        make_reflector(ReflectorConfig(name="openai"))
    with pytest.raises(ValueError, match="REASONRL_MISSING_KEY"):
        make_reflector(ReflectorConfig(name="openai", model="m", api_key_env="REASONRL_MISSING_KEY"))
    with pytest.raises(ValueError, match=r"reflector\.name"):
        ReflectorConfig(name="claude")
    monkeypatch.setitem(sys.modules, "openai", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r"reasonrl\[openai\]"):
        make_reflector(ReflectorConfig(name="openai", model="m", base_url="http://127.0.0.1:1/v1"))
