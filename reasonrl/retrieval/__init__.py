"""Retrievers behind one interface (`Retriever.search(queries, topk) -> [[Doc]]`): BM25 over a corpus JSONL
(bm25s, the default) and a client of Search-R1's `/retrieve` server. docs/kb.md."""

from __future__ import annotations

from reasonrl.retrieval.base import Doc, MemoRetriever, RetrievalError, Retriever, load_corpus
from reasonrl.retrieval.bm25 import BM25Retriever
from reasonrl.retrieval.http import HTTPRetriever


def make_retriever(cfg) -> MemoRetriever:
    """The retriever that `data.retriever` (config.RetrieverConfig) names, memoised: HTTP when `url` is set, else
    BM25 over `corpus`."""
    if cfg.url:
        return MemoRetriever(HTTPRetriever(cfg.url, cfg.timeout))
    if not cfg.corpus:
        raise ValueError("data.retriever needs a corpus (a JSONL file, id + contents) or a url (a /retrieve server)")
    return MemoRetriever(BM25Retriever(load_corpus(cfg.corpus)))


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
