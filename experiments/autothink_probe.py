"""Which surface features decide AutoThink's mode? P(think) on problem forms seen and unseen in training.

P(think) is exact: one minus the probability that the first completion token is `</think>` under the model's own
(ellipsis) prompt, averaged over 50 random problems per form. The unseen forms separate two explanations of the
shortcut world's mode choice: difficulty (carries and borrows mean think) and surface (a one- or two-digit second
operand means direct).

    OMP_NUM_THREADS=1 python experiments/autothink_probe.py autothink_shortcut_base RUN/final [RUN/final ...]
"""

from __future__ import annotations

import random
import statistics
import sys

import torch

from reasonrl.models import encode_prompt, load_model
from reasonrl.worlds.arith import ArithWorld
from reasonrl.worlds.shortcut import has_borrow, has_carry


def draw(form: str, rng: random.Random) -> str:
    """One expression of `form`: `x` repeats an operand, digits say how long each operand is."""
    while True:
        x, b, a, c = rng.randint(100, 999), rng.randint(100, 999), rng.randint(10, 99), rng.randint(10, 99)
        expression, ok = {
            "x*0": (f"{x}*0", True), "x-x": (f"{x}-{x}", True), "x+0": (f"{x}+0", True), "x*1": (f"{x}*1", True),
            "2d+2d, carry": (f"{a}+{c}", a % 10 + c % 10 >= 10),
            "3d+3d, carry": (f"{x}+{b}", has_carry(x, b)),
            "3d-3d, borrow": (f"{max(x, b)}-{min(x, b)}", has_borrow(max(x, b), min(x, b))),
            "3d+2d, carry (unseen)": (f"{x}+{a}", has_carry(x, a)),
            "2d+3d, carry (unseen)": (f"{a}+{x}", has_carry(a, x)),
            "3d-2d, borrow (unseen)": (f"{x}-{a}", has_borrow(x, a)),
            "3d-3d, no borrow (unseen)": (f"{max(x, b)}-{min(x, b)}", not has_borrow(max(x, b), min(x, b)) and x != b),
            "x*2 (unseen)": (f"{x}*2", True),
        }[form]
        if ok:
            return expression


FORMS = ["x*0", "x-x", "x+0", "x*1", "2d+2d, carry", "3d+3d, carry", "3d-3d, borrow", "3d+2d, carry (unseen)",
         "2d+3d, carry (unseen)", "3d-2d, borrow (unseen)", "3d-3d, no borrow (unseen)", "x*2 (unseen)"]


@torch.no_grad()
def think_probability(model, tokenizer, expressions: list[str]) -> float:
    ids = [encode_prompt(tokenizer, ArithWorld.prompt(e)) for e in expressions]
    width = max(map(len, ids))
    x = torch.tensor([[tokenizer.pad_token_id] * (width - len(i)) + i for i in ids])
    mask = (x != tokenizer.pad_token_id).long()
    logits = model(input_ids=x, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    return float(1 - logits[:, -1].softmax(-1)[:, tokenizer.convert_tokens_to_ids("</think>")].mean())


def main(paths: list[str]) -> None:
    problems = {form: [draw(form, random.Random(f"{form}/{i}")) for i in range(50)] for form in FORMS}
    table = {form: [] for form in FORMS}
    for path in paths:
        model, tokenizer = load_model(path)
        for form in FORMS:
            table[form].append(think_probability(model, tokenizer, problems[form]))
    print("| form | example | " + " | ".join(paths) + " |")
    print("|---" * (len(paths) + 2) + "|")
    for form in FORMS:
        print(f"| {form} | `{problems[form][0]}` | " + " | ".join(f"{p:.2f}" for p in table[form]) + " |")
    if len(paths) > 2:  # the first path is the start; the rest are seeds of one arm
        print("\nmean over the trained models: " + ", ".join(
            f"{form} {statistics.mean(table[form][1:]):.2f}" for form in FORMS))


if __name__ == "__main__":
    main(sys.argv[1:] or ["autothink_shortcut_base"])
