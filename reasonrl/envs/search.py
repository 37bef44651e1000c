"""Search episodes, Search-R1's protocol: `<search>query</search>` -> `<information>documents</information>`, and
`<answer>text</answer>` ends the episode, scored by exact match and F1 against the gold answers (rewards/qa.py).

`SearchEnv` is one episode over any retriever (retrieval/); `SearchQA` plays the questions of a QA file over a
user's corpus or retrieval server (`data.retriever`); the kb world (worlds/kb.py) uses `SearchEnv` over its own
corpus. A retriever that fails is an observation ("Search failed: ...") counted in `retrieval_errors`, never a crash.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from reasonrl.data import DataError, Example
from reasonrl.envs.base import StepResult
from reasonrl.retrieval.base import Doc, RetrievalError, Retriever
from reasonrl.rewards.qa import exact_match, f1_score, normalize_answer

ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)
NO_ACTION = (
    "My previous action is invalid. If I want to search, I should put the query between <search> and </search>. "
    "If I want to give the final answer, I should put the answer between <answer> and </answer>. Let me try again."
)


def parse_action(text: str) -> tuple[str, str] | None:
    """("search" | "answer", content stripped) of the first complete tag pair in a policy turn, else None (what
    follows the first action, e.g. a hallucinated <information> block, is ignored as Search-R1 ignores it)."""
    match = ACTION.search(text)
    return (match.group(1), match.group(2).strip()) if match else None


def format_docs(docs: Sequence[Doc], titles: bool = True) -> str:
    """Search-R1's observation body: one `Doc i (Title: title) text` line per document; without `titles` the text
    alone (documents whose text starts with their title, as the kb world's do: shorter for tiny models)."""
    if not docs:
        return "No documents found."
    if not titles:
        return "\n".join(d.text or d.title for d in docs)
    return "\n".join(f"Doc {i} (Title: {d.title}) {d.text}".rstrip() for i, d in enumerate(docs, 1))


class SearchEnv:
    """One question. Each search retrieves `topk` documents; the first answer ends the episode. Score keys: reward
    (= em), success, em, f1, searches, duplicates (queries repeated within the episode, normalised), retrieval_errors,
    answered."""

    def __init__(self, retriever: Retriever, golds: Sequence[str], topk: int, prompt: str, titles: bool = True):
        self.retriever, self.golds, self.topk, self.prompt = retriever, list(golds), topk, prompt
        self.titles = titles  # format_docs' option
        self.queries: list[str] = []
        self.duplicates = self.errors = 0
        self.answer: str | None = None

    def reset(self, example: Example) -> str:
        self.queries, self.duplicates, self.errors, self.answer = [], 0, 0, None
        return self.prompt

    def step(self, action: str) -> StepResult:
        parsed = parse_action(action)
        if parsed is None or (parsed[0] == "search" and not parsed[1]):
            return StepResult(NO_ACTION, info={"no_action": True})
        kind, content = parsed
        if kind == "answer":
            self.answer = content
            return StepResult("", 0.0, True, {"answer": content})
        self.duplicates += normalize_answer(content) in {normalize_answer(q) for q in self.queries}
        self.queries.append(content)
        try:
            (docs,) = self.retriever.search([content], self.topk)
        except RetrievalError as e:
            self.errors += 1
            return StepResult(f"Search failed: {e}.", info={"query": content, "retrieval_error": str(e)})
        return StepResult(format_docs(docs, self.titles), info={"query": content, "doc_ids": [d.id for d in docs]})

    def score(self) -> dict[str, float]:
        em = exact_match(self.answer, self.golds) if self.answer is not None else 0.0
        f1 = f1_score(self.answer, self.golds) if self.answer is not None else 0.0
        return {
            "reward": em,
            "success": em,
            "em": em,
            "f1": f1,
            "searches": float(len(self.queries)),
            "duplicates": float(self.duplicates),
            "retrieval_errors": float(self.errors),
            "answered": float(self.answer is not None),
        }


def question_prompt(example: Example) -> str:
    """The first observation of a QA file's question: the question string, or the content of a prompt that is one
    user message (Search-R1's parquet `prompt`, which holds its instruction). Instructions for models that were
    not trained on the protocol go in data.system_prompt (docs/kb.md gives Search-R1's)."""
    if isinstance(example.prompt, str):
        return example.prompt
    users = [m for m in example.prompt if m["role"] != "system"]
    if len(users) != 1 or users[0]["role"] != "user":
        raise DataError(
            "search episodes take a question string or one user message as the prompt (the system prompt is "
            f"data.system_prompt), got roles {[m['role'] for m in example.prompt]}"
        )
    return users[0]["content"]


class SearchQA:
    """Search episodes over a QA file's questions and a user's retriever (`data.retriever`: a corpus JSONL searched
    with BM25, or a /retrieve server). Gold answers: the example's meta["answers"] (a list field) or its answer."""

    name = "search"
    default_topk = 3  # Search-R1's

    def __init__(self, retriever_cfg):
        from reasonrl.retrieval import make_retriever

        self.retriever = make_retriever(retriever_cfg)
        self.topk = retriever_cfg.topk or self.default_topk

    def make_env(self, example: Example) -> SearchEnv:
        golds = example.meta.get("answers") or [example.answer]
        return SearchEnv(self.retriever, golds, self.topk, question_prompt(example))

    def episode_metrics(self, examples: Sequence[Example], episodes: Sequence[Any]) -> dict[str, float]:
        return search_metrics(episodes, [ex.meta.get("d_min") for ex in examples])


def search_metrics(episodes: Sequence[Any], d_mins: Sequence[int | None]) -> dict[str, float]:
    """Search behaviour over episodes (episode i plays a question of minimal search depth d_mins[i], None when
    unknown): `duplicate_rate` (repeated queries / searches) and `retrieval_error_rate` (failed / searches); with
    d_min known, `excess` (mean searches - d_min), `over_search_rate` (correct episodes that searched more than
    d_min, among correct ones), `under_search_rate` (episodes that searched less than d_min), `direct_answer_rate`
    (d_min=0 episodes that answered without a search) and per d_min K: `em/d_min_K`, `f1/d_min_K`,
    `searches/d_min_K`."""
    searches = sum(ep.score.get("searches", 0.0) for ep in episodes)
    out = {
        "duplicate_rate": sum(ep.score.get("duplicates", 0.0) for ep in episodes) / searches if searches else 0.0,
        "retrieval_error_rate": sum(ep.score.get("retrieval_errors", 0.0) for ep in episodes) / searches
        if searches
        else 0.0,
    }
    known = [(ep, d) for ep, d in zip(episodes, d_mins, strict=True) if d is not None]
    if not known:
        return out
    n = [ep.score.get("searches", 0.0) for ep, _ in known]
    correct = [(s, d) for s, (ep, d) in zip(n, known) if ep.score.get("em", 0.0) == 1.0]
    direct = [s == 0 and ep.score.get("answered", 0.0) == 1.0 for s, (ep, d) in zip(n, known) if d == 0]
    out |= {
        "excess": sum(s - d for s, (_, d) in zip(n, known)) / len(known),
        "over_search_rate": sum(s > d for s, d in correct) / len(correct) if correct else 0.0,
        "under_search_rate": sum(s < d for s, (_, d) in zip(n, known)) / len(known),
    }
    if direct:
        out["direct_answer_rate"] = sum(direct) / len(direct)
    by_depth: dict[int, list] = defaultdict(list)
    for ep, d in known:
        by_depth[d].append(ep.score)
    for d, scores in sorted(by_depth.items()):
        for key in ("em", "f1", "searches"):
            out[f"{key}/d_min_{d}"] = sum(s.get(key, 0.0) for s in scores) / len(scores)
    return out
