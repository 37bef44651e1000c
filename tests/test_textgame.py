"""The textgame world: ALFWorld's rules and phrasing on hand-written episodes, the planners, splits, the hidden house
style, and prompt sizes against the shipped student's context."""

import json
import random
from collections import Counter, defaultdict

import pytest

from reasonrl.cli import main
from reasonrl.config import TextgameConfig
from reasonrl.envs.render import WindowRenderer
from reasonrl.envs.textgame import TextGameEnv, parse_action
from reasonrl.models import load_model
from reasonrl.worlds.textgame import (
    OBJECTS,
    TASK_TYPES,
    TextGameWorld,
    explore_plan,
    house_style,
    household_split,
    oracle_plan,
)


def house(task, contents):
    receptacles = sorted(contents)
    return {
        "receptacles": receptacles,
        "contents": contents,
        "locs": {r: i + 1 for i, r in enumerate(receptacles)},
        "lamp_at": "desk 1",
        "task": task,
    }


KITCHEN = {"countertop 1": ["mug 1"], "desk 1": [], "fridge 1": ["apple 1"], "microwave 1": [], "sinkbasin 1": []}


def play(env, actions):
    return [env.step(a) for a in actions]


def test_opening_a_closed_receptacle_and_heating_with_the_microwave():
    env = TextGameEnv(house({"type": "heat", "object": "apple", "target": "countertop"}, KITCHEN))
    first = env.reset(None)
    assert first.startswith("You are in the middle of a room. Looking quickly around you, you see a countertop 1, ")
    assert "Your task is to: put a hot apple in countertop." in first and "go to fridge 1" in first
    arrive, blocked, opened, took = play(env, ["go to fridge 1", "take apple 1 from fridge 1", "open fridge 1",
                                               "take apple 1 from fridge 1"])  # fmt: skip
    assert arrive.observation.startswith("You arrive at loc 3. The fridge 1 is closed.\nActions: ")
    assert "open fridge 1" in arrive.observation and "take apple 1" not in arrive.observation
    assert blocked.observation.startswith("Nothing happens.") and blocked.reward == -1.0 and blocked.info["invalid"]
    assert opened.observation.startswith("You open the fridge 1. The fridge 1 is open. In it, you see a apple 1.")
    assert took.observation.startswith("You pick up the apple 1 from the fridge 1.") and env.holding == "apple 1"
    at_counter, cold_put = play(env, ["go to countertop 1", "put apple 1 in/on countertop 1"])
    assert at_counter.observation.startswith("You arrive at loc 1. On the countertop 1, you see a mug 1.")
    assert not cold_put.done and env.contents["countertop 1"] == ["mug 1", "apple 1"]  # not hot: no win
    steps = play(env, ["take apple 1 from countertop 1", "go to microwave 1", "heat apple 1 with microwave 1",
                       "go to countertop 1", "put apple 1 in/on countertop 1"])  # fmt: skip
    assert steps[2].observation.startswith("You heat the apple 1 using the microwave 1.")
    assert (
        steps[-1].done
        and steps[-1].reward == 10.0
        and steps[-1].observation == "You put the apple 1 in/on the countertop 1."
    )
    assert env.score() == {"reward": 10.0, "success": 1.0, "steps": 11.0, "invalid": 1}


