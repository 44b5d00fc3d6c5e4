"""The churn network: a plain `nn.Module`, with no distributed code (see lakemine.learning.worker)."""

from __future__ import annotations

import torch
from torch import nn

# the hidden layers' activation, by the name the config and the tuner use
ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class ChurnMLP(nn.Module):
    """Feed-forward net from standardized features to one churn logit.

    Linear -> (BatchNorm) -> activation -> Dropout per hidden layer; `forward` returns logits
    (use `torch.sigmoid` for probabilities, `BCEWithLogitsLoss` to train).
    """

    def __init__(self, n_inputs: int, hidden: tuple[int, ...] = (64, 32), dropout: float = 0.1,
                 batch_norm: bool = False, activation: str = "relu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: allowed {', '.join(ACTIVATIONS)}")
        layers: list[nn.Module] = []
        width = n_inputs
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers += [ACTIVATIONS[activation](), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
