"""Prompt modes: a tokenizer's chat template with an assistant prefix after the generation prompt.

`plain` adds nothing, `think` opens the think block (`<think>\\n`, always reason) and `ellipsis` opens and fills it
(`<think>\\n...\\n`, AutoThink's prompt: the model may close it at once and answer directly). The edited template is
saved with the model, so every reasonrl path (train, eval, rollouts) prompts the same way.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

from reasonrl.models import load_tokenizer, resolve_model_path

PROMPT_PREFIXES = {"plain": "", "think": "<think>\n", "ellipsis": "<think>\n...\n"}
_MODE_MARK = "{#- reasonrl prompt mode -#}"  # where our suffix starts, so a new mode replaces the old one
_PROBE = [{"role": "user", "content": "x"}]


def prompt_mode_template(tokenizer, mode: str) -> str:
    """The tokenizer's chat template with the generation prompt followed by `PROMPT_PREFIXES[mode]`.

    Works for any template, since the generation prompt is what a template renders last. A template that already
    opens the think block (DeepSeek-R1's `<|Assistant|><think>\\n`) only gets the rest of the prefix.
    """
    if mode not in PROMPT_PREFIXES:
        raise ValueError(f"unknown prompt mode {mode!r}; choose one of {', '.join(PROMPT_PREFIXES)}")
    if not tokenizer.chat_template:
        raise ValueError("prompt modes need a tokenizer with a chat template")
    base = tokenizer.chat_template.split(_MODE_MARK)[0]
    rendered = tokenizer.apply_chat_template(_PROBE, chat_template=base, add_generation_prompt=True, tokenize=False)
    prefix = PROMPT_PREFIXES[mode]
    if prefix and rendered.endswith("<think>\n"):
        prefix = prefix.removeprefix("<think>\n")
    if not prefix:
        return base
    # A Jinja string expression, so the template engine's whitespace control cannot touch the newlines.
    literal = prefix.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"{base}{_MODE_MARK}{{% if add_generation_prompt %}}{{{{ '{literal}' }}}}{{% endif %}}"


def with_prompt_mode(tokenizer, mode: str):
    """A shallow copy of `tokenizer` (vocabulary shared) whose chat template prompts in `mode`."""
    out = copy.copy(tokenizer)
    out.chat_template = prompt_mode_template(tokenizer, mode)
    return out


def prompt_mode(tokenizer) -> str:
    """Which mode the tokenizer's template prompts in: ellipsis, think or plain."""
    rendered = tokenizer.apply_chat_template(_PROBE, add_generation_prompt=True, tokenize=False)
    return next((m for m in ("ellipsis", "think") if rendered.endswith(PROMPT_PREFIXES[m])), "plain")


def save_prompt_mode(model_dir: str, out_dir: str | Path, mode: str) -> Path:
    """Copy a model folder (or shipped name) with its chat template switched to `mode`, as the paper edits
    `tokenizer_config.json` before training; every reasonrl path (train, eval, rollouts) then prompts that way."""
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(resolve_model_path(model_dir), out)
    tokenizer = load_tokenizer(str(out))
    tokenizer.chat_template = prompt_mode_template(tokenizer, mode)
    tokenizer.save_pretrained(out)
    return out