def test_clean_cool_look_and_put_two():
    clean = TextGameEnv(house({"type": "clean", "object": "mug", "target": "fridge"}, KITCHEN))
    steps = play(clean, ["go to countertop 1", "take mug 1 from countertop 1", "go to sinkbasin 1",
                         "clean mug 1 with sinkbasin 1", "go to fridge 1", "open fridge 1",
                         "put mug 1 in/on fridge 1"])  # fmt: skip
    assert steps[3].observation.startswith("You clean the mug 1 using the sinkbasin 1.") and steps[-1].done
    cool = TextGameEnv(house({"type": "cool", "object": "mug", "target": "desk"}, KITCHEN))
    steps = play(cool, ["go to countertop 1", "take mug 1 from countertop 1", "go to fridge 1",
                        "cool mug 1 with fridge 1", "go to desk 1", "put mug 1 in/on desk 1"])  # fmt: skip
    assert steps[3].observation.startswith("You cool the mug 1 using the fridge 1.") and steps[-1].done

    look = TextGameEnv(house({"type": "look", "object": "book"}, {**KITCHEN, "shelf 1": ["book 1"]}))
    desk, early = play(look, ["go to desk 1", "use desklamp 1"])  # the lamp is on, but no book in hand
    assert desk.observation.startswith("You arrive at loc 2. On the desk 1, you see a desklamp 1.")
    assert early.observation.startswith("You turn on the desklamp 1.") and not early.done
    steps = play(look, ["go to shelf 1", "take book 1 from shelf 1"])
    assert not steps[-1].done  # the book in hand, but away from the lamp
    assert play(look, ["go to desk 1"])[-1].done and look.score()["success"] == 1.0

    two = TextGameEnv(house({"type": "two", "object": "apple", "target": "desk"},
                            {**KITCHEN, "fridge 1": ["apple 1", "apple 2"]}))  # fmt: skip
    first = [
        "go to fridge 1",
        "open fridge 1",
        "take apple 1 from fridge 1",
        "go to desk 1",
        "put apple 1 in/on desk 1",
    ]
    assert not play(two, first)[-1].done  # one apple is not two
    last = play(two, ["go to fridge 1", "take apple 2 from fridge 1", "go to desk 1", "put apple 2 in/on desk 1"])
    assert last[-1].done and two.score()["success"] == 1.0


def test_invalid_actions_step_limit_inventory_and_action_parsing():
    env = TextGameEnv(house({"type": "put", "object": "apple", "target": "desk"}, KITCHEN), max_steps=4)
    bad = env.step("fly to the moon")
    assert bad.observation.startswith("Nothing happens.\nActions: go to countertop 1,") and bad.reward == -1.0
    assert not bad.done and env.at is None
    assert env.step("<think>look around</think><action>Inventory.</action>").observation.startswith(
        "You are not carrying anything."
    )
    assert env.step("look").observation.startswith("You are in the middle of a room.")
    last = env.step("go to fridge 1")
    assert last.done and last.observation == "You arrive at loc 3. The fridge 1 is closed."  # step limit: no actions
    assert env.score() == {"reward": 0.0, "success": 0.0, "steps": 4.0, "invalid": 1}
    assert parse_action("  Go to   Fridge 1.\nmore") == "go to fridge 1"


def test_demonstrations_always_win_inside_the_step_limit_and_the_explorer_takes_longer():
    lengths = defaultdict(lambda: {"oracle": 0, "explorer": 0})
    for seed in (0, 1, 2):
        for demo in ("oracle", "explorer"):
            world = TextGameWorld(seed=seed, textgame=TextgameConfig(demo=demo))
            for ex in world.eval_set(n_per_level=12) + [world.example(i) for i in range(30)]:
                plan = world.demonstration(ex)
                env = world.make_env(ex)
                env.reset(ex)
                results = [env.step(a) for a in plan]
                assert results[-1].done and env.score()["success"] == 1.0 and env.invalid == 0
                lengths[ex.meta["house"]["task"]["type"]][demo] += len(plan)
    assert set(lengths) == set(TASK_TYPES)
    for task, total in lengths.items():
        assert total["explorer"] > total["oracle"], task


def test_examples_are_deterministic_by_seed_and_levels_are_task_types():
    a, b = TextGameWorld(seed=3), TextGameWorld(seed=3)
    assert [a.example(i) for i in range(5)] == [b.example(i) for i in range(5)]
    assert a.example(0) != TextGameWorld(seed=4).example(0)
    for level in a.levels:
        ex = a.eval_set([level], 2)[0]
        assert ex.meta["house"]["task"]["type"] == TASK_TYPES[level - 1] and ex.level == level
    with pytest.raises(ValueError, match="task types"):
        TextGameWorld(levels=[7])
    with pytest.raises(ValueError, match="demo"):
        TextgameConfig(demo="teacher")


