"""Retrievers behind one interface (`Retriever.search(queries, topk) -> [[Doc]]`): BM25 over a corpus JSONL
(bm25s, the default) and a client of Search-R1's `/retrieve` server. docs/kb.md."""

from __future__ import annotations

import functools
import os

from reasonrl.retrieval.base import Doc, MemoRetriever, RetrievalError, Retriever, load_corpus
from reasonrl.retrieval.bm25 import BM25Retriever
from reasonrl.retrieval.http import HTTPRetriever


def make_retriever(cfg) -> MemoRetriever:
    """The retriever that `data.retriever` (config.RetrieverConfig) names, memoised: HTTP when `url` is set, else
    BM25 over `corpus`. One per (corpus file version, url, timeout) in a process: the trainer's rollouts and its
    evaluation share the index and the memo instead of loading a large corpus twice."""
    if cfg.url:
        return _retriever(None, None, cfg.url, cfg.timeout)
    if not cfg.corpus:
        raise ValueError("data.retriever needs a corpus (a JSONL file, id + contents) or a url (a /retrieve server)")
    stat = os.stat(cfg.corpus) if os.path.isfile(cfg.corpus) else None  # missing: load_corpus names the file
    return _retriever(cfg.corpus, stat and (stat.st_mtime_ns, stat.st_size), None, cfg.timeout)


@functools.lru_cache(maxsize=4)
def _retriever(corpus: str | None, version: tuple[int, int] | None, url: str | None, timeout: float) -> MemoRetriever:
    if url:
        return MemoRetriever(HTTPRetriever(url, timeout))
    return MemoRetriever(BM25Retriever(load_corpus(corpus)))


__all__ = [
    "BM25Retriever",
    "Doc",
    "HTTPRetriever",
    "MemoRetriever",
    "RetrievalError",
    "Retriever",
    "load_corpus",
    "make_retriever",
]
