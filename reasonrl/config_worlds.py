"""The options of the embedded worlds and their retriever: `data.retriever`, `data.kb` and `data.textgame`.

A leaf split off config.py (which imports these back, so `from reasonrl.config import TextgameConfig` works); it
imports nothing of reasonrl.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class RetrieverConfig:
    """data.retriever: what search episodes retrieve from (reasonrl/retrieval/, docs/kb.md). With `corpus` or `url`
    set, a QA file (data.train / data.eval) is played as search episodes; world:kb searches its own corpus."""

    corpus: str | None = None  # a corpus JSONL (id, contents = "title\ntext"), searched with BM25 (bm25s)
    url: str | None = None  # a Search-R1 retrieval server's /retrieve endpoint, e.g. http://127.0.0.1:8000/retrieve
    topk: int = 0  # documents per search; 0: the source's default (world:kb 1, QA files 3 as in Search-R1)
    timeout: float = 10.0  # seconds per request to `url`; a timeout is an observation for the agent, not a crash

    def __post_init__(self) -> None:
        if self.corpus and self.url:
            raise ValueError(
                "data.retriever: set corpus (BM25 over a JSONL file) or url (a /retrieve server), not both"
            )
        if self.url:
            url = urlsplit(self.url)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ValueError(
                    f"data.retriever.url={self.url!r} is not an http(s) URL such as http://127.0.0.1:8000/retrieve"
                )
        if self.topk < 0 or not self.timeout > 0:
            raise ValueError(
                f"data.retriever needs topk >= 0 and timeout > 0, got topk={self.topk}, timeout={self.timeout}"
            )


@dataclass
class KBConfig:
    """data.kb: options of the kb world (reasonrl/worlds/kb.py, docs/kb.md)."""

    train_split: str = "rl"  # training questions: rl (a fixed shard of entities) | sft (fresh entities per example)
    over_search: float = 0.0  # share of demonstrations with one unneeded search (a repeat, the answer, a known hop)
    # self-play cold start (worlds/kb_selfplay.py, docs/piplay.md): shares of training examples that are examiner
    # demonstrations (a random walk, then its templated question) and student demonstrations with the privileged
    # question-construction path in the prompt; the rest are the plain student demonstrations
    examiner_demos: float = 0.0
    privileged_demos: float = 0.0

    def __post_init__(self) -> None:
        if self.train_split not in ("rl", "sft"):
            raise ValueError(f"data.kb.train_split={self.train_split!r}; choose rl or sft")
        if not 0 <= self.over_search <= 1:
            raise ValueError(f"data.kb.over_search must be in [0, 1], got {self.over_search}")
        if min(self.examiner_demos, self.privileged_demos) < 0 or self.examiner_demos + self.privileged_demos > 1:
            raise ValueError(
                f"data.kb.examiner_demos and privileged_demos are shares: each >= 0, their sum <= 1, got "
                f"{self.examiner_demos}, {self.privileged_demos}"
            )


@dataclass
class TextgameConfig:
    """data.textgame: options of the textgame world (reasonrl/worlds/textgame.py, docs/textgame.md)."""

    demo: str = "oracle"  # demonstrations: oracle (knows where objects are) | explorer (searches receptacles)
    max_steps: int = 20  # env steps per episode (ALFWorld's env.max_steps; the paper uses 50)
    style: float = 0.7  # share of objects put in their type's preferred receptacle type (the hidden house style)
    invalid_penalty: float = 1.0  # turn reward of an action that is not admissible
    # every prompt carries D2Skill's skills block ("No relevant skills found." when the example has no skills), so a
    # student sees the skill-bank template from its first SFT step on
    skills_block: bool = False
    # share of train examples whose prompts hold a correct step skill from the house style ("When looking for a
    # apple, check the countertop first") and whose explorer demonstration follows it; needs skills_block
    skill_demos: float = 0.0
    # chance, per demonstration step, of a mistake first: the previous command repeated (no longer admissible, so
    # "Nothing happens."), played but never trained on. A student then sees how an expert goes on after an invalid
    # step instead of only ever seeing perfect histories (and looping after its own first mistake)
    demo_mistakes: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.demo_mistakes < 1:
            raise ValueError(f"data.textgame.demo_mistakes must be in [0, 1), got {self.demo_mistakes}")
        if self.demo not in ("oracle", "explorer"):
            raise ValueError(f"data.textgame.demo={self.demo!r}; choose oracle or explorer")
        if not 0 <= self.skill_demos <= 1:
            raise ValueError(f"data.textgame.skill_demos must be in [0, 1], got {self.skill_demos}")
        if self.skill_demos and not self.skills_block:
            raise ValueError(
                f"data.textgame.skill_demos={self.skill_demos} needs data.textgame.skills_block=true: prompts with "
                f"and without a skill must share one template"
            )
        if self.max_steps < 1:
            raise ValueError(f"data.textgame.max_steps must be >= 1, got {self.max_steps}")
        if not 0 <= self.style <= 1:
            raise ValueError(f"data.textgame.style must be in [0, 1], got {self.style}")


@dataclass
class VisarithConfig:
    """data.visarith: how the visarith world draws its expressions (reasonrl/worlds/visarith.py, docs/vlm.md). Every
    knob is a perception difficulty; `rendering=hard` multiplies them for the out-of-distribution split."""

    image_size: int = 64  # square RGB images, side in pixels
    scale: int = 2  # pixels per cell of the 3x5 bitmap font (glyphs 3*scale x 5*scale, pitch 3*scale + 2)
    position: str = "random"  # random: anywhere the text fits | grid: x and y on multiples of the glyph pitch
    jitter: int = 1  # per-glyph random offset, up to this many pixels in x and y
    dropout: float = 0.03  # probability that a lit font cell (a stroke piece) is left out
    noise: float = 0.15  # uniform pixel noise, up to this share of 255, per channel
    clutter: int = 1  # short random ink strokes
    colours: bool = True  # random dark ink on a random light background (False: black on white)
    caption_noise: float = 0.0  # probability that the caption has one digit changed (a bad captioner)
    prompt: str = "image"  # image | caption (the text-only caption prompt) | mix (each example one of the two, seeded)
    rendering: str = "normal"  # normal | hard: the OOD rendering (3x dropout, 2x noise, +2 clutter, +1 jitter)

    def __post_init__(self) -> None:
        if self.position not in ("random", "grid"):
            raise ValueError(f"data.visarith.position={self.position!r}; choose random or grid")
        if self.prompt not in ("image", "caption", "mix"):
            raise ValueError(f"data.visarith.prompt={self.prompt!r}; choose image, caption or mix")
        if self.rendering not in ("normal", "hard"):
            raise ValueError(f"data.visarith.rendering={self.rendering!r}; choose normal or hard")
        for name in ("dropout", "noise", "caption_noise"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"data.visarith.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.scale < 1 or self.jitter < 0 or self.clutter < 0 or self.image_size < 8:
            raise ValueError(
                f"data.visarith needs scale >= 1, jitter >= 0, clutter >= 0 and image_size >= 8, got {self.scale}, "
                f"{self.jitter}, {self.clutter}, {self.image_size}"
            )
