"""Search episodes on users' data: EM/F1 against hand-computed values, the action parser, corpus and QA files
(malformed lines named, list answers, dotted fields), the HTTP retriever against a loopback stub that answers,
errors or hangs (an observation and a count, never a crash), memoisation, search metrics, and end-to-end eval."""

import json
import time
from types import SimpleNamespace

import pytest
from stub_http import StubHTTP
from transformers import AutoTokenizer

from reasonrl.cli import main
from reasonrl.config import ConfigError, DataConfig, RetrieverConfig, TurnLimits, load_config
from reasonrl.data import DataError, load_jsonl, load_source, multi_turn_world
from reasonrl.envs.search import SearchEnv, SearchQA, format_docs, parse_action, search_metrics
from reasonrl.evaluation import evaluate_episodes
from reasonrl.models import ASSETS
from reasonrl.retrieval import BM25Retriever, Doc, HTTPRetriever, MemoRetriever, RetrievalError, load_corpus
from reasonrl.rewards.qa import exact_match, f1_score, normalize_answer
from reasonrl.rollout.episodes import DemoEngine

CORPUS = [
    {"id": "1", "contents": "Paris\nParis is the capital and largest city of France."},
    {"id": "2", "contents": "Berlin\nBerlin is the capital of Germany."},
    {"id": "3", "contents": "Seine\nThe Seine flows through Paris."},
]
QA = [
    {"id": "q1", "question": "What is the capital of France?", "golden_answers": ["Paris", "Paris, France"]},
    {"id": "q2", "question": "What is the capital of Germany?", "golden_answers": ["Berlin"]},
]


def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_normalisation_exact_match_and_f1_by_hand():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a pear") == "apple pear"
    assert exact_match("the Cavel.", ["Jarum", "cavel"]) == 1.0 and exact_match("Cavel City", ["cavel"]) == 0.0
    assert f1_score("Bamek Parik Jr", ["Bamek Parik"]) == pytest.approx(0.8)  # P 2/3, R 1
    assert f1_score("New York City", ["York", "new york"]) == pytest.approx(0.8)  # best of 0.5 and 0.8
    assert f1_score("x x y", ["x y y"]) == pytest.approx(2 / 3)  # overlap counts min(count) per token: 2
    assert f1_score("yes", ["yes sir"]) == 0.0 and f1_score("No.", ["no"]) == 1.0  # yes/no only match exactly
    assert f1_score("Rome", ["Paris"]) == 0.0


def test_the_first_complete_action_counts():
    assert parse_action("<think>x</think><search> Bamek Parik </search><answer>no</answer>") == (
        "search",
        "Bamek Parik",
    )
    assert parse_action("<answer>Cavel</answer> <search>y</search>") == ("answer", "Cavel")
    assert parse_action("<search>unfinished") is None and parse_action("hello") is None
    assert format_docs([Doc("1", "T\nbody", 1.0), Doc("2", "U")]) == "Doc 1 (Title: T) body\nDoc 2 (Title: U)"
    assert format_docs([]) == "No documents found."


class FakeRetriever:
    def __init__(self, fail: bool = False):
        self.fail, self.calls = fail, []

    def search(self, queries, topk):
        self.calls.append(list(queries))
        if self.fail:
            raise RetrievalError("retriever timed out after 1 s")
        return [[Doc(q, f"{q}\nabout {q}")] for q in queries]


def test_memo_retrieves_each_distinct_query_once_and_never_memoises_failures():
    inner = FakeRetriever()
    memo = MemoRetriever(inner, size=2)
    assert [d[0].id for d in memo.search(["a", "b", "a"], 1)] == ["a", "b", "a"]
    memo.search(["b", "a"], 1)
    assert inner.calls == [["a", "b"]]
    memo.search(["c"], 1)  # evicts the least recently used ("b")
    memo.search(["b"], 1)
    assert inner.calls[-1] == ["b"] and len(memo.memo) == 2
    failing = MemoRetriever(FakeRetriever(fail=True))
    for _ in range(2):
        with pytest.raises(RetrievalError):
            failing.search(["a"], 1)
    assert failing.inner.calls == [["a"], ["a"]]


def test_search_env_counts_searches_duplicates_and_failures():
    env = SearchEnv(FakeRetriever(), ["Paris"], 1, "Q?")
    assert env.reset(None) == "Q?"
    step = env.step("<search>Seine</search>")
    assert (
        not step.done and step.observation == "Doc 1 (Title: Seine) about Seine" and step.info["doc_ids"] == ["Seine"]
    )
    env.step("<search>the seine!</search>")  # the same query once normalised
    assert env.step("<answer>paris</answer>").done
    assert env.score() == {
        "reward": 1.0,
        "success": 1.0,
        "em": 1.0,
        "f1": 1.0,
        "searches": 2.0,
        "duplicates": 1.0,
        "retrieval_errors": 0.0,
        "answered": 1.0,
    }
    assert env.step("no tags here").info["no_action"] and env.step("<search> </search>").info["no_action"]
    broken = SearchEnv(FakeRetriever(fail=True), ["Paris"], 1, "Q?")
    step = broken.step("<search>x</search>")
    assert step.observation == "Search failed: retriever timed out after 1 s." and not step.done
    assert broken.score()["retrieval_errors"] == 1.0 and broken.score()["em"] == 0.0