def test_train_and_eval_households_are_disjoint():
    world = TextGameWorld(seed=0)
    train = [world.example(i) for i in range(300)]
    evals = world.eval_set(n_per_level=20)
    keys = lambda exs: {json.dumps(ex.meta["house"], sort_keys=True) for ex in exs}  # noqa: E731
    assert not keys(train) & keys(evals)
    assert {household_split(ex.meta["house"]) for ex in train} == {"train"}
    assert {household_split(ex.meta["house"]) for ex in evals} == {"eval"}
    assert len(keys(train)) == 300


def test_house_style_skews_where_objects_are_as_configured():
    for seed in (0, 1):
        style, world = house_style(seed), TextGameWorld(seed=seed)
        where: dict[str, Counter] = defaultdict(Counter)
        for i in range(400):
            ex = world.example(i)
            for receptacle, objs in ex.meta["house"]["contents"].items():
                for obj in objs:
                    where[obj.rsplit(" ", 1)[0]][receptacle.rsplit(" ", 1)[0]] += 1
        share = sum(where[t][style[t]] for t in OBJECTS) / sum(sum(c.values()) for c in where.values())
        assert 0.6 < share < 0.8  # data.textgame.style = 0.7 (less what full receptacles push elsewhere)
        for obj_type, counts in where.items():
            assert counts.most_common(1)[0][0] == style[obj_type], obj_type
            assert counts[style[obj_type]] / sum(counts.values()) > 0.5
    assert house_style(0) != house_style(1)
    no_style = TextGameWorld(seed=0, textgame=TextgameConfig(style=0.0))
    style = house_style(0)
    homes = [no_style.example(i).meta["house"]["contents"] for i in range(100)]
    placed = [r.rsplit(" ", 1)[0] == style[o.rsplit(" ", 1)[0]] for c in homes for r, objs in c.items() for o in objs]
    assert sum(placed) / len(placed) < 0.05  # style 0: only when the other receptacles are full


def test_window_step_prompts_fit_the_student_context():
    model, tok = load_model("student")
    context = model.config.max_position_embeddings
    renderer = WindowRenderer(tok, history=1)
    world, longest, turn = TextGameWorld(seed=0), 0, 0
    for ex in world.eval_set(n_per_level=8):
        for plan in (oracle_plan(ex.meta["house"]), explore_plan(ex.meta["house"], random.Random(ex.meta["uid"]))):
            env = world.make_env(ex)
            first, seen = env.reset(ex), []
            longest = max(longest, len(renderer.window(first, seen, env.task)))
            later = tok.decode(renderer.window(first, [(plan[0], "ok")], env.task))
            assert env.task in later and "Looking quickly around" not in later  # from step 2: the task alone
            for action in plan:
                seen.append((action, env.step(action).observation))
                longest = max(longest, len(renderer.window(first, seen, env.task)))
                turn = max(turn, len(tok(action)["input_ids"]) + 1)
    assert longest + turn < context, (longest, turn)


