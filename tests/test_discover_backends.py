"""Backends: the scripted mutator is deterministic and writes whitelisted code; replay reproduces a recording;
an OpenAI-compatible endpoint that errors, hangs or answers garbage costs counted failed calls, never the run."""

import time

import pytest
from stub_http import StubHTTP, chat_completion

from reasonrl.discover.backends import BackendConfig, CallBudget, ReplayBackend, make_backend
from reasonrl.discover.problems import embedded_problem
from reasonrl.discover.prompts import Exemplar, critic_prompt, executor_prompt, generator_prompt, parse_actions
from reasonrl.discover.scripted import ScriptedBackend, render, terms_of
from reasonrl.discover.whitelist import check_program, extract_body

PROBLEM = embedded_problem("duffing", n_train=50, n_test=20)


def _prompt():
    return generator_prompt(PROBLEM, [Exemplar(PROBLEM.initial_body(), 0.3), Exemplar("return params[0] * x", 0.1)])


def test_render_and_terms_round_trip():
    terms = ["x", "np.sin(C * v)", "1", "v / (C + v)"]
    body = render(terms)
    assert (
        body
        == "return params[0] * x + params[1] * np.sin(params[2] * v) + params[3] + params[4] * (v / (params[5] + v))"
    )
    assert terms_of(body) == terms


def test_scripted_backend_is_deterministic_and_writes_whitelisted_programs():
    a, b = ScriptedBackend(1, PROBLEM.inputs), ScriptedBackend(1, PROBLEM.inputs)
    outs = [a.generate(_prompt(), "generator", i) for i in range(20)]
    assert outs == [b.generate(_prompt(), "generator", i) for i in range(20)]
    assert len(set(outs)) > 5
    for out in outs:
        check_program(PROBLEM.skeleton.program(extract_body(out, PROBLEM.skeleton)), PROBLEM.skeleton)


def test_scripted_critic_removes_a_negligible_term_and_executor_applies_it():
    program = PROBLEM.skeleton.program("return params[0] * x + params[1] * v**3 + params[2] * v")
    critique = ScriptedBackend(0, PROBLEM.inputs).generate(
        critic_prompt(PROBLEM, program, [1.0, 1e-9, 0.5], 0.01, None), "critic", 3
    )
    actions = parse_actions(critique)
    assert actions[0] == {"type": "REMOVE", "target": "v ** 3", "rationale": "negligible coefficient"}
    rewrites = [
        extract_body(
            ScriptedBackend(0, PROBLEM.inputs).generate(executor_prompt(PROBLEM, program, actions[:1]), "executor", i),
            PROBLEM.skeleton,
        )
        for i in range(6)
    ]
    assert "return params[0] * x + params[1] * v" in rewrites  # the action alone, when no random edit follows


def test_parse_actions_drops_malformed_critiques():
    assert parse_actions("not json") == [] and parse_actions(None) == []
    assert parse_actions('{"actions": [{"type": "REMOVE"}, {"type": "NOPE", "target": "x"}]}') == []
    assert parse_actions('ok: {"actions": [{"type": "ADD_OR_REPLACE", "proposal": "x**2"}]}') == [
        {"type": "ADD_OR_REPLACE", "proposal": "x**2"}
    ]


def test_budget_counts_every_role_and_replay_reproduces_a_recording(tmp_path):
    record = tmp_path / "calls.jsonl"
    budget = CallBudget(ScriptedBackend(0, PROBLEM.inputs), 3, record=record)
    answers = [budget(_prompt(), "generator"), budget("critic?", "critic"), budget(_prompt(), "generator")]
    assert budget.left == 0 and budget.by_role == {"generator": 2, "critic": 1, "executor": 0}
    with pytest.raises(RuntimeError, match="budget spent"):
        budget(_prompt(), "generator")
    replay = CallBudget(ReplayBackend(record), 4)
    assert [replay(_prompt(), "generator"), replay("critic?", "critic"), replay(_prompt(), "generator")] == answers
    assert replay("x", "executor") is None and replay.failed == 1  # no recording of call 3: a counted failure
    (tmp_path / "bad.jsonl").write_text('{"call": 0}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        ReplayBackend(tmp_path / "bad.jsonl")


@pytest.fixture
def stub():
    server = StubHTTP(lambda body: chat_completion("return params[0] * x"))
    server.url = f"{server.root}/v1"
    yield server
    server.close()


def test_openai_backend_survives_error_hang_and_garbage(stub):
    backend = make_backend(f"openai:{stub.url}", BackendConfig(model="stub", timeout_s=0.5, max_retries=0), 0, ("x",))
    budget = CallBudget(backend, 10)
    stub.mode = "ok"
    assert budget("p", "generator") == "return params[0] * x"
    for mode in ("error", "hang", "garbage"):
        stub.mode = mode
        start = time.monotonic()
        assert budget("p", "generator") is None
        assert time.monotonic() - start < 1.8
    assert budget.failed == 3 and budget.calls == 4
    with pytest.raises(ValueError, match=r"backend_options\.model"):
        make_backend(f"openai:{stub.url}", BackendConfig(), 0, ("x",))
    with pytest.raises(ValueError, match="unknown backend"):
        make_backend("gpt", BackendConfig(), 0, ("x",))


def test_hf_backend_generates_text_with_the_shipped_student():
    backend = make_backend("hf:student", BackendConfig(max_tokens=8), 0, ("x",))
    a, b = backend.generate("What is 2+3?", "generator", 0), backend.generate("What is 2+3?", "generator", 0)
    assert isinstance(a, str) and a == b  # seeded per call
