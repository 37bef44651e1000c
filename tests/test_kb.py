"""The kb world: d_min is the fewest searches by brute force over its documents, BM25 finds every entity's document
by its name, splits never share an entity, everything is a function of the seed, and demonstrations (with and
without over-search) play through the env to the gold answer."""

import itertools

import pytest
from transformers import AutoTokenizer

from reasonrl.config import DataConfig, KBConfig, RetrieverConfig, TurnLimits
from reasonrl.data import DataError, load_source, multi_turn_world
from reasonrl.envs.render import InlineRenderer
from reasonrl.models import ASSETS
from reasonrl.retrieval import BM25Retriever
from reasonrl.rollout.episodes import play_demonstrations
from reasonrl.worlds.kb import (
    CITIES,
    COMPANY_MIDDLES,
    COMPANY_ONSETS,
    COUNTRIES,
    ENDINGS,
    FIRST_ONSETS,
    LAST_ONSETS,
    PARAMETRIC,
    KBWorld,
    make_shard,
    name_split,
)


def doc_facts(contents: str) -> tuple[str, dict[str, str]]:
    """(subject, {relation: target}) read back from a document's text, not from the generator's tables."""
    title, text = contents.split("\n", 1)
    subject, _, rest = text.partition(": ")
    assert subject == title
    return subject, dict(item.split(" ", 1) for item in rest.rstrip(".").split(", "))


def fewest_searches(example, docs) -> int:
    """Breadth-first over sets of searched entities: a search names an entity the agent knows (from the question,
    the weights or a document read) and reveals its document; spouse facts read both ways. Returns the fewest
    searches after which the question's chain resolves to the gold answer."""
    facts = dict(doc_facts(d.contents) for d in docs)
    parametric = {(c, r): t for c, fs in facts.items() for r, t in fs.items() if r in PARAMETRIC}
    chain = example.meta["chain"]
    start, path = chain[0][0], [rel for _, rel, _ in chain]

    def knowledge(searched: frozenset) -> tuple[dict, set]:
        known, names = dict(parametric), {start, *COUNTRIES}
        for entity in searched:
            for rel, target in facts[entity].items():
                known[(entity, rel)] = target
                names.add(target)
                if rel == "spouse":
                    known[(target, rel)] = entity
        return known, names

    def answers(searched: frozenset) -> bool:
        known, node = knowledge(searched)[0], start
        for rel in path:
            if (node, rel) not in known:
                return False
            node = known[(node, rel)]
        return node == example.answer

    frontier = {frozenset()}
    for depth in itertools.count():
        if any(answers(s) for s in frontier):
            return depth
        frontier = {s | {n} for s in frontier for n in knowledge(s)[1] if n in facts and n not in s}


@pytest.fixture(scope="module")
def world():
    return KBWorld(levels=[0, 1, 2, 3], seed=0)


def test_d_min_is_the_fewest_searches_by_brute_force(world):
    examples = world.eval_set([0, 1, 2, 3], 25) + [world.example(i) for i in range(40)]
    examples += [world.example(i, "sft") for i in range(40)]
    seen_depths = set()
    for ex in examples:
        docs = world.corpus(ex.meta["split"], ex.meta["shard"])
        assert fewest_searches(ex, docs) == ex.meta["d_min"] == ex.level, ex.meta["question"]
        seen_depths.add((ex.meta["d_min"], ex.meta["parametric"]))
    # every depth occurs, and a parametric last hop at depths 0-2 (capital of the country of ...)
    assert {(0, True), (1, True), (1, False), (2, True), (2, False), (3, False)} <= seen_depths


def test_bm25_returns_each_entitys_document_for_its_name(world):
    for split in ("eval", "rl"):
        docs = world.corpus(split)
        retriever = BM25Retriever(docs)
        names = [d.id for d in docs]
        for name, hits in zip(names, retriever.search(names, 1)):
            assert [h.id for h in hits] == [name], (split, name, hits)


def test_splits_never_share_a_person_or_a_company(world):
    def generated(split: str, shard: int) -> set[str]:
        kinds = make_shard(0, split, shard).kinds
        return {e for e, k in kinds.items() if k in ("person", "company")}

    eval_names, rl_names = generated("eval", 0), generated("rl", 0)
    sft_names = set().union(*(generated("sft", i) for i in range(60)))
    assert eval_names and rl_names and sft_names
    assert not eval_names & rl_names and not eval_names & sft_names and not rl_names & sft_names
    for split, names in (("eval", eval_names), ("rl", rl_names), ("sft", sft_names)):
        assert {name_split(n) for n in names} == {split}
    # eval questions are about eval entities only (or the shared layer, with a parametric last hop)
    for ex in world.eval_set([1, 2, 3], 20):
        start = ex.meta["chain"][0][0]
        assert start in eval_names or (start in CITIES and ex.meta["parametric"])


