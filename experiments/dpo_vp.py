"""DPO-VP vs GRPO from the shipped student at equal generated tokens and equal wall-clock, and the generator-RM
co-evolution (issue 6): the RM's accuracy against the verifier per round, and what RM-labelled prompts add to a
half-labelled prompt set.

Arms, all from `student` on levels 1-3 with the same seeds and the same 408 held-out problems:
    dpo_vp         configs/dpo_vp.yaml: 128 prompts x 8 samples per round, every answer known
    grpo           configs/grpo.yaml's recipe for as many generated tokens as dpo_vp's rounds
    50% labelled   half of the prompts have no answer (algo.unlabeled_fraction=0.5) and are skipped
    50% + RM       the same half labelled by the reward model (algo.reward_model=true)

Writes docs/results/dpo_vp.md and PNG plots. Runs are sequential on one thread, so their times compare:
    OMP_NUM_THREADS=1 .venv/bin/python experiments/dpo_vp.py            (3 seeds x 6 rounds; the doc gives its time)
    OMP_NUM_THREADS=1 .venv/bin/python experiments/dpo_vp.py --quick    (1 seed x 2 rounds, about 4 minutes)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from opd import GRPO, curve, fmt, plot, seed_band  # experiments/opd.py: the same accounting of tokens and seconds

from reasonrl.algos.dpo_pairs import vr_score
from reasonrl.config import load_config
from reasonrl.data import PromptStream
from reasonrl.rewards.math import accuracy
from reasonrl.tracking import read_metrics
from reasonrl.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
EVAL_N = 200  # per level: 8 + 200 + 200 = 408 held-out problems on levels 1-3
# 16 steps x 64 samples = one DPO-VP round's 1024 samples; 20 so that GRPO's curve reaches dpo_vp's token count
# even when its completions are shorter, and GRPO's accuracy can be read at dpo_vp's tokens without extrapolating
GRPO_STEPS_PER_ROUND = 20
MODES = {"full": {"rounds": 6, "seeds": "0,1,2"}, "quick": {"rounds": 2, "seeds": "0"}}
ARMS = {
    "dpo_vp": [],
    "50% labelled": ["algo.unlabeled_fraction=0.5"],
    "50% + RM": ["algo.unlabeled_fraction=0.5", "algo.reward_model=true"],
}


NOTES = """## Notes for reading the numbers

- **Noise.** One problem is 0.25 points and seeds differ by 1-3 points at any round; a difference between arms under
  about 2 points (mean of 3 seeds) is not a result. Every arm plateaus at 54-58%: two DPO-VP rounds (or 10-20 GRPO
  steps) fix the student's easy errors, later rounds do not add more (the same plateau as OPD's and GRPO's in
  docs/results/opd.md, at the same lr 5e-5; the later rounds' T = 1.0-1.2 do not help here).
