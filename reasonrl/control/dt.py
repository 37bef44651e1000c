"""The Decision Transformer (Chen et al. 2021, arXiv 2106.01345): a small causal GPT over (R_t, s_t, a_t) tokens.

A window of K steps becomes 3K tokens R_1, s_1, a_1, ..., R_K, s_K, a_K: each modality has its own linear embedding,
a learned embedding of the step within the episode is added to all three (GPT-2's position embedding is dropped, as
in the DT code), then LayerNorm, dropout, pre-LN transformer blocks and a final LayerNorm. The action at step t is
predicted from the hidden state of the s_t token (it sees R_1..R_t, s_1..s_t and a_1..a_{t-1}), squashed by tanh.
Windows shorter than K (an episode's first steps) are left-padded: padded tokens are never attended to.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reasonrl.control.offline_data import TrainingData


class CausalSelfAttention(nn.Module):
    def __init__(self, embed: int, heads: int, dropout: float):
        super().__init__()
        if embed % heads:
            raise ValueError(f"dtr.embed={embed} must be divisible by dtr.heads={heads}")
        self.qkv = nn.Linear(embed, 3 * embed)
        self.proj = nn.Linear(embed, embed)
        self.heads, self.dropout = heads, dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x (B, T, C); allowed (B, 1, T, T) bool: which keys each query may attend to."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class Block(nn.Module):
    """A pre-LN GPT-2 block: x + attention(LN(x)), then x + MLP(LN(x)) with a 4× ReLU MLP (DTR's activation)."""

    def __init__(self, embed: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(embed), nn.LayerNorm(embed)
        self.attn = CausalSelfAttention(embed, heads, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(embed, 4 * embed), nn.ReLU(), nn.Linear(4 * embed, embed), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), allowed)
        return x + self.mlp(self.ln2(x))


class DecisionTransformer(nn.Module):
    """Predicts an action in [-1, 1] at every step of a window of (return-to-go, state, action) triples."""

    def __init__(
        self, obs_dim: int, act_dim: int, embed: int, layers: int, heads: int, dropout: float, max_timestep: int
    ):
        super().__init__()
        self.max_timestep = max_timestep
        self.embed_timestep = nn.Embedding(max_timestep, embed)
        self.embed_return = nn.Linear(1, embed)
        self.embed_state = nn.Linear(obs_dim, embed)
        self.embed_action = nn.Linear(act_dim, embed)
        self.embed_ln = nn.LayerNorm(embed)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(embed, heads, dropout) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(embed)
        self.predict_action = nn.Linear(embed, act_dim)

    def forward(
        self,
        returns_to_go: torch.Tensor,
        obs: torch.Tensor,
        actions: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """returns_to_go (B, K), obs (B, K, obs_dim), actions (B, K, act_dim), timesteps (B, K) long, mask (B, K)
        bool (false: left padding) -> predicted actions (B, K, act_dim)."""
        b, k = mask.shape
        time = self.embed_timestep(timesteps.clamp(0, self.max_timestep - 1))
        tokens = torch.stack(
            [
                self.embed_return(returns_to_go.unsqueeze(-1)) + time,
                self.embed_state(obs) + time,
                self.embed_action(actions) + time,
            ],
            dim=2,
        ).reshape(b, 3 * k, -1)
        x = self.drop(self.embed_ln(tokens))
        keys = mask.repeat_interleave(3, dim=1)  # (B, 3K): R_t, s_t, a_t share step t's mask
        causal = torch.ones(3 * k, 3 * k, dtype=torch.bool, device=x.device).tril()
        # a padded query attends to itself alone: its output is never used, but an all-masked row would be NaN
        allowed = causal & (keys[:, None, :] | torch.eye(3 * k, dtype=torch.bool, device=x.device))
        allowed = allowed.unsqueeze(1)
        for block in self.blocks:
            x = block(x, allowed)
        state_tokens = self.ln_f(x).reshape(b, k, 3, -1)[:, :, 1]
        return torch.tanh(self.predict_action(state_tokens))


def window_batch(data: TrainingData, ends: np.ndarray, context: int, rtg_scale: float) -> dict[str, torch.Tensor]:
    """Windows of `context` steps ending at rows `ends`, left-padded where the episode started later.

    Returns obs, actions, rewards, returns_to_go (divided by rtg_scale), timesteps, terminals and mask (B, K)."""
    rows = ends[:, None] - context + 1 + np.arange(context)
    mask = rows >= data.episode_start[ends][:, None]
    rows = np.where(mask, rows, ends[:, None])  # any valid row; zeroed below
    keep = mask.astype(np.float32)
    out = {
        "obs": data.obs[rows] * keep[..., None],
        "actions": data.actions[rows] * keep[..., None],
        "rewards": data.rewards[rows] * keep,
        "returns_to_go": data.returns_to_go[rows] / rtg_scale * keep,
        "terminals": data.terminals[rows] * keep,
    }
    batch = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in out.items()}
    batch["timesteps"] = torch.from_numpy(np.where(mask, data.timestep[rows], 0))
    batch["mask"] = torch.from_numpy(mask)
    return batch