def test_name_pools_are_disjoint_per_kind():
    first = {o + e for o in FIRST_ONSETS for e in ENDINGS}
    last = {o + e for o in LAST_ONSETS for e in ENDINGS}
    company = {o + m + e for o in COMPANY_ONSETS for m in COMPANY_MIDDLES for e in ENDINGS}
    layer = set(CITIES) | set(COUNTRIES) | {w for pair in COUNTRIES.values() for w in pair}
    pools = [first, last, company, layer]
    assert len(layer) == len(CITIES) + 3 * len(COUNTRIES)
    for a, b in itertools.combinations(pools, 2):
        assert not a & b


def test_everything_is_a_function_of_the_seed():
    def snapshot(seed: int):
        make_shard.cache_clear()
        w = KBWorld(levels=[0, 1, 2, 3], seed=seed, kb=KBConfig(over_search=0.5))
        examples = w.eval_set(None, 5) + [w.example(i) for i in range(10)] + [w.example(i, "sft") for i in range(5)]
        return [(e.prompt, e.answer, e.meta, w.demonstration(e)) for e in examples], w.corpus("rl")

    assert snapshot(3) == snapshot(3)
    assert snapshot(3)[0] != snapshot(4)[0]
    # the parametric layer is the same under every seed
    a, b = make_shard(3, "eval", 0), make_shard(4, "eval", 0)
    assert {c: a.facts[c] for c in [*CITIES, *COUNTRIES]} == {c: b.facts[c] for c in [*CITIES, *COUNTRIES]}


def test_config_reaches_the_world_and_bad_options_are_errors():
    cfg = DataConfig(levels=[2], kb=KBConfig(train_split="sft"), retriever=RetrieverConfig(topk=2))
    world = multi_turn_world("world:kb", cfg)
    assert isinstance(world, KBWorld) and world.topk == 2 and world.train_split == "sft"
    examples = load_source("world:kb", cfg, "train", 3)
    assert [e.meta["split"] for e in examples] == ["sft"] * 3 and [e.level for e in examples] == [2, 2, 2]
    with pytest.raises(DataError, match="searches its own generated corpus"):
        multi_turn_world("world:kb", DataConfig(retriever=RetrieverConfig(corpus="x.jsonl")))
    with pytest.raises(DataError, match="subset of"):
        load_source("world:kb", DataConfig(levels=[4]), "eval")


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(ASSETS / "student")


@pytest.mark.parametrize("over_search", [0.0, 1.0])
def test_demonstrations_play_to_the_gold_answer(tok, over_search):
    world = KBWorld(levels=[0, 1, 2, 3], kb=KBConfig(over_search=over_search))
    examples = world.eval_set(None, 6)
    limits = TurnLimits(max_episode_tokens=448)
    episodes = play_demonstrations(world, examples, InlineRenderer(tok), tok, limits, context=512)
    for ex, ep in zip(examples, episodes):
        assert ep.stop_reason == "done" and ep.score["em"] == 1.0 and ep.score["f1"] == 1.0, ex.meta["question"]
        d_min = ex.meta["d_min"]
        extra = over_search == 1.0 and d_min + 2 <= 4  # one unneeded search where the 4-turn budget allows
        assert ep.score["searches"] == d_min + extra
        assert len(ep.prompt_ids) + len(ep.tokens) <= 512
    metrics = world.episode_metrics(examples, episodes)
    assert metrics["em/d_min_3"] == 1.0 and metrics["searches/d_min_3"] == 3.0
    assert metrics["over_search_rate"] == (18 / 24 if over_search else 0.0)
    assert metrics["direct_answer_rate"] == (0.0 if over_search else 1.0)


def test_over_search_rate_of_demonstrations_is_controlled():
    world = KBWorld(levels=[1, 2], kb=KBConfig(over_search=0.4))
    examples = [world.example(i) for i in range(500)]
    extra = [len(world.demonstration(e)) - 1 - e.meta["d_min"] for e in examples]
    assert set(extra) == {0, 1}
    assert 0.34 < sum(extra) / len(extra) < 0.46
