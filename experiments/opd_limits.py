"""What caps on-policy distillation (OPD) from the shipped teacher (issue 22, item 4): OPD arms on the machinery of
experiments/learning.py (validation split for choosing, the 408-problem test set for reporting, parallel
single-thread processes, finished arms skipped, interrupted ones resumed), plus a teacher-confidence diagnostic.
Runs go to runs/exp-opd-limits; the tables are printed (docs/results/opd-limits.md quotes them by hand).
    OMP_NUM_THREADS=1 .venv/bin/python experiments/opd_limits.py --arms opd-new opd-new-lr5e-5 --jobs 2
    OMP_NUM_THREADS=1 .venv/bin/python experiments/opd_limits.py --teacher-probe runs/exp-opd-limits/opd-new/final
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learning  # experiments/learning.py: the run machinery reused here

OUT = learning.ROOT / "runs" / "exp-opd-limits"
learning.OUT = OUT  # learning's helpers read their run root and arm table from these module globals

# The GRPO main job's recipe (levels 2-3, lr 1e-4 cosine, 600 steps) without its algorithm keys.
BASE = [o for o in learning.NEW if not o.startswith("algo")]
OPD_NEW = BASE + ["algo=opd", "algo.teacher=teacher", "algo.signal=pg", "algo.kl_coef=1.0", "algo.loss_type=dapo"]
# Control: SFT on the world's step-by-step solutions (what the teacher writes), the same problems per step.
SFT_NEW = BASE + ["algo=sft", "algo.demo=solution"]
T = "OPD with the GRPO main job's recipe (levels 2-3, cosine decay to 0, 600 steps, 8 prompts x 8 samples)"
S = "Control: SFT on the correct solutions, the same recipe (8 problems a step, no sampling)"
ARMS: dict[str, tuple[str, list[str], str]] = {
    "opd-new": (T, OPD_NEW, "lr 1e-4"),
    "opd-new-lr5e-5": (T, OPD_NEW + ["optim.lr=5e-5"], "lr 5e-5"),
    "opd-new-lr2e-4": (T, OPD_NEW + ["optim.lr=2e-4"], "lr 2e-4"),
    "opd-new-direct": (T, OPD_NEW + ["algo.signal=direct"], "lr 1e-4, signal direct (exact reverse KL)"),
    "opd-new-direct-lr2e-4": (T, OPD_NEW + ["algo.signal=direct", "optim.lr=2e-4"], "lr 2e-4, signal direct"),
    "sft-new": (S, SFT_NEW, "lr 1e-4"),
    "sft-new-lr1e-3": (S, SFT_NEW + ["optim.lr=1e-3"], "lr 1e-3"),
}
learning.ARMS = ARMS


@torch.no_grad()
def teacher_probe(student: str, n_prompts: int = 40, samples: int = 4) -> dict[str, float]:
    """Greedy and sampled completions of `student` on validation problems, scored token by token by the teacher:
    how confident the teacher is on the student's own prefixes, at all tokens and at the student's wrong digits."""
    from reasonrl.models import encode_prompt, load_model
    from reasonrl.rewards.math import accuracy

    s_model, tok = load_model(student)
    t_model, _ = load_model("teacher")
    rows = [json.loads(line) for line in learning.validation_file().read_text().splitlines()][:: 400 // n_prompts]
    keys = ("ent", "p_tok", "agree", "ent_wrong", "p_wrong", "p_teacher_wrong")
    stats: dict[str, list[float]] = {k: [] for k in keys}
    correct = []
    for row in rows:
        ids = torch.tensor([encode_prompt(tok, row["prompt"])])
        for k in range(samples):
            torch.manual_seed(k)
            out = s_model.generate(
                ids, max_new_tokens=64, do_sample=k > 0, temperature=1.0, top_k=0, pad_token_id=tok.pad_token_id
            )
            comp = out[0, ids.shape[1] :]
            text = tok.decode(comp, skip_special_tokens=True)
            ok = accuracy([row["prompt"]], [text], [row["answer"]])[0] == 1.0
            correct.append(ok)
            t_logp = t_model(out).logits[0, ids.shape[1] - 1 : -1].float().log_softmax(-1)
            s_logp = s_model(out).logits[0, ids.shape[1] - 1 : -1].float().log_softmax(-1)
            p_t = t_logp.gather(-1, comp[:, None]).squeeze(-1).exp()
            ent = -(t_logp.exp() * t_logp).sum(-1)
            stats["ent"] += ent.tolist()
            stats["p_tok"] += p_t.tolist()
            stats["agree"] += (t_logp.argmax(-1) == s_logp.argmax(-1)).float().tolist()
            first_bad = (p_t < 0.5).nonzero()  # where the teacher disagrees with the student's token
            if not ok and len(first_bad):
                i = int(first_bad[0])
                stats["ent_wrong"].append(float(ent[i]))
                stats["p_wrong"].append(float(p_t[i]))
                stats["p_teacher_wrong"].append(float(t_logp[i].exp().max()))
    mean = {k: sum(v) / max(1, len(v)) for k, v in stats.items()}
    return mean | {
        "n_completions": len(correct),
        "student_acc": sum(correct) / len(correct),
        "wrong_with_flag": len(stats["p_wrong"]),
        "wrong": len(correct) - sum(correct),
        "tokens_teacher_p_lt_0.5_frac": sum(p < 0.5 for p in stats["p_tok"]) / len(stats["p_tok"]),
        "tokens_teacher_entropy_gt_0.5_frac": sum(e > 0.5 for e in stats["ent"]) / len(stats["ent"]),
    }


def signal_table(names: list[str]) -> str:
    """Training signals averaged over the first and the last 50 steps of each arm (OPD arms only)."""
    keys = ("reward", "opd/reverse_kl", "opd/agreement", "entropy", "grad_norm")
    lines = ["| arm | " + " | ".join(f"{k}: first 50 → last 50 steps" for k in keys) + " |", "|---" * 6 + "|"]
    for name in names:
        rows = [r for r in learning.read_metrics(OUT / name) if "opd/reverse_kl" in r]
        if not rows:
            continue
        cells = [
            f"{statistics.fmean(r[k] for r in rows[:50]):.3f} → {statistics.fmean(r[k] for r in rows[-50:]):.3f}"
            for k in keys
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="*", default=[], help=f"arms to run, of {list(ARMS)}")
    parser.add_argument("--jobs", type=int, default=2, help="processes at once, one thread each")
    parser.add_argument("--teacher-probe", nargs="*", default=[], help="student models to probe the teacher on")
    args = parser.parse_args()
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; known: {list(ARMS)}")
    learning.validation_file()
    (OUT / "models").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        for name, result in zip(args.arms, pool.map(learning.run_arm, args.arms)):
            print(f"{name}: test accuracy {result['test']['accuracy']:.3f}, {learning.cpu_minutes(result)} CPU-min")
    for model in args.teacher_probe:
        print(json.dumps({"model": model} | teacher_probe(model)), flush=True)
    done = [a for a in ARMS if (OUT / a / "test.json").exists()]
    if done:
        print(learning.report(done))
        print(signal_table(done))
    if len(done) > 1:
        learning.plot_curves(
            [OUT / a for a in done],
            "OPD and SFT from the student, levels 2-3, cosine",
            learning.ROOT / "docs" / "results" / "opd-limits.png",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