def test_search_metrics_by_hand():
    rows = [(0, 0, 1, 0), (0, 1, 1, 0), (1, 1, 1, 0), (2, 3, 1, 1), (2, 1, 0, 0)]  # d_min, searches, em, duplicates
    episodes = [
        SimpleNamespace(score={"searches": float(s), "em": float(e), "duplicates": float(dup), "answered": 1.0})
        for _, s, e, dup in rows
    ]
    metrics = search_metrics(episodes, [d for d, *_ in rows])
    assert metrics["duplicate_rate"] == pytest.approx(1 / 6)
    assert metrics["excess"] == pytest.approx((0 + 1 + 0 + 1 - 1) / 5)
    assert metrics["over_search_rate"] == pytest.approx(2 / 4)  # of the 4 correct episodes, 2 searched > d_min
    assert metrics["under_search_rate"] == pytest.approx(1 / 5)
    assert metrics["direct_answer_rate"] == pytest.approx(1 / 2)
    assert metrics["searches/d_min_2"] == 2.0 and metrics["em/d_min_2"] == 0.5 and metrics["em/d_min_0"] == 1.0
    assert set(search_metrics(episodes, [None] * 5)) == {"duplicate_rate", "retrieval_error_rate"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{oops", "malformed JSON"),
        ('{"id": "9"}', "missing field 'contents'"),
        ('{"id": "9", "contents": ""}', "'contents' must be a non-empty string"),
        ('{"id": [1], "contents": "a"}', "'id' must be a string or an integer"),
        ("[1]", "expected a JSON object"),
    ],
)
def test_a_malformed_corpus_line_is_named(tmp_path, line, message):
    path = write_jsonl(tmp_path / "corpus.jsonl", [*CORPUS[:2], "", line])
    with pytest.raises(DataError, match=rf"corpus.jsonl, line 4: .*{message}"):
        load_corpus(path)


