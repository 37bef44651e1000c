"""Offline datasets of `reasonrl control`: D4RL's flat layout in memory, read from npz, D4RL HDF5 or Minari.

In memory (and in our .npz files) a dataset is D4RL's flat layout, one row per transition, episodes back to back:
    observations (N, obs_dim)   actions (N, act_dim), in the environment's units   rewards (N,), the true reward
    next_observations (N, obs_dim)   terminals (N,) the step ended its episode by termination
    timeouts (N,) the step ended its episode by truncation (a time limit, or the end of collection)
plus `env_id` (a 0-d string) when known. An episode ends at a row with a terminal or a timeout, and at the last row.
`next_observations` may be missing from users' files: it is then the next row's observation within the episode, and
the last row of a truncated episode has no known successor (`has_next` is false there; IQL never samples it).
Readers: `.npz` (ours, or anyone's with these keys), `.hdf5`/`.h5` (D4RL's files: the same keys at the root), a
Minari dataset directory or `minari:DATASET_ID` (a dataset in the local MINARI_DATASETS_PATH; never downloaded).
D4RL-style normalised scores use D4RL's reference returns (Fu et al. 2020, d4rl/infos.py, the random and expert
returns of the v2 locomotion tasks); on gymnasium's v5 tasks they are a close but not exact reference.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
# D4RL's REF_MIN_SCORE / REF_MAX_SCORE (random and expert policy returns) per locomotion task
D4RL_REFERENCE_RETURNS = {
    "Hopper": (-20.272305, 3234.3),
    "HalfCheetah": (-280.178953, 12135.0),
    "Walker2d": (1.629008, 4592.3),
}


@dataclass
class OfflineDataset:
    """Transitions in D4RL's flat layout (module docstring); arrays of equal length N."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    has_next: np.ndarray
    env_id: str | None = None

    def __len__(self) -> int:
        return len(self.rewards)

    def episode_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) of the episodes, ends exclusive."""
        ends = np.flatnonzero(self.terminals | self.timeouts) + 1
        if not len(ends) or ends[-1] != len(self):
            ends = np.append(ends, len(self))
        return np.concatenate([[0], ends[:-1]]), ends

    def episode_returns(self, rewards: np.ndarray | None = None) -> np.ndarray:
        """Each episode's return of `rewards` (default: the true reward)."""
        starts, _ = self.episode_bounds()
        return np.add.reduceat(self.rewards if rewards is None else rewards, starts)

    def save_npz(self, path: str | Path) -> Path:
        """Write the D4RL keys (+ next_observations, env_id) to `path` (.npz), uncompressed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {k: getattr(self, k) for k in (*REQUIRED_KEYS, "next_observations")}
        if self.env_id is not None:
            arrays["env_id"] = np.array(self.env_id)
        np.savez(path, **arrays)
        return path

    @staticmethod
    def concatenate(parts: list[OfflineDataset]) -> OfflineDataset:
        """The parts' episodes back to back (D4RL's medium-expert is medium then expert)."""
        fields = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts", "has_next")
        arrays = {k: np.concatenate([getattr(p, k) for p in parts]) for k in fields}
        for part in parts[:-1]:  # keep each part's last episode ended
            if not (part.terminals[-1] or part.timeouts[-1]):
                raise ValueError("every part must end with an ended episode (a terminal or a timeout)")
        return OfflineDataset(**arrays, env_id=parts[0].env_id)


def from_arrays(arrays: dict[str, np.ndarray], source: str, env_id: str | None = None) -> OfflineDataset:
    """Check D4RL-style arrays and build the dataset; errors name `source` and the problem."""
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise ValueError(
            f"{source}: missing key(s) {', '.join(missing)}; an offline dataset needs "
            f"{', '.join(REQUIRED_KEYS)} (next_observations optional), as in D4RL"
        )
    obs = np.asarray(arrays["observations"], np.float32)
    n = len(obs)
    if obs.ndim != 2 or n == 0:
        raise ValueError(f"{source}: observations must be a non-empty (N, obs_dim) array, got shape {obs.shape}")
    flat = {k: np.asarray(arrays[k]).reshape(len(arrays[k]), -1) for k in ("rewards", "terminals", "timeouts")}
    for key in ("actions", *flat):
        if len(arrays[key]) != n:
            raise ValueError(f"{source}: {key} has {len(arrays[key])} rows, observations {n}")
    for key, value in flat.items():
        if value.shape[1] != 1:
            raise ValueError(f"{source}: {key} must hold one value per row, got shape {np.shape(arrays[key])}")
    actions = np.asarray(arrays["actions"], np.float32).reshape(n, -1)
    terminals, timeouts = flat["terminals"][:, 0].astype(bool), flat["timeouts"][:, 0].astype(bool)
    if "next_observations" in arrays:
        next_obs = np.asarray(arrays["next_observations"], np.float32)
        if next_obs.shape != obs.shape:
            raise ValueError(f"{source}: next_observations has shape {next_obs.shape}, observations {obs.shape}")
        has_next = np.ones(n, bool)
    else:  # the next row within the episode; unknown after the last row of a truncated episode
        ended = terminals | timeouts
        ended[-1] = True
        next_obs = np.concatenate([obs[1:], obs[-1:]])
        next_obs[ended] = obs[ended]
        has_next = ~ended | terminals
    for key, value in (("observations", obs), ("actions", actions), ("rewards", flat["rewards"])):
        if not np.isfinite(value).all():
            raise ValueError(f"{source}: {key} holds NaN or infinite values")
    return OfflineDataset(
        obs, actions, flat["rewards"][:, 0].astype(np.float32), next_obs, terminals, timeouts, has_next, env_id
    )


def load_offline_dataset(path: str | Path) -> OfflineDataset:
    """Read a dataset from .npz, D4RL .hdf5/.h5, a Minari dataset directory, or `minari:DATASET_ID`."""
    text = str(path)
    if text.startswith("minari:"):
        return _load_minari(text.removeprefix("minari:"), text)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data.path={text}: no such file or directory")
    if path.is_dir():
        return _load_minari(path, text)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError) as e:
            raise ValueError(f"{text}: not a readable .npz file ({e})") from e
        env_id = str(arrays.pop("env_id")) if "env_id" in arrays else None
        return from_arrays(arrays, text, env_id)
    if path.suffix in (".hdf5", ".h5"):
        h5py = _require("h5py", "h5py")
        try:
            with h5py.File(path, "r") as f:
                arrays = {k: f[k][()] for k in (*REQUIRED_KEYS, "next_observations") if k in f}
        except OSError as e:
            raise ValueError(f"{text}: not a readable HDF5 file ({e})") from e
        return from_arrays(arrays, text)
    raise ValueError(f"data.path={text}: expected a .npz, .hdf5 or .h5 file, a Minari dataset directory or minari:ID")


def _load_minari(where: str | Path, source: str) -> OfflineDataset:
    """Episodes of a Minari dataset, flattened to D4RL's layout (Minari stores T+1 observations per episode)."""
    minari = _require("minari", "minari[hdf5]")
    try:
        if isinstance(where, Path):
            data_dir = where / "data" if (where / "data").is_dir() else where
            dataset = minari.MinariDataset(data_dir)
        else:
            dataset = minari.load_dataset(where, download=False)
    except Exception as e:  # minari raises several types for a missing or malformed dataset
        raise ValueError(f"{source}: not a readable Minari dataset ({type(e).__name__}: {e})") from e
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("observations", "next_observations", "actions", "rewards")}
    parts |= {"terminals": [], "timeouts": []}
    for episode in dataset.iterate_episodes():
        obs = np.asarray(episode.observations)
        if obs.dtype == object or obs.ndim != 2:
            raise ValueError(f"{source}: episode {episode.id} has dict or image observations; a flat vector is needed")
        timeouts = np.asarray(episode.truncations, bool).copy()
        timeouts[-1] |= not episode.terminations[-1]  # an episode stored without either flag still ends here
        parts["observations"].append(obs[:-1])
        parts["next_observations"].append(obs[1:])
        parts["actions"].append(np.asarray(episode.actions).reshape(len(obs) - 1, -1))
        parts["rewards"].append(np.asarray(episode.rewards))
        parts["terminals"].append(np.asarray(episode.terminations, bool))
        parts["timeouts"].append(timeouts)
    if not parts["rewards"]:
        raise ValueError(f"{source}: the Minari dataset has no episodes")
    env_spec = dataset.spec.env_spec
    return from_arrays({k: np.concatenate(v) for k, v in parts.items()}, source, env_spec.id if env_spec else None)


