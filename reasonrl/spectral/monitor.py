"""Spectral monitoring during training: Hill α of every weight matrix as flat metrics for metrics.jsonl.

`train.spectral_every=N` logs these every N steps (and at step 0), so `reasonrl plot` can draw α over training:
`spectral/alpha/<module>` per module, `spectral/alpha_mean` over all fitted modules, and
`spectral/alpha_mean/<type>` per module type averaged over layers (e.g. `mlp.down_proj`), which is what the plot
shows: a handful of lines instead of one per matrix.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from reasonrl.spectral.esd import analyze


@torch.no_grad()
def alpha_metrics(model: nn.Module, min_eigs: int = 50, prefix: str = "spectral") -> dict[str, float]:
    """Median-Hill α of each weight module with >= `min_eigs` eigenvalues, plus means; {} if none can be fitted.

    Only the one-pass Hill fit is used (the KS fit is O(N²) per matrix): cheap enough to run every few steps.
    """
    fitted = [s for s in analyze(model, methods=("hill",), min_eigs=min_eigs) if s.status == "ok"]
    if not fitted:
        return {}
    by_type: dict[str, list[float]] = defaultdict(list)
    for s in fitted:
        by_type[s.type].append(s.alpha)
    out = {f"{prefix}/alpha/{s.name}": s.alpha for s in fitted}
    out[f"{prefix}/alpha_mean"] = sum(s.alpha for s in fitted) / len(fitted)
    out |= {f"{prefix}/alpha_mean/{t}": sum(a) / len(a) for t, a in by_type.items()}
    return out
