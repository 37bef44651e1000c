"""Where the teacher first corrects the student (issue 22, item 5): can a truncated horizon reach the errors?

TOPD distils only the first H = rho * T tokens of each rollout. It can only fix a wrong completion whose first error
lies inside that prefix (after the fix, the completion may still go wrong later). This samples the shipped student
on held-out problems, lets the teacher score every token of each completion, and records for each wrong completion
the first position where the teacher gives the student's token less than 1/2. Writes docs/results/topd-horizon.md
and a PNG of the cumulative share of wrong completions fixed-able within H tokens.
    OMP_NUM_THREADS=1 .venv/bin/python experiments/topd_horizon.py          (about 3 CPU-minutes)
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import torch
from harness import ROOT
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reasonrl.models import encode_prompt, load_model
from reasonrl.rewards.math import accuracy
from reasonrl.worlds.arith import ArithWorld

HORIZONS = (6, 16, 32, 64, 128)  # TOPD at 10% and 25% of T = 64, half of it, all of it; levels 4-5 run to 128


@torch.no_grad()
def first_errors(levels: tuple[int, ...], n: int, samples: int, max_new: int) -> dict:
    """Sampled student completions (T = 1) on `n` held-out problems per level, each scored by the teacher."""
    student, tok = load_model("student")
    teacher, _ = load_model("teacher")
    examples = ArithWorld(levels, seed=0).eval_set(levels, n)
    firsts, lengths, correct, first_digit = [], [], [], []
    teacher_right = 0
    for i, ex in enumerate(examples):
        ids = torch.tensor([encode_prompt(tok, ex.prompt)])
        greedy = teacher.generate(ids, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
        text = tok.decode(greedy[0, ids.shape[1] :], skip_special_tokens=True)
        teacher_right += accuracy([ex.prompt], [text], [ex.answer])[0] == 1.0
        for k in range(samples):
            torch.manual_seed(1000 * i + k)
            out = student.generate(
                ids, max_new_tokens=max_new, do_sample=True, temperature=1.0, top_k=0, pad_token_id=tok.pad_token_id
            )
            comp = out[0, ids.shape[1] :]
            text = tok.decode(comp, skip_special_tokens=True)
            ok = accuracy([ex.prompt], [text], [ex.answer])[0] == 1.0
            correct.append(ok)
            lengths.append(len(comp))
            # the first digit the student writes after the operands' copy: where computing starts
            pieces = [tok.decode(comp[: j + 1], skip_special_tokens=True) for j in range(len(comp))]
            first_digit.append(next((j for j, p in enumerate(pieces) if "=" in p), len(comp)))
            if ok:
                continue
            t_logp = teacher(out).logits[0, ids.shape[1] - 1 : -1].float().log_softmax(-1)
            p = t_logp.gather(-1, comp[:, None]).squeeze(-1).exp()
            bad = (p < 0.5).nonzero()
            firsts.append(int(bad[0]) + 1 if len(bad) else None)  # 1-based: the token index H must reach
    return {
        "levels": levels,
        "completions": len(correct),
        "wrong": len(firsts),
        "student_acc": sum(correct) / len(correct),
        "teacher_acc": teacher_right / len(examples),
        "firsts": firsts,
        "mean_length": statistics.fmean(lengths),
        "first_equals": statistics.median(first_digit) + 1,
    }


@torch.no_grad()
def drift(models: dict[str, str], n: int, cut: int) -> list[str]:
    """Mean KL(model || teacher) per token on the teacher's own greedy solutions (the same text for every model),
    before and after position `cut`: does training the first `cut` tokens move the rest away from the teacher?"""
    teacher, tok = load_model("teacher")
    examples = ArithWorld((2, 3), seed=0).eval_set((2, 3), n)
    texts = []
    for ex in examples:
        ids = torch.tensor([encode_prompt(tok, ex.prompt)])
        out = teacher.generate(ids, max_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id)
        t_logp = teacher(out).logits[0, ids.shape[1] - 1 : -1].float().log_softmax(-1)
        texts.append((out, ids.shape[1], t_logp))
    lines = []
    for name, path in models.items():
        model, _ = load_model(path)
        head, tail = [], []
        for out, start, t_logp in texts:
            s_logp = model(out).logits[0, start - 1 : -1].float().log_softmax(-1)
            kl = (s_logp.exp() * (s_logp - t_logp)).sum(-1)
            head += kl[:cut].tolist()
            tail += kl[cut:].tolist()
        lines.append(f"| {name} | {statistics.fmean(head):.3f} | {statistics.fmean(tail):.3f} |")
    return lines


def row(r: dict) -> str:
    flagged = [f for f in r["firsts"] if f is not None]
    within = " | ".join(f"{100 * sum(f <= h for f in flagged) / max(1, r['wrong']):.0f}%" for h in HORIZONS)
    return (
        f"| {', '.join(map(str, r['levels']))} | {100 * r['teacher_acc']:.0f}% | {100 * r['student_acc']:.1f}% | "
        f"{r['wrong']} of {r['completions']} | {len(flagged)} | {statistics.median(flagged):.0f} | "
        f"{r['mean_length']:.0f} | {r['first_equals']:.0f} | {within} |"
    )


def plot(results: list[dict], path) -> None:
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for r in results:
        flagged = np.sort([f for f in r["firsts"] if f is not None])
        share = np.arange(1, len(flagged) + 1) / max(1, r["wrong"])
        ax.step(flagged, 100 * share, where="post", label=f"levels {', '.join(map(str, r['levels']))}")
    for h, name in ((6, "TOPD 10%"), (16, "TOPD 25%")):
        ax.axvline(h, color="grey", linestyle=":", linewidth=1)
        ax.text(h + 0.5, 3, name, fontsize="small", color="grey")
    ax.set(
        title="First teacher correction in the student's wrong completions",
        xlabel="token position (1-based)",
        ylabel="wrong completions whose first error is reached, %",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50, help="held-out problems per level")
    parser.add_argument("--samples", type=int, default=4, help="sampled completions per problem")
    parser.add_argument("--drift", nargs="*", default=[], help="NAME=MODEL_DIR pairs: trained models to compare")
    parser.add_argument("--cut", type=int, default=6, help="the position that splits the drift table (TOPD's H)")
    args = parser.parse_args()
    drift_rows = drift({"student": "student", **dict(m.split("=", 1) for m in args.drift)}, args.n, args.cut)
    results = [
        first_errors((2, 3), args.n, args.samples, 64),
        first_errors((4, 5), args.n, args.samples, 128),
    ]
    doc = ROOT / "docs" / "results" / "topd-horizon.md"
    plot(results, doc.with_suffix(".png"))
    heads = " | ".join(f"first error within {h} tokens" for h in HORIZONS)
    doc.write_text(
        "\n\n".join(
            [
                "# Where the teacher first corrects the student: what a truncated horizon can reach (issue 22)",
                f"Made by `OMP_NUM_THREADS=1 .venv/bin/python experiments/topd_horizon.py` ({args.n} held-out "
                f"problems per level, {args.samples} completions each at T = 1 from the shipped `student`; the "
                "`teacher` scores every token; an error is the first token the teacher gives less than 1/2). "
                + __doc__.split("\n\n")[1].replace("\n", " "),
                f"| levels | teacher greedy accuracy | student sampled accuracy | wrong completions | flagged by the "
                f"teacher | median first error (token) | mean length | median position of the first `=` | {heads} |\n"
                "|---|---|---|---|---|---|---|---|" + "---|" * len(HORIZONS) + "\n" + "\n".join(map(row, results)),
                "![first error positions](topd-horizon.png)",
                f"### Drift: KL(model ‖ teacher) per token on the teacher's greedy solutions ({2 * args.n} problems "
                f"of levels 2-3)\n\n| model | first {args.cut} tokens | the rest |\n|---|---|---|\n"
                + "\n".join(drift_rows),
            ]
        )
        + "\n"
    )
    print(doc.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
