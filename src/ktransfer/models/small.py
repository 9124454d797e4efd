"""Small plain-PyTorch models for tabular and tiny-image data (demos, tests, benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Sequential):
    """Linear -> ReLU (-> Dropout) blocks, then a linear classifier."""

    def __init__(
        self, in_features: int, num_classes: int, hidden: Sequence[int] = (64,), dropout: float = 0.0
    ) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks and a linear head for square single-channel images given flat."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        side = int(round(in_features**0.5))
        if side * side != in_features:
            raise ValueError(f"SmallCNN needs square images given flat; {in_features} features is not a square")
        self.side = side
        blocks: list[nn.Module] = []
        c_in = 1
        for c in channels:
            blocks += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c_in * 4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], 1, self.side, self.side)
        h = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(h))
