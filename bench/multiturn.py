"""Multi-turn episode collection on the shipped student: FastEngine's KV-cached session (FastSession) vs the
library's StatelessSession, which re-submits every row's whole token list each turn, over the same engine,
interleaved, the same seeds.

    OMP_NUM_THREADS=1 python bench/multiturn.py [--episodes 64] [--turns 4] [--turn-tokens 16] [--reps 5]

Episodes: arithmetic prompts (episodes / 4 distinct, 4 rows each); per turn the policy samples up to --turn-tokens
tokens at temperature 1, then a synthetic observation of 10-20 tokens (fixed per episode and turn) is appended, except
after the last turn. Prints the median seconds of each way, their ratio, and how many episodes came out identical
(the session decodes its batch without compaction, the single-turn engine compacts it, so the uniforms a row draws
after a compaction differ: identical episodes are expected in rounds without one, not in all).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from reasonrl.models import encode_prompt, load_model
from reasonrl.rollout.base import SamplingParams
from reasonrl.rollout.fast import FastEngine
from reasonrl.rollout.session import StatelessSession
from reasonrl.worlds.arith import ArithWorld


def observations(episodes: int, turns: int, vocab: range, seed: int = 0) -> list[list[list[int]]]:
    """[turn][episode]: 10-20 token ids, fixed by the seed."""
    rng = random.Random(seed)
    return [[rng.choices(vocab, k=rng.randint(10, 20)) for _ in range(episodes)] for _ in range(turns)]


def collect(session, turns: int, params: SamplingParams, obs: list[list[list[int]]]) -> list[list[int]]:
    """Run the episodes; every row's final token list."""
    rows = list(range(len(obs[0])))
    for turn in range(turns):
        session.generate(rows, params)
        if turn + 1 < turns:
            session.append(rows, obs[turn])
    return [session.tokens(r) for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--turn-tokens", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model("student")
    engine = FastEngine(model, tok)
    world = ArithWorld(levels=[1, 2, 3], seed=0)
    prompts = [encode_prompt(tok, world.example(i).prompt) for i in range(args.episodes // 4)]
    obs = observations(args.episodes, args.turns, range(3, len(tok)))
    params = SamplingParams(max_new_tokens=args.turn_tokens, temperature=1.0)
    ways = {"kv-cached": lambda: engine.open(prompts, 4), "stateless": lambda: StatelessSession(engine, prompts, 4)}
    times: dict[str, list[float]] = {name: [] for name in ways}
    decoding: dict[str, list[float]] = {name: [] for name in ways}
    tokens: dict[str, int] = {}
    identical, spent = 0, [0.0]
    decode_until_stop = engine.decode_until_stop

    def timed_decode(*args, **kwargs):  # the decode loop both ways share, timed apart from prefill / append
        started = time.perf_counter()
        out = decode_until_stop(*args, **kwargs)
        spent[0] += time.perf_counter() - started
        return out

    engine.decode_until_stop = timed_decode
    for rep in range(args.reps + 1):  # the first round warms up
        drawn = {}
        for name in ways if rep % 2 else list(ways)[::-1]:
            torch.manual_seed(rep)
            spent[0], started = 0.0, time.perf_counter()
            drawn[name] = collect(ways[name](), args.turns, params, obs)
            if rep:
                times[name].append(time.perf_counter() - started)
                decoding[name].append(spent[0])
            tokens[name] = sum(map(len, drawn[name]))
        if rep:
            identical += sum(a == b for a, b in zip(drawn["kv-cached"], drawn["stateless"]))
    kv, stateless = statistics.median(times["kv-cached"]), statistics.median(times["stateless"])
    print(
        f"{args.episodes} episodes x {args.turns} turns (up to {args.turn_tokens} tokens each, observations of 10-20)"
    )
    print("| way | median s | of which the decode loop s | tokens per round |\n|---|---|---|---|")
    for name, t in (("kv-cached", kv), ("stateless", stateless)):
        print(f"| {name} | {t:.3f} | {statistics.median(decoding[name]):.3f} | {tokens[name]} |")
    print(f"\nspeed-up of the KV-cached session: {stateless / kv:.2f}x")
    print(f"episodes identical in both ways: {identical} of {args.episodes * args.reps}")


if __name__ == "__main__":
    main()
