"""Feature-space distances between the personal model's and the global model's features."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fedoa.training.joint import segment_sum


def frobenius(h_p: torch.Tensor, h_g: torch.Tensor) -> torch.Tensor:
    """The reference code's ``torch.dist(h_P, h_G, p=2)``: one norm over the whole micro-batch.

    Not squared and not averaged, so its scale grows with the micro-batch size.
    """
    return torch.linalg.vector_norm(h_p - h_g)


def mse(h_p: torch.Tensor, h_g: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance per example, averaged over the micro-batch."""
    return (h_p - h_g).pow(2).sum(-1).mean()


def cosine(h_p: torch.Tensor, h_g: torch.Tensor) -> torch.Tensor:
    """Mean of ``1 - cos(h_P, h_G)``: ignores the features' norms."""
    return (1.0 - F.cosine_similarity(h_p, h_g, dim=-1)).mean()


DISTANCES = {"frobenius": frobenius, "mse": mse, "cosine": cosine}


def distance(name: str, h_p: torch.Tensor, h_g: torch.Tensor) -> torch.Tensor:
    try:
        fn = DISTANCES[name]
    except KeyError:
        raise ValueError(f"unknown distance {name!r}; known: {sorted(DISTANCES)}") from None
    return fn(h_p.float(), h_g.float())


# Per group of rows (the batched engine: one group per client's micro-batch, ``counts`` rows each).


def frobenius_per_group(h_p, h_g, group, counts, groups: int) -> torch.Tensor:
    """:func:`frobenius` of each group; 0 with a zero gradient where the distance is 0, as
    ``vector_norm`` gives (a plain square root's gradient there is infinite)."""
    sq = segment_sum((h_p - h_g).pow(2).sum(-1), group, groups)
    positive = sq > 0
    return torch.where(positive, sq, torch.ones_like(sq)).sqrt() * positive


def mse_per_group(h_p, h_g, group, counts, groups: int) -> torch.Tensor:
    return segment_sum((h_p - h_g).pow(2).sum(-1), group, groups) / counts


def cosine_per_group(h_p, h_g, group, counts, groups: int) -> torch.Tensor:
    return segment_sum(1.0 - F.cosine_similarity(h_p, h_g, dim=-1), group, groups) / counts


PER_GROUP = {"frobenius": frobenius_per_group, "mse": mse_per_group, "cosine": cosine_per_group}
