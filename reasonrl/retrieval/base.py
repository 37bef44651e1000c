"""The retriever interface: queries in, ranked documents out; plus the corpus format and a per-query memo.

A corpus is Search-R1's wiki format: JSON lines with `id` and `contents` = "title\\ntext". A retriever that cannot
answer (timeout, HTTP error, malformed response) raises `RetrievalError`; the search environment turns that into an
observation and a counted metric, never a crash (envs/search.py).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from reasonrl.data import DataError, jsonl_rows


@dataclass(frozen=True)
class Doc:
    """One retrieved passage: `contents` is "title\\ntext" (the title is its first line)."""

    id: str
    contents: str
    score: float = 0.0

    @property
    def title(self) -> str:
        return self.contents.split("\n", 1)[0]

    @property
    def text(self) -> str:
        return self.contents.split("\n", 1)[1] if "\n" in self.contents else ""


class RetrievalError(RuntimeError):
    """The retriever could not answer; the message says why in a few words (it is shown to the agent)."""


class Retriever(Protocol):
    def search(self, queries: Sequence[str], topk: int) -> list[list[Doc]]:
        """The best `topk` documents for each query, best first; raises RetrievalError when it cannot answer."""
        ...


class MemoRetriever:
    """Memoises `inner`'s answers per (query, topk), least recently used first out: the episodes of a step (a GRPO
    group, a batch) often repeat a query, and each distinct one is retrieved once. Failures are not memoised, so a
    later search may succeed."""

    def __init__(self, inner: Retriever, size: int = 4096):
        self.inner, self.size = inner, size
        self.memo: OrderedDict[tuple[str, int], list[Doc]] = OrderedDict()
        self.calls = 0  # queries sent to `inner`

    def search(self, queries: Sequence[str], topk: int) -> list[list[Doc]]:
        missing = list(dict.fromkeys(q for q in queries if (q, topk) not in self.memo))
        if missing:
            self.calls += len(missing)
            for query, docs in zip(missing, self.inner.search(missing, topk), strict=True):
                self.memo[(query, topk)] = docs
        out = []
        for query in queries:
            self.memo.move_to_end((query, topk))
            out.append(self.memo[(query, topk)])
        while len(self.memo) > self.size:
            self.memo.popitem(last=False)
        return out


def load_corpus(path: str | os.PathLike) -> list[Doc]:
    """Documents of a corpus JSONL (`id`, `contents` = "title\\ntext"); a malformed line is a DataError naming the
    file and the 1-based line."""
    path = str(path)
    docs = [_to_doc(row, where) for row, where in jsonl_rows(path, "corpus")]
    if not docs:
        raise DataError(f"{path}: no documents (the file is empty or has only blank lines)")
    return docs


def _to_doc(row: object, where: str) -> Doc:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name in ("id", "contents"):
        if name not in row:
            raise DataError(
                f"{where}: missing field {name!r} (corpus rows need 'id' and 'contents' = \"title\\ntext\"; "
                f"row has keys {sorted(map(str, row))})"
            )
    if isinstance(row["id"], bool) or not isinstance(row["id"], (str, int)):
        raise DataError(f"{where}: field 'id' must be a string or an integer, got {row['id']!r}")
    if not isinstance(row["contents"], str) or not row["contents"].strip():
        raise DataError(f"{where}: field 'contents' must be a non-empty string, got {row['contents']!r}")
    return Doc(str(row["id"]), row["contents"])