def test_eval_on_textgame_runs_and_prints_success_and_steps(capsys):
    code = main(["eval", "--model", "student", "--data", "world:textgame", "--n", "1", "--levels", "1,6",
                 "rollout.turns.context=window", "rollout.turns.history=1", "rollout.turns.max_turns=3",
                 "rollout.turns.max_turn_tokens=16", "rollout.turns.max_obs_tokens=400"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == 2.0 and 0.0 <= summary["success"] <= 1.0 and summary["steps"] >= 1.0
    assert {"success/put", "success/two", "invalid_rate", "steps_won"} <= set(summary)


WINDOW = ["rollout.turns.context=window", "rollout.turns.history=1", "rollout.turns.max_turns=20",
          "rollout.turns.max_turn_tokens=40", "rollout.turns.max_episode_tokens=800",
          "rollout.turns.max_obs_tokens=400"]  # fmt: skip


@pytest.mark.parametrize("demo", ["oracle", "explorer"])
def test_sft_plays_demonstrations_in_window_mode_one_row_per_step(quick_config, demo):
    from reasonrl.trainer import Trainer

    overrides = ["algo.name=sft", "model.path=student", "data.train=world:textgame", "data.levels=[1,2,3,4,5,6]",
                 f"data.textgame.demo={demo}", "train.prompts_per_step=6", *WINDOW]  # fmt: skip
    trainer = Trainer(quick_config(*overrides))
    batch = trainer.algo.gather(trainer.ctx)
    assert batch.metrics["episodes/stop_reason/done"] == 1.0 and batch.metrics["episodes/success"] == 1.0
    rows = batch.tensors["completion_mask"].shape[0]
    assert rows == round(6 * batch.metrics["turns/mean"])  # one row per step
    assert batch.metrics["episodes/invalid"] == 0.0


def test_demo_mistakes_are_repeated_commands_that_do_nothing_and_the_plan_still_wins():
    from reasonrl.rollout.episodes import Untrained

    mistakes = 0
    for demo in ("oracle", "explorer"):
        world = TextGameWorld(seed=1, textgame=TextgameConfig(demo=demo, demo_mistakes=0.3))
        for ex in [world.example(i) for i in range(40)]:
            plan = world.demonstration(ex)
            assert plan == world.demonstration(ex)  # deterministic by example
            env = world.make_env(ex)
            env.reset(ex)
            for k, action in enumerate(plan):
                result = env.step(action)
                untrained = isinstance(action, Untrained)
                assert result.info["invalid"] == untrained and (not untrained or action == plan[k - 1])
                mistakes += untrained
            assert result.done and env.score()["success"] == 1.0 and len(plan) <= world.cfg.max_steps
            clean = TextGameWorld(seed=1, textgame=TextgameConfig(demo=demo)).demonstration(ex)
            assert [a for a in plan if not isinstance(a, Untrained)] == clean
    assert 40 < mistakes < 0.3 * 80 * 20


def test_sft_weighs_turns_by_their_first_word_and_never_trains_on_mistakes(quick_config):
    from reasonrl.trainer import Trainer

    overrides = ["algo.name=sft", "model.path=student", "data.train=world:textgame", "data.levels=[1,2,3,4,5,6]",
                 "data.textgame.demo=explorer", "data.textgame.demo_mistakes=0.3", "train.prompts_per_step=6",
                 *WINDOW]  # fmt: skip
    trainer = Trainer(quick_config(*overrides))
    trainer.algo.cfg.turn_weights = {"take": 3.0, "put": 0.5}
    batch = trainer.algo.gather(trainer.ctx)
    mask = batch.tensors["completion_mask"]
    width = mask.shape[1]
    weight_of = Counter()
    for ids, real, row in zip(batch.tensors["input_ids"], batch.tensors["attention_mask"], mask):
        command = trainer.tokenizer.decode(ids[-width:][real[-width:].bool()], skip_special_tokens=True).split()
        weights = {float(w) for w in row[real[-width:].bool()]}  # one weight over the whole turn, EOS included
        assert len(weights) == 1
        weight_of[(command[0], weights.pop())] += 1
    verbs = {verb for verb, _ in weight_of}
    for verb, weight in weight_of:
        assert weight in (0.0, {"take": 3.0, "put": 0.5}.get(verb, 1.0)), (verb, weight)
    assert weight_of["take", 3.0] >= 6 and weight_of["put", 0.5] >= 6 and {"go", "open"} <= verbs
    assert sum(n for (_, w), n in weight_of.items() if w == 0.0) > 0  # the injected mistakes: never trained
    assert batch.totals["num_tokens"] == pytest.approx(float(mask.sum()))  # the loss is the weighted token mean
    assert batch.metrics["num_tokens"] == float((mask != 0).sum())  # the count of trained tokens, unweighted
