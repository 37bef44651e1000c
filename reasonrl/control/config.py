"""`reasonrl control`'s options: dataclasses, a YAML file and dotted overrides (`sac.lr=1e-3`), as on the LM side.

Sections: env (which task), sac (the agent, reasonrl/control/sac.py), pref (PEBBLE's preference learning; off unless
`pref.enabled=true`), feedback (who labels the queries: reasonrl/control/labellers.py, and RL-SaLLM-F's double-check
and self-augmentation: reasonrl/control/feedback.py) and train (budget, eval, checkpoints). Unknown keys are errors
that name the key.
`algo` picks the method: sac (online: SAC, or PEBBLE with pref.enabled) or an offline one on `data.path`: dtr, dt,
iql (offline_loop.py; their own sections dtr and iql; pref.enabled=true learns their reward from preferences).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from reasonrl.config_types import load_dataclass_config, plain
from reasonrl.control.dtr import DTRConfig
from reasonrl.control.iql import IQLConfig
from reasonrl.control.labellers import parse_labeller
from reasonrl.control.preferences import OBS_SLICES, TEACHERS
from reasonrl.control.sac import SACConfig

SAMPLING = ("uniform", "disagreement", "entropy")
ALGOS = ("sac", "dtr", "dt", "iql")
OFFLINE_ALGOS = ("dtr", "dt", "iql")


@dataclass
class EnvConfig:
    id: str = "Pendulum-v1"  # a gymnasium id (Hopper-v5, ...) or metaworld:TASK (metaworld:reach-v3)
    max_episode_steps: int | None = None  # None: the environment's own limit (Pendulum 200, MetaWorld 500)


@dataclass
class TeacherConfig:
    """pref.teacher: a named B-Pref teacher, each knob overridable (None: the named teacher's value)."""

    name: str = "oracle"  # oracle | stoch | mistake | skip | equal | myopic
    beta: float | None = None
    gamma: float | None = None
    eps_mistake: float | None = None
    eps_skip: float | None = None
    eps_equal: float | None = None

    def __post_init__(self) -> None:
        if self.name not in TEACHERS:
            raise ValueError(f"pref.teacher.name={self.name!r}; choose one of {', '.join(TEACHERS)}")


@dataclass
class PrefConfig:
    """PEBBLE: unsupervised pre-training, then a reward ensemble learned from scripted preferences."""

    enabled: bool = False  # false: SAC on the true reward
    unsup_steps: int = 9000  # state-entropy exploration steps after sac.learning_starts (PEBBLE); 0: none
    entropy_k: int = 5  # k of the k-nearest-neighbour state-entropy estimate
    segment: int = 50  # H: steps per segment (RL-SaLLM-F: 10)
    mb_size: int = 20  # queries per feedback round (`reward_batch`)
    feedback_interval: int = 5000  # environment steps between feedback rounds (`num_interact`)
    max_feedback: int = 1400  # total queries (labels) of the run
    schedule: str = "constant"  # constant | linear (mb_size decays linearly to 0 over train.steps)
    sampling: str = "uniform"  # uniform | disagreement | entropy
    large_batch: int = 10  # disagreement/entropy: candidates = large_batch × mb_size
    ensemble: int = 3
    hidden: int = 256
    layers: int = 3
    lr: float = 3e-4
    batch_size: int = 128
    epochs: int = 50  # passes over the preference buffer per feedback round (`reward_update`)
    use_action: bool = True  # reward on (state, action); false: state only (RL-SaLLM-F)
    obs_slice: str | None = None  # metaworld17: RL-SaLLM-F's 17-dim MetaWorld input; None: the whole observation
    reset_critic: bool = True  # PEBBLE: fresh critics when the learned reward first takes over
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # the B-Pref teacher of feedback.labeller=scripted

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLING:
            raise ValueError(f"pref.sampling={self.sampling!r}; choose one of {', '.join(SAMPLING)}")
        if self.schedule not in ("constant", "linear"):
            raise ValueError(f"pref.schedule={self.schedule!r}; choose constant or linear")
        if self.obs_slice is not None and self.obs_slice not in OBS_SLICES:
            raise ValueError(f"pref.obs_slice={self.obs_slice!r}; choose one of {', '.join(OBS_SLICES)} or null")
        if min(self.segment, self.mb_size, self.feedback_interval, self.max_feedback, self.ensemble) < 1:
            raise ValueError("pref.segment, mb_size, feedback_interval, max_feedback and ensemble must be >= 1")
        if self.unsup_steps < 0 or self.entropy_k < 1 or self.large_batch < 1 or self.epochs < 1:
            raise ValueError("pref.unsup_steps must be >= 0 and entropy_k, large_batch, epochs >= 1")


PrefConfig.RENAMED = {"double_check": "feedback.double_check"}


@dataclass
class FeedbackConfig:
    """Who labels PEBBLE's queries, and RL-SaLLM-F's two mechanisms around any labeller."""

    labeller: str = "scripted"  # scripted (pref.teacher) | openai:BASE_URL | hf:DIR | replay:FILE.jsonl
    double_check: bool = False  # ask each strict answer again, swapped; keep mirror-consistent labels only
    self_augment: bool = False  # an imagined better trajectory per label, preferred over the worse real segment
    record: bool = False  # every answer to RUN_DIR/labels.jsonl, which feedback.labeller=replay:FILE plays back
    goal: str | None = None  # text labellers: the task sentence ("open the drawer"); None: the built-in one
    model: str = ""  # openai: the model name the endpoint serves
    api_key_env: str = "OPENAI_API_KEY"  # openai: the key's environment variable (unset: "EMPTY", for local servers)
    timeout_s: float = 60.0  # openai: per request
    max_retries: int = 2  # openai: the client's retries of a failed request (with backoff; 429s honour Retry-After)
    requests_per_minute: float = 0.0  # openai: client-side rate limit; 0: none
    temperature: float = 0.0  # openai (RL-SaLLM-F: 0); hf decodes greedily
    max_tokens: int = 1000  # openai and hf: per answer (RL-SaLLM-F: 1000)

    def __post_init__(self) -> None:
        kind, _ = parse_labeller(self.labeller)
        if kind == "openai" and not self.model:
            raise ValueError("feedback.labeller=openai:URL needs feedback.model (the name the endpoint serves)")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.requests_per_minute < 0 or self.max_tokens < 1:
            raise ValueError(
                "feedback.timeout_s must be > 0, max_retries and requests_per_minute >= 0, max_tokens >= 1"
            )


@dataclass
class ControlTrainConfig:
    steps: int = 10_000  # environment steps
    seed: int = 0
    eval_every: int = 2000  # environment steps between evaluations (at the next episode end); 0: only at the end
    eval_episodes: int = 5
    save_every: int = 5000  # steps between checkpoints (at the next episode end); 0: only at the end
    keep_checkpoints: int = 2
    output_dir: str = "runs/control-{env}-{time}"
    progress: bool = True
    plots: bool = True  # RUN_DIR/plots/*.png at the end (reasonrl plot RUN_DIR draws them later too)
    log_every: int = 100  # offline algos: gradient steps per metrics record (evaluations and checkpoints join one)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.eval_episodes < 1 or self.keep_checkpoints < 1 or self.log_every < 1:
            raise ValueError("train.steps, eval_episodes, keep_checkpoints and log_every must be >= 1")
        if self.eval_every < 0 or self.save_every < 0:
            raise ValueError("train.eval_every and train.save_every must be >= 0")


@dataclass
class DataConfig:
    """The dataset of offline algos, and the preference labels of their learned reward (offline_reward.py)."""

    path: str | None = None  # .npz, D4RL .hdf5/.h5, a Minari dataset directory, or minari:DATASET_ID
    preferences: str | None = None  # a preference file (.npz); None: pref.teacher labels pref.max_feedback pairs
    zscore: bool = True  # DTR's ensemble normalisation (each member z-scored over the dataset); false: plain mean


@dataclass
class ControlConfig:
    algo: str = "sac"  # sac (online; PEBBLE with pref.enabled) | dtr | dt | iql (offline, on data.path)
    env: EnvConfig = field(default_factory=EnvConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    pref: PrefConfig = field(default_factory=PrefConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    train: ControlTrainConfig = field(default_factory=ControlTrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dtr: DTRConfig = field(default_factory=DTRConfig)
    iql: IQLConfig = field(default_factory=IQLConfig)

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"algo={self.algo!r}; choose one of {', '.join(ALGOS)}")
        if self.algo in OFFLINE_ALGOS and not self.data.path:
            raise ValueError(f"algo={self.algo} trains offline: set data.path (a dataset; docs/control.md)")


def load_control_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> ControlConfig:
    """The defaults, then the YAML file at `path`, then `key.path=value` overrides (values parsed as YAML)."""
    return load_dataclass_config(ControlConfig, path, overrides, "control")


def control_config_dict(cfg: ControlConfig) -> dict:
    return plain(cfg)