- **Why DPO-VP is cheap per token here.** A round samples its 1024 completions in one engine call (batches of up to
  256 rows) and updates on one pair per prompt (at most 256 of its 1024 sequences, 4 optimizer steps); GRPO samples
  64 completions per step and back-propagates through all of them at every step. The wall-clock columns count
  sampling, verification and updates (and the RM's training), not evaluations.
- **The RM costs more than it saves here.** Its training (2 epochs over about 500 labelled samples per round, a full
  copy of the student's transformer) takes longer than the round's sampling and DPO updates together, so
  `50% + RM` spends about 3x dpo_vp's training time. The RM only pays where answers are missing, not where they are
  merely expensive to check.
- **What the RM learns.** Its pointwise accuracy beats the majority-class baseline from round 2 on, but much of that
  can come from cues that need no checking (level-1 problems are almost always answered right, so the prompt alone
  predicts a lot). The ranking of samples *within* a prompt, which is what a pair needs, rises from 50% (untrained)
  to about 70% over the rounds: the RM does improve with the generator's samples. Its pairs on hidden prompts are
  rarely flipped (1-8%) but often ties (30-47%: two correct or two wrong samples, which teach little), so about half
  of them carry the verifier's preference.
- **What fell short.** The RM gives no lasting gain: RM-labelled prompts help at rounds 2-3 (positive on every seed)
  and the advantage fades to within noise by round 6, for about 6x the labelled-only arm's training time. DPO-VP is
  as good as GRPO at lower cost, not better beyond noise, and both use lr 5e-5 (GRPO was not tuned for this budget).
  The RM's settings (lr 3e-4, 2 epochs, margin 0.3) come from one offline probe on the student's samples, not from
  a search in the loop; 3 seeds."""


def overrides(arm: str, rounds: int, seed: int) -> tuple[str | None, list[str]]:
    """(config file, overrides) of one run."""
    shared = [f"data.eval_n={EVAL_N}", f"train.seed={seed}", "train.progress=false", "train.save_every=0"]
    if arm == "grpo":
        steps = rounds * GRPO_STEPS_PER_ROUND
        return "configs/grpo.yaml", shared + GRPO + [
            f"train.steps={steps}",
            f"train.eval_every={GRPO_STEPS_PER_ROUND // 2}",
        ]
    return "configs/dpo_vp.yaml", shared + [f"algo.rounds={rounds}"] + ARMS[arm]


def slug(name: str) -> str:
    return name.replace(" ", "").replace("%", "pct").replace("+", "_")


def train(config: str | None, args: list[str], run_dir: Path) -> float:
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    Trainer(load_config(ROOT / config, args), run_dir=run_dir).train()
    return time.perf_counter() - started


def hidden_pair_quality(run_dir: Path) -> list[dict[str, float]]:
    """Per round, the RM's pairs on hidden prompts checked afterwards against the gold answers the run never saw
    (the run's own prompt stream, replayed): shares of (correct vs wrong), flipped (wrong vs correct), and ties."""
    config = load_config(run_dir / "config.yaml")
    pair_files = sorted((run_dir / "pairs").glob("round_*.jsonl"))
    per_round = config.train.prompts_per_step * config.algo.steps_per_round
    stream = PromptStream(config.data.train, config.data)
    answers = {json.dumps(ex.prompt): ex.answer for ex in stream.next(per_round * len(pair_files))}
    out = []
    for path in pair_files:
        rows = [r for r in map(json.loads, path.read_text().splitlines()) if not r["labelled"]]
        texts = [t for r in rows for t in (r["chosen"], r["rejected"])]
        gold = [answers[json.dumps(r["prompt"])] for r in rows for _ in range(2)]
        scores = [vr_score(t, v) for t, v in zip(texts, accuracy([""] * len(texts), texts, answer=gold))]
        kinds = [(scores[2 * i], scores[2 * i + 1]) for i in range(len(rows))]
        n = len(kinds) or math.nan  # a round without hidden pairs has no shares
        out.append(
            {
                "pairs": float(len(kinds)),
                "right": sum(c > r for c, r in kinds) / n,
                "flipped": sum(c < r for c, r in kinds) / n,
                "tie": sum(c == r for c, r in kinds) / n,
            }
        )
    return out


def interp(band: list[dict], x: float, key: str) -> float:
    """Seed-mean accuracy of `band` at x (`tokens` or `wall`), linear between evaluations; NaN past its end."""
    for a, b in itertools.pairwise(band):
        if a[key] <= x <= b[key]:
            return a["accuracy"] + (b["accuracy"] - a["accuracy"]) * (x - a[key]) / max(1e-9, b[key] - a[key])
    return math.nan


def mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.fmean(values) if values else math.nan


def pct(v: float) -> str:
    return "-" if math.isnan(v) else f"{100 * v:.1f}"


def plot_rm(rm: dict[str, list[float]], path: Path) -> None:
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rounds = list(range(1, len(rm["accuracy"]) + 1))
    labels = {
        "accuracy": "accuracy (p > 0.5 vs verifier), before training",
        "majority": "majority-class baseline",
        "ranking": "within-prompt ranking, before training",
        "hidden_right": "hidden pairs right (post hoc)",
        "hidden_flipped": "hidden pairs flipped (post hoc)",
    }
    for key, label in labels.items():
        ax.plot(
            rounds,
            [100 * v for v in rm[key]],
            marker="o",
            markersize=4,
            label=label,
            linestyle="--" if key == "majority" else "-",
        )
    ax.set(
        title="The reward model against the verifier, per round (arm 50% + RM)",
        xlabel="round",
        ylabel="%",
        xticks=rounds,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed x 2 rounds instead of 3 seeds x 6 rounds")
    parser.add_argument("--seeds", default=None)
    parser.add_argument("--out", default=str(ROOT / "runs" / "dpo_vp"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--report-only", action="store_true", help="rewrite the doc from existing runs")
    args = parser.parse_args()
    mode = MODES["quick" if args.quick else "full"]
    rounds, seeds = mode["rounds"], [int(s) for s in (args.seeds or mode["seeds"]).split(",")]
    out = Path(args.out) / ("quick" if args.quick else "full")
    doc_dir = Path(args.doc)
    arms = ["dpo_vp", "grpo", "50% labelled", "50% + RM"]
    runs: dict[str, list[list[dict]]] = {a: [] for a in arms}
    walls: dict[str, list[float]] = {a: [] for a in arms}
    quality: list[list[dict]] = []
    for seed in seeds:
        for arm in arms:
            run_dir = out / f"seed{seed}" / slug(arm)
            if not args.report_only:
                wall = train(*overrides(arm, rounds, seed), run_dir)
                (run_dir / "wall_seconds.json").write_text(json.dumps(wall))
                print(f"{arm} seed {seed}: {wall:.0f} s", flush=True)
            runs[arm].append(read_metrics(run_dir))
            walls[arm].append(json.loads((run_dir / "wall_seconds.json").read_text()))
            if arm == "50% + RM":
                quality.append(hidden_pair_quality(run_dir))
    curves = {a: [curve(rows) for rows in runs[a]] for a in arms}
    bands = {a: seed_band(curves[a]) for a in arms}
    rm_rows = [[r for r in rows if "rm/accuracy" in r] for rows in runs["50% + RM"]]
    rm = {
        key: [
            mean([math.nan if rounds_[k].get(f"rm/{key}") is None else rounds_[k][f"rm/{key}"] for rounds_ in rm_rows])
            for k in range(rounds)
        ]
        for key in ("accuracy", "base_rate", "ranking", "pair_agreement", "pair_flipped", "pair_rate", "hidden_pairs")
    }
    rm["majority"] = [max(b, 1 - b) for b in rm["base_rate"]]  # a constant answer's accuracy
    for key in ("right", "flipped", "tie", "pairs"):
        rm[f"hidden_{key}"] = [mean([q[k][key] for q in quality]) for k in range(rounds)]
    prefix = "dpo_vp-quick" if args.quick else "dpo_vp"
    plots = [f"{prefix}-accuracy-vs-tokens.png", f"{prefix}-accuracy-vs-wallclock.png", f"{prefix}-rm.png"]
    doc_dir.mkdir(parents=True, exist_ok=True)
    title = "Student greedy accuracy, levels 1-3 (408 problems)"
    plot(bands, "tokens", "generated tokens", doc_dir / plots[0], title)
    plot(bands, "wall", "training wall-clock (s, one thread)", doc_dir / plots[1], title)
    plot_rm(rm, doc_dir / plots[2])
    (out / "summary.json").write_text(json.dumps({"bands": bands, "rm": rm, "walls": walls}, indent=1))
    write_doc(args, rounds, seeds, arms, curves, bands, rm, walls, plots, doc_dir / "dpo_vp.md")
    print((doc_dir / "dpo_vp.md").read_text())
    print(f"total: {sum(sum(w) for w in walls.values()) / 60:.1f} minutes of runs")
    return 0


def write_doc(
    args,
    rounds: int,
    seeds: list[int],
    arms: list[str],
    curves: dict,
    bands: dict,
    rm: dict,
    walls: dict,
    plots: list[str],
    path: Path,
) -> None:
    start = bands["dpo_vp"][0]["accuracy"]
    vp = bands["dpo_vp"]
    # Per round: each DPO-VP arm's accuracy, and GRPO's at dpo_vp's cumulative tokens and seconds.
    per_round = [
        "| round | dpo_vp | GRPO at equal tokens | GRPO at equal wall-clock | 50% labelled | 50% + RM |",
        "|---|---|---|---|---|---|",
        f"| 0 (student) | {pct(start)} | {pct(start)} | {pct(start)} | {pct(start)} | {pct(start)} |",
    ]
    for k in range(1, rounds + 1):
        cells = [fmt([c[k]["accuracy"] for c in curves[a]]) for a in ("dpo_vp", "50% labelled", "50% + RM")]
        at_tokens, at_wall = (
            interp(bands["grpo"], vp[k]["tokens"], "tokens"),
            interp(bands["grpo"], vp[k]["wall"], "wall"),
        )
        per_round.append(f"| {k} | {cells[0]} | {pct(at_tokens)} | {pct(at_wall)} | {cells[1]} | {cells[2]} |")
    totals = [
        "| arm | final accuracy | best during run | generated tokens | train wall-clock (s) | run wall-clock (s) |",
        "|---|---|---|---|---|---|",
    ]
    for a in arms:
        finals = [c[-1]["accuracy"] for c in curves[a]]
        best = [max(p["accuracy"] for p in c[1:]) for c in curves[a]]
        totals.append(
            f"| {a} | {fmt(finals)} | {fmt(best)} | {mean([c[-1]['tokens'] for c in curves[a]]):,.0f} | "
            f"{fmt([c[-1]['wall'] for c in curves[a]], 1, 0)} | {fmt(walls[a], 1, 0)} |"
        )
    rm_table = [
        "| round | RM accuracy | majority-class baseline | ranking | RM pairs per labelled prompt | "
        "their agreement / flipped | hidden pairs | hidden pairs right / flipped / tie (post hoc) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in range(rounds):
        rm_table.append(
            f"| {k + 1} | {pct(rm['accuracy'][k])} | {pct(rm['majority'][k])} | {pct(rm['ranking'][k])} | "
            f"{rm['pair_rate'][k]:.2f} | {pct(rm['pair_agreement'][k])} / {pct(rm['pair_flipped'][k])} | "
            f"{rm['hidden_pairs'][k]:.1f} | {pct(rm['hidden_right'][k])} / {pct(rm['hidden_flipped'][k])} / "
            f"{pct(rm['hidden_tie'][k])} |"
        )
    final = {a: mean([c[-1]["accuracy"] for c in curves[a]]) for a in arms}
    # The RM's effect, paired by seed (same prompts, same hidden half, same start): + RM minus labelled-only.
    paired = ["| round | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |", "|---|" + "---|" * (len(seeds) + 1)]
    for k in range(1, rounds + 1):
        diffs = [
            100 * (b[k]["accuracy"] - a[k]["accuracy"]) for a, b in zip(curves["50% labelled"], curves["50% + RM"])
        ]
        paired.append(f"| {k} | " + " | ".join(f"{d:+.1f}" for d in diffs) + f" | {statistics.fmean(diffs):+.1f} |")
    flag = " --quick" if args.quick else ""
    grpo_tokens = interp(bands["grpo"], vp[-1]["tokens"], "tokens")
    grpo_wall = interp(bands["grpo"], vp[-1]["wall"], "wall")
    grpo_seconds = next(
        (
            a["wall"] + (b["wall"] - a["wall"]) * (vp[-1]["tokens"] - a["tokens"]) / (b["tokens"] - a["tokens"])
            for a, b in zip(bands["grpo"], bands["grpo"][1:])
            if a["tokens"] <= vp[-1]["tokens"] <= b["tokens"]
        ),
        math.nan,
    )  # GRPO's training seconds for dpo_vp's token count
    doc = [
        "# DPO-VP vs GRPO, and the generator-RM co-evolution (arith world)",
        "",
        "Command (CPU, one thread, runs one after another so that their times compare):",
        "",
        f"```\nOMP_NUM_THREADS=1 .venv/bin/python experiments/dpo_vp.py{flag}\n```",
        "",
        f"It took {sum(sum(w) for w in walls.values()) / 60:.0f} minutes ({len(seeds)} seed(s): "
        f"{', '.join(map(str, seeds))}; {rounds} rounds).",
        "",
        "Arms, all from the shipped `student`, levels 1-3, greedy accuracy on the same 408 held-out problems "
        f"(`data.eval_n={EVAL_N}`: 8 + 200 + 200; one problem is 0.25 points, the binomial standard error at 50% is "
        "2.5 points):",
        "",
        "- `dpo_vp`: configs/dpo_vp.yaml (128 prompts x 8 samples per round at T = 0.7, 0.7, 0.7, 1.0, 1.0, 1.2, at "
        "most one pair per prompt, one DPO epoch in 4 steps, beta 0.1, lr 5e-5).",
        f"- `grpo`: configs/grpo.yaml with {' '.join(f'`{o}`' for o in GRPO)}, 8 prompts x 8 samples per step "
        f"(T = 1.0), {GRPO_STEPS_PER_ROUND} steps per DPO-VP round, i.e. 1.25x dpo_vp's samples, so that its curve "
        f"covers dpo_vp's token count; evaluated every {GRPO_STEPS_PER_ROUND // 2} steps.",
        "- `50% labelled`: `algo.unlabeled_fraction=0.5`: about half of the prompts (a fixed subset by a hash of the "
        "prompt) have no gold answer and are skipped, not even sampled.",
        "- `50% + RM`: the same, plus `algo.reward_model=true`: each round an outcome RM (the student's transformer "
        "+ a scalar head, docs/dpo_vp.md) is measured on, then trained on, the labelled half's verified samples "
        "(2 epochs, lr 3e-4); it then pairs the hidden half's samples (highest vs lowest p, only if p(chosen) >= 0.5 "
        "and the spread >= 0.3).",
        "",
        "Generated tokens and wall-clock are cumulative over training steps (sampling, verification, RM training, "
        "updates), without evaluations and without the one-off start of the math-verify worker (as in "
        "experiments/opd.py). Mean ± standard deviation over seeds.",
        "",
        "## Accuracy per round",
        "",
        "GRPO's columns read its seed-mean curve at dpo_vp's cumulative generated tokens and training seconds of that "
        "round (linear between GRPO's evaluations; `-` where GRPO had not run that long).",
        "",
        *per_round,
        "",
        *totals,
        "",
        "## The reward model, round by round (arm `50% + RM`)",
        "",
        "Measured on each round's labelled samples **before** the RM trains on them (round 1: the untrained RM, "
        "p = 0.5 everywhere). Accuracy: (p > 0.5) equals (verifier says correct). Ranking: within a prompt, the share "
        "of (correct, wrong) sample pairs where the correct one scores higher. RM pairs: the pairs the RM would "
        "build on these labelled prompts, and the share the verifier agrees with (chosen scores higher) or "
        "contradicts (flipped). Hidden pairs: the pairs the RM actually built on the hidden prompts, after "
        "training on the round's labelled samples (a later RM than the one in the columns before it, so a round can "
        "have hidden pairs and no pairs on labelled prompts), checked after the run against the gold answers the run "
        "never saw.",
        "",
        *rm_table,
        "",
        "## What this shows",
        "",
        f"- **DPO-VP vs GRPO at equal generated tokens** ({vp[-1]['tokens']:,.0f}): {pct(final['dpo_vp'])}% vs "
        f"{pct(grpo_tokens)}%; **at equal training wall-clock** ({vp[-1]['wall']:.0f} s): {pct(final['dpo_vp'])}% vs "
        f"{pct(grpo_wall)}% (from {pct(start)}%). GRPO needed {grpo_seconds:.0f} s for dpo_vp's tokens. The paper's "
        "claim in miniature, comparable accuracy at lower compute, "
        f"**{'holds' if final['dpo_vp'] >= grpo_tokens - 0.02 else 'does not hold'}** here (within the noise below, "
        "not better).",
        f"- **RM-labelled prompts**: `50% + RM` {pct(final['50% + RM'])}% vs `50% labelled` "
        f"{pct(final['50% labelled'])}% ({100 * (final['50% + RM'] - final['50% labelled']):+.1f} points) and "
        f"`dpo_vp` with every answer known {pct(final['dpo_vp'])}%. Per round and seed, `50% + RM` minus "
        "`50% labelled` (points; round 1 is the same run in both arms, since the RM, trained on round 1's samples "
        "only, is never sure enough to pair a hidden prompt in round 1):",
        "",
        *paired,
        "",
        NOTES,
        "",
        "## Plots",
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
    ]
    path.write_text("\n".join(doc))


if __name__ == "__main__":
    sys.exit(main())
