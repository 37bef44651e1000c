"""A client of Search-R1's retrieval server (`/retrieve`), so agents search users' own indexes (E5 + FAISS, BM25 or
anything that speaks the protocol):

    POST {"queries": [...], "topk": k, "return_scores": true}
    ->   {"result": [[{"document": {"id": ..., "contents": "title\\ntext"}, "score": s}, ...], ...]}

Standard library only. Every failure (refused, timed out, HTTP error, malformed answer) is a RetrievalError.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from reasonrl.retrieval.base import Doc, RetrievalError


class HTTPRetriever:
    """One POST per batch of queries, with a timeout in seconds per request."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url, self.timeout = url, timeout

    def search(self, queries: Sequence[str], topk: int) -> list[list[Doc]]:
        body = json.dumps({"queries": list(queries), "topk": topk, "return_scores": True}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raise RetrievalError(f"retriever answered HTTP {e.code} {e.reason}") from None
        except (TimeoutError, urllib.error.URLError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError):
                raise RetrievalError(f"retriever timed out after {self.timeout:g} s") from None
            raise RetrievalError(f"retriever unreachable ({reason})") from None
        except (OSError, http.client.HTTPException) as e:  # the connection broke mid-answer
            raise RetrievalError(f"retriever dropped the connection ({type(e).__name__})") from None
        try:
            return _parse(json.loads(raw), len(queries))
        except (ValueError, TypeError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            raise RetrievalError(f"retriever answered malformed JSON ({e})") from None


def _parse(answer: Any, n: int) -> list[list[Doc]]:
    """The documents of a `/retrieve` answer; items are {"document": doc, "score": s} or, without scores, doc."""
    result = answer.get("result") if isinstance(answer, dict) else None
    if not isinstance(result, list) or len(result) != n:
        raise ValueError(f"expected {{'result': [one list per query]}} for {n} queries, got {str(answer)[:120]}")
    out = []
    for hits in result:
        if not isinstance(hits, list):
            raise ValueError(f"expected a list of documents per query, got {str(hits)[:120]}")
        docs = []
        for hit in hits:
            doc = hit.get("document", hit) if isinstance(hit, dict) else None
            if not isinstance(doc, dict) or not isinstance(doc.get("contents"), str):
                raise ValueError(f"a document without 'contents': {str(hit)[:120]}")
            score = hit.get("score", 0.0) if "document" in hit else 0.0
            docs.append(Doc(str(doc.get("id", "")), doc["contents"], float(score)))
        out.append(docs)
    return out
