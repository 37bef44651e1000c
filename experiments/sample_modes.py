"""Sample 8 completions for 16 held-out prompts per level and report think rate, sampled accuracy per mode, pass@8.

python experiments/sample_modes.py MODEL_DIR_OR_NAME   (e.g. student, runs/exp-grpo/grpo/final)
"""

import sys

import torch

from reasonrl.models import decode_completion, encode_prompt, load_model
from reasonrl.rewards.math import extract_boxed
from reasonrl.rollout.base import SamplingParams
from reasonrl.rollout.hf import HFEngine
from reasonrl.worlds.arith import ArithWorld

N_PROMPTS, N_SAMPLES = 16, 8


def main(model_path: str) -> None:
    model, tok = load_model(model_path)
    torch.manual_seed(0)
    for level in (1, 2, 3):
        examples = ArithWorld(levels=[level]).eval_set([level], N_PROMPTS)
        prompts = [encode_prompt(tok, e.prompt) for e in examples]
        rollouts = HFEngine(model, tok).generate(prompts, N_SAMPLES, SamplingParams(64, temperature=1.0))
        texts = [decode_completion(tok, c) for c in rollouts.completion_ids]
        gold = [e.answer for e in examples for _ in range(N_SAMPLES)]
        think = [t.startswith("<think>") for t in texts]
        correct = [extract_boxed(t) == g for t, g in zip(texts, gold)]
        n_think = sum(think)
        acc_think = sum(c for c, t in zip(correct, think) if t) / max(1, n_think)
        acc_direct = sum(c for c, t in zip(correct, think) if not t) / max(1, len(think) - n_think)
        pass_at = sum(any(correct[i * N_SAMPLES : (i + 1) * N_SAMPLES]) for i in range(len(examples))) / len(examples)
        print(
            f"level {level}: think rate {n_think / len(think):.2f}, accuracy thinking {acc_think:.2f}, "
            f"direct {acc_direct:.2f}, pass@{N_SAMPLES} {pass_at:.2f}"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "student")
