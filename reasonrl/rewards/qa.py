"""Open-domain QA scores: exact match and token F1 against a list of gold answers (the best one counts).

Normalisation is SQuAD's, as Search-R1 and FlashRAG use it: lowercase, punctuation removed, the articles a/an/the
removed, whitespace collapsed. F1 follows FlashRAG/HotpotQA: a yes/no/noanswer prediction or gold scores 0 unless
the two are equal (token overlap between "yes" and "no" answers means nothing).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = str.maketrans("", "", string.punctuation)
YES_NO = ("yes", "no", "noanswer")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, no punctuation, no articles, single spaces."""
    return " ".join(ARTICLES.sub(" ", text.lower().translate(PUNCTUATION)).split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def f1_score(prediction: str, golds: Sequence[str]) -> float:
    """The best token F1 (over normalised whitespace tokens) of the prediction against any gold answer."""
    pred = normalize_answer(prediction)
    best = 0.0
    for gold in map(normalize_answer, golds):
        if (pred in YES_NO or gold in YES_NO) and pred != gold:
            continue
        common = Counter(pred.split()) & Counter(gold.split())
        same = sum(common.values())
        if same:
            precision, recall = same / len(pred.split()), same / len(gold.split())
            best = max(best, 2 * precision * recall / (precision + recall))
    return best