def write_minari(dataset: OfflineDataset, root: str | Path, dataset_id: str, env, description: str) -> Path:
    """Store `dataset` as the Minari dataset `dataset_id` under `root` (used as MINARI_DATASETS_PATH)."""
    minari = _require("minari", "minari[hdf5]")
    from minari.data_collector import EpisodeBuffer

    starts, ends = dataset.episode_bounds()
    buffers = []
    for start, end in zip(starts, ends):
        obs = np.concatenate([dataset.observations[start:end], dataset.next_observations[end - 1 : end]])
        buffers.append(
            EpisodeBuffer(
                observations=obs,
                actions=dataset.actions[start:end],
                rewards=dataset.rewards[start:end],
                terminations=dataset.terminals[start:end],
                truncations=dataset.timeouts[start:end],
                infos={},
            )
        )
    family = reference_family(dataset.env_id)
    ref = D4RL_REFERENCE_RETURNS.get(family) if family else None
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(Path(root).resolve())
    try:
        created = minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=buffers,
            env=env,
            eval_env=env,
            algorithm_name="reasonrl control collect",
            author="reasonrl",
            author_email="none",
            code_permalink="reasonrl/control/collect.py",
            description=description,
            ref_min_score=ref[0] if ref else None,
            ref_max_score=ref[1] if ref else None,
        )
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH")
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
    return Path(created.storage.data_path).parent


