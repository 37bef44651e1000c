"""BM25 over an in-memory corpus with `bm25s` (numpy only): the default retriever, of the kb world and of users'
corpus JSONL files. Title and text are indexed together, as Search-R1's BM25 index does."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from reasonrl.retrieval.base import Doc


class BM25Retriever:
    """Okapi BM25 (bm25s defaults k1=1.5, b=0.75; English stopwords). Documents that share no term with the query
    (score 0) are not returned, so a query of unknown words finds nothing rather than arbitrary documents."""

    def __init__(self, docs: Sequence[Doc]):
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets its logger to DEBUG: one line per index
        if not docs:
            raise ValueError("BM25Retriever needs at least one document")
        self.bm25s, self.docs = bm25s, list(docs)
        self.index = bm25s.BM25()
        self.index.index(self._tokenize([d.contents for d in self.docs]), show_progress=False)

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        return self.bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)

    def search(self, queries: Sequence[str], topk: int) -> list[list[Doc]]:
        k = min(topk, len(self.docs))
        out = []
        for tokens in self._tokenize(list(queries)):
            ids, scores = self.index.retrieve([tokens], k=k, show_progress=False)
            hits = [(self.docs[i], float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]
            out.append([Doc(doc.id, doc.contents, score) for doc, score in hits])
        return out
