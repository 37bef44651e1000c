"""The kb student: its tokenizer (built deterministically, search tags as single tokens, a name tokenised the same
wherever it stands), turns that stop at `</search>` / `</answer>` with the chat layout kept token for token, and the
shipped checkpoint loads small with that tokenizer."""

import pytest
import torch

from reasonrl.config import KBConfig, TurnLimits
from reasonrl.envs.render import ChatRenderer, InlineRenderer, make_renderer, tag_stop_ids
from reasonrl.models import ASSETS, SEARCH_TAGS, THINK_TAGS, arith_tokenizer, kb_tokenizer, load_model
from reasonrl.rollout.episodes import play_demonstrations
from reasonrl.worlds.kb import KBWorld


@pytest.fixture(scope="module")
def tok():
    return kb_tokenizer()


def single_tokens(tokenizer, text: str) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_kb_tokenizer_is_deterministic_and_has_the_tags_as_single_tokens(tok):
    again = kb_tokenizer()
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    for tag in THINK_TAGS + SEARCH_TAGS:
        assert single_tokens(tok, tag) == [tag]
    text = "<search>Bamek Parik</search><information>Bamek Parik: birthplace Cavel.</information><answer>Cavel</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == text  # the tags survive decoding that skips specials
    assert len(ids) < 30  # ~one token per word, where the arith tokenizer needs about one per character


def test_a_name_has_the_same_tokens_in_a_question_a_query_and_a_document(tok):
    name = single_tokens(tok, "Gevomek Tobos")
    assert single_tokens(tok, "<search>Gevomek Tobos</search>")[1:-1] == name
    question = single_tokens(tok, "Who is the founder of Gevomek Tobos?")
    assert question[-len(name) - 1 : -1] == name
    assert single_tokens(tok, "spouse Cavel.")[2:-1] == single_tokens(tok, "Cavel")


def test_turns_stop_at_the_action_tags_only_when_the_tokenizer_has_them(tok):
    stops = tag_stop_ids(tok)
    assert tok.convert_ids_to_tokens(stops) == ["</search>", "</answer>"]
    assert set(stops) <= make_renderer(tok, TurnLimits(renderer="inline")).stop_ids
    assert set(stops) <= make_renderer(tok, TurnLimits(renderer="chat")).stop_ids
    arith = arith_tokenizer()
    assert tag_stop_ids(arith) == [] and make_renderer(arith, TurnLimits()).stop_ids == {arith.eos_token_id}


def test_chat_episodes_stopped_at_tags_are_the_templates_rendering_token_for_token(tok):
    world = KBWorld(levels=[0, 1, 2, 3], kb=KBConfig(train_split="sft", over_search=0.5))
    examples = [world.example(i) for i in range(8)]
    limits = TurnLimits()
    episodes = play_demonstrations(world, examples, ChatRenderer(tok, stop_ids=tag_stop_ids(tok)), tok, limits, 512)
    for ex, ep in zip(examples, episodes):
        assert ep.stop_reason == "done" and ep.score["em"] == 1.0
        actions = world.demonstration(ex)
        assert [tok.decode(ep.tokens[slice(*t.span)]) for t in ep.turns] == actions  # each turn ends at its tag
        messages = [{"role": "user", "content": ex.prompt}]
        for turn in ep.turns:
            messages.append({"role": "assistant", "content": turn.action})
            if turn.observation:
                messages.append({"role": "user", "content": turn.observation})
        full = tok.apply_chat_template(messages, tokenize=False).removesuffix("<|im_end|>\n")  # the answer stopped
        assert ep.prompt_ids + ep.tokens == tok(full, add_special_tokens=False)["input_ids"]
    inline = play_demonstrations(world, examples[:2], InlineRenderer(tok, stop_ids=tag_stop_ids(tok)), tok, limits)
    assert tok.eos_token_id not in inline[0].tokens + inline[1].tokens


def test_scratch_models_name_their_tokenizer():
    model, tokenizer = load_model("scratch:nano:kb", device="cpu")
    assert model.config.vocab_size == len(tokenizer) and tag_stop_ids(tokenizer)
    with pytest.raises(ValueError, match="unknown tokenizer 'wiki'"):
        load_model("scratch:nano:wiki", device="cpu")


def test_the_shipped_kb_student_loads_small_with_the_kb_tokenizer(tok):
    model, tokenizer = load_model("kb_student", device="cpu")
    assert model.config.model_type == "llama" and model.config.max_position_embeddings == 512
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert (ASSETS / "kb_student" / "model.safetensors").stat().st_size < 5_000_000
    assert tokenizer.get_vocab() == tok.get_vocab()  # reproducible from models.kb_tokenizer
    for tag in SEARCH_TAGS:
        assert single_tokens(tokenizer, tag) == [tag]
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of Aldera?"}], add_generation_prompt=True, return_dict=False
    )
    with torch.no_grad():
        logits = model(torch.tensor([list(ids)])).logits[0, -1]
    assert tokenizer.convert_ids_to_tokens(int(logits.argmax())) in ("<search>", "<answer>")  # it acts at once
