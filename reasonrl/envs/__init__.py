"""Multi-turn environments (base.py) and the renderers that turn their text into tokens (render.py)."""

from reasonrl.envs.base import Env, StepResult
from reasonrl.envs.render import ChatRenderer, InlineRenderer, Renderer, WindowRenderer, cut_middle, make_renderer

__all__ = [
    "ChatRenderer",
    "Env",
    "InlineRenderer",
    "Renderer",
    "StepResult",
    "WindowRenderer",
    "cut_middle",
    "make_renderer",
]