def test_qa_files_list_answers_and_dotted_fields(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", QA)
    q1, _ = load_jsonl(path, prompt_field="question", answer_field="golden_answers")
    assert q1.answer == "Paris" and q1.meta == {"id": "q1", "answers": ["Paris", "Paris, France"]}
    nested = {"prompt": [{"role": "user", "content": "Q: x?"}], "reward_model": {"ground_truth": {"target": ["y", 2]}}}
    (ex,) = load_jsonl(write_jsonl(tmp_path / "r1.jsonl", [nested]), answer_field="reward_model.ground_truth.target")
    assert ex.answer == "y" and ex.meta == {"answers": ["y", "2"]}
    bad = write_jsonl(tmp_path / "bad.jsonl", [QA[0], {"question": "q", "golden_answers": []}])
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: .*non-empty list"):
        load_jsonl(bad, prompt_field="question", answer_field="golden_answers")
    missing = write_jsonl(tmp_path / "missing.jsonl", [{"prompt": "q", "reward_model": {}}])
    with pytest.raises(DataError, match=r"line 1: missing field 'reward_model\.ground_truth\.target'"):
        load_jsonl(missing, answer_field="reward_model.ground_truth.target")


def test_search_r1_parquet_layout(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pytest.importorskip("datasets")
    table = pa.table(
        {
            "prompt": [[{"role": "user", "content": "Answer ... Question: capital of France?"}]],
            "reward_model": [{"style": "rule", "ground_truth": {"target": ["Paris", "City of Light"]}}],
        }
    )
    pq.write_table(table, tmp_path / "train.parquet")
    cfg = DataConfig(answer_field="reward_model.ground_truth.target")
    (ex,) = load_source(str(tmp_path / "train.parquet"), cfg, "eval")
    assert ex.meta["answers"] == ["Paris", "City of Light"]
    world = SearchQA(RetrieverConfig(corpus=write_jsonl(tmp_path / "c.jsonl", CORPUS)))
    assert world.make_env(ex).reset(ex) == "Answer ... Question: capital of France?"  # the prompt is used verbatim


@pytest.fixture
def stub():
    """A loopback Search-R1 /retrieve server (stub.url) that returns CORPUS[0] for every query."""
    hit = {"document": CORPUS[0], "score": 3.5}
    server = StubHTTP(lambda body: {"result": [[hit] * body["topk"] for _ in body["queries"]]})
    server.url = f"{server.root}/retrieve"
    yield server
    server.close()


def test_http_retriever_speaks_search_r1s_protocol(stub):
    (hits,) = HTTPRetriever(stub.url, timeout=2).search(["capital of France"], 2)
    (_, _, body), *more = stub.requests
    assert body == {"queries": ["capital of France"], "topk": 2, "return_scores": True} and not more
    assert hits == [Doc("1", CORPUS[0]["contents"], 3.5)] * 2 and hits[0].title == "Paris"


@pytest.mark.parametrize(
    ("mode", "message"),
    [("error", "HTTP 500"), ("hang", "timed out after 0.3 s"), ("garbage", "malformed JSON")],
)
def test_a_failing_retriever_is_an_observation_and_a_count(stub, mode, message):
    stub.mode = mode
    env = SearchEnv(MemoRetriever(HTTPRetriever(stub.url, timeout=0.3)), ["Paris"], 3, "Q?")
    start = time.monotonic()
    step = env.step("<search>capital of France</search>")
    assert time.monotonic() - start < 3
    assert step.observation.startswith("Search failed:") and message in step.observation and not step.done
    assert env.step("<answer>Paris</answer>").done
    assert env.score()["retrieval_errors"] == 1.0 and env.score()["em"] == 1.0


def test_an_unreachable_retriever_is_an_observation(stub):
    url = stub.url
    stub.close()
    step = SearchEnv(HTTPRetriever(url, timeout=1), ["x"], 1, "Q?").step("<search>q</search>")
    assert "retriever unreachable" in step.observation


def test_retriever_config_is_checked():
    cfg = load_config(None, ["data.retriever.corpus=c.jsonl", "data.retriever.topk=2", "data.retriever.timeout=1.5"])
    assert (cfg.data.retriever.corpus, cfg.data.retriever.topk, cfg.data.retriever.timeout) == ("c.jsonl", 2, 1.5)
    for bad, message in [
        (["data.retriever.path=c.jsonl"], "unknown config key 'data.retriever.path'"),
        (["data.retriever.corpus=c.jsonl", "data.retriever.url=http://h/retrieve"], "not both"),
        (["data.retriever.url=localhost:8000"], "not an http"),
        (["data.kb.train_split=test"], "choose rl or sft"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, bad)


def test_bm25_over_a_user_corpus_ranks_by_terms_and_skips_unrelated_documents():
    retriever = BM25Retriever([Doc(str(r["id"]), r["contents"]) for r in CORPUS])
    hits, nothing = retriever.search(["capital of Germany", "zebra"], 3)
    assert hits[0].title == "Berlin" and "Seine" not in [h.title for h in hits]
    assert nothing == []


def test_user_corpus_and_qa_file_end_to_end(tmp_path, stub):
    """Scripted episodes through the full path (examples from the file, retriever from the config, env, renderer,
    episode driver, metrics); then the CLI with the shipped student on the same files, JSON last line."""
    corpus = write_jsonl(tmp_path / "corpus.jsonl", CORPUS)
    qa = write_jsonl(tmp_path / "qa.jsonl", QA)
    tok = AutoTokenizer.from_pretrained(ASSETS / "student")
    for mode, retriever in [
        ("ok", RetrieverConfig(corpus=corpus, topk=1)),
        ("ok", RetrieverConfig(url=stub.url, topk=1)),
        ("hang", RetrieverConfig(url=stub.url, topk=1, timeout=0.2)),
    ]:
        stub.mode = mode
        cfg = DataConfig(train=qa, prompt_field="question", answer_field="golden_answers", retriever=retriever)
        examples = load_source(qa, cfg, "eval")
        world = multi_turn_world(qa, cfg)
        assert multi_turn_world(qa, cfg).retriever is world.retriever  # rollouts and eval share one index
        turns = [["<search>capital of France</search>", "<answer>Paris</answer>"], ["<answer>Bonn</answer>"]]
        limits = TurnLimits(renderer="inline", max_episode_tokens=300)
        metrics = evaluate_episodes(
            DemoEngine(tok, turns), tok, examples, world.make_env, limits, None, 512, world.episode_metrics
        )
        failed = float(mode == "hang")  # the one search timed out: an observation, and the episode still answers
        assert (metrics["em"], metrics["searches"], metrics["retrieval_error_rate"]) == (0.5, 0.5, failed)
        assert metrics["stop_reason/done"] == 1.0
    assert (
        main(
            ["eval", "--model", "student", "--data", qa, "--prompt-field", "question"]
            + ["--answer-field", "golden_answers", f"data.retriever.corpus={corpus}", "rollout.turns.renderer=inline"]
        )
        == 0
    )


def test_eval_on_world_kb_reports_em_and_searches_per_d_min(capsys):
    args = ["eval", "--model", "student", "--data", "world:kb", "--levels", "0,1,2,3", "--n", "2"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("em", "f1", "searches", "over_search_rate", "under_search_rate", "duplicate_rate", "accuracy/level_3"):
        assert key in summary
    for d in range(4):
        assert {f"em/d_min_{d}", f"f1/d_min_{d}", f"searches/d_min_{d}"} <= set(summary)
