"""Tokenizer and models round-trip through the standard Hugging Face format; prompts follow the chat template."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from reasonrl.models import decode_completion, encode_completion, encode_prompt, load_model
from reasonrl.worlds.arith import ArithWorld


def test_tokenizer_reloads_with_identical_ids_and_lossless_decoding(nano_dir):
    tok = AutoTokenizer.from_pretrained(nano_dir)
    example = ArithWorld(levels=[4]).example(0)
    ids = encode_completion(tok, example.solution)
    assert ids[-1] == tok.eos_token_id
    assert decode_completion(tok, ids) == example.solution  # spaces, newlines and think tags survive
    assert len(tok.convert_ids_to_tokens(tok.encode("<think>", add_special_tokens=False))) == 1
    digits = tok.convert_ids_to_tokens(tok.encode("12345", add_special_tokens=False))
    assert digits == list("12345")  # one token per digit keeps columns aligned


def test_prompt_goes_through_the_chat_template(nano_dir):
    tok = AutoTokenizer.from_pretrained(nano_dir)
    text = tok.decode(encode_prompt(tok, "Compute 1+2.", system_prompt="Be brief."))
    assert (
        text
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCompute 1+2.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_model_directory_without_chat_template_uses_plain_text(nano_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(nano_dir)
    tok.chat_template = None
    ids = encode_prompt(tok, [{"role": "user", "content": "Compute 1+2."}])
    assert tok.decode(ids, skip_special_tokens=True) == "Compute 1+2.\n"


def test_loaded_model_matches_the_saved_one(nano_dir):
    model, tok = load_model(str(nano_dir))
    again = AutoModelForCausalLM.from_pretrained(nano_dir)
    ids = torch.tensor([encode_prompt(tok, "Compute 3+4.")])
    torch.testing.assert_close(model(ids).logits, again(ids).logits)
    assert model.config.model_type == "llama" and tok.padding_side == "left"


def test_any_local_causal_lm_directory_loads_without_a_chat_template(tmp_path, nano_dir):
    tok = AutoTokenizer.from_pretrained(nano_dir)
    tok.chat_template = None
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, loaded = load_model(str(tmp_path))
    assert not loaded.chat_template
    assert sum(p.numel() for p in model.parameters()) < 50_000