def reference_family(env_id: str | None) -> str | None:
    """The D4RL task whose reference returns apply to `env_id` (Hopper-v5 -> Hopper), or None."""
    if env_id is None:
        return None
    name = env_id.split("-")[0]
    return name if name in D4RL_REFERENCE_RETURNS else None


def normalized_score(env_id: str | None, episode_return: float) -> float | None:
    """D4RL's normalised score 100 × (return - random) / (expert - random), or None for other tasks."""
    family = reference_family(env_id)
    if family is None:
        return None
    random_return, expert_return = D4RL_REFERENCE_RETURNS[family]
    return 100.0 * (episode_return - random_return) / (expert_return - random_return)


def dataset_summary(dataset: OfflineDataset) -> dict:
    """Episodes, transitions and true-return statistics (what `collect` prints and runs log)."""
    returns = dataset.episode_returns()
    return {
        "env_id": dataset.env_id,
        "transitions": len(dataset),
        "episodes": len(returns),
        "return_mean": float(returns.mean()),
        "return_max": float(returns.max()),
        "return_min": float(returns.min()),
        "normalized_score_mean": normalized_score(dataset.env_id, float(returns.mean())),
    }


def _require(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"reading this dataset needs {module}: pip install '{package}'") from e


@dataclass
class TrainingData:
    """What offline agents train on, one row per transition: observations standardised with the dataset's mean and
    std, actions rescaled to [-1, 1], the training reward (learned or true), and each row's episode bookkeeping."""

    obs: np.ndarray
    next_obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    has_next: np.ndarray
    episode_start: np.ndarray  # the first row of the row's episode
    timestep: np.ndarray  # the row's step within its episode
    returns_to_go: np.ndarray  # Σ of the training reward from the row to its episode's end (undiscounted)
    episode_returns: np.ndarray  # the training reward's return of every episode
    obs_mean: np.ndarray
    obs_std: np.ndarray

    def normalize_obs(self, obs: np.ndarray) -> np.ndarray:
        return ((obs - self.obs_mean) / self.obs_std).astype(np.float32)


def training_data(dataset: OfflineDataset, rewards: np.ndarray, low: np.ndarray, high: np.ndarray) -> TrainingData:
    """Standardise, rescale and index `dataset` with `rewards` (N,) as the training reward."""
    starts, ends = dataset.episode_bounds()
    lengths = ends - starts
    episode_start = np.repeat(starts, lengths)
    timestep = np.arange(len(dataset)) - episode_start
    cumulative = np.concatenate([[0.0], np.cumsum(rewards, dtype=np.float64)])
    episode_end = np.repeat(ends, lengths)
    returns_to_go = cumulative[episode_end] - cumulative[np.arange(len(dataset))]
    mean = dataset.observations.mean(0)
    std = dataset.observations.std(0) + 1e-6
    actions = np.clip(2.0 * (dataset.actions - low) / (high - low) - 1.0, -1.0, 1.0)
    return TrainingData(
        obs=((dataset.observations - mean) / std).astype(np.float32),
        next_obs=((dataset.next_observations - mean) / std).astype(np.float32),
        actions=actions.astype(np.float32),
        rewards=np.asarray(rewards, np.float32),
        terminals=dataset.terminals.astype(np.float32),
        has_next=dataset.has_next,
        episode_start=episode_start,
        timestep=timestep,
        returns_to_go=returns_to_go.astype(np.float32),
        episode_returns=(cumulative[ends] - cumulative[starts]).astype(np.float32),
        obs_mean=mean.astype(np.float32),
        obs_std=std.astype(np.float32),
    )
