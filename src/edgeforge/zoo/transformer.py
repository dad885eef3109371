"""A small transformer encoder classifier over int64 token ids (Vaswani et al. 2017,
post-norm encoder layers as in BERT), built from `nn.TransformerEncoderLayer`."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TransformerClassifier", "transformer_encoder", "transformer_encoder_macs"]


class TransformerClassifier(nn.Module):
    """Token and learned position embeddings, `layers` encoder layers, mean pooling over the
    sequence, a linear head. Takes (batch, sequence) int64 ids, sequence <= `max_seq`."""

    def __init__(
        self,
        vocab: int = 1000,
        d_model: int = 128,
        layers: int = 2,
        heads: int = 4,
        max_seq: int = 512,
        ff: int | None = None,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Embedding(max_seq, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, ff or 4 * d_model, dropout=0.0, activation="gelu", batch_first=True
        )
        # No nested tensors: they only speed up padded batches and do not export.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)
        return self.head(self.encoder(x).mean(1))


def transformer_encoder(
    vocab: int = 1000,
    d_model: int = 128,
    layers: int = 2,
    heads: int = 4,
    max_seq: int = 512,
    num_classes: int = 2,
) -> TransformerClassifier:
    return TransformerClassifier(vocab, d_model, layers, heads, max_seq, num_classes=num_classes)


def transformer_encoder_macs(
    seq: int, d_model: int = 128, layers: int = 2, ff: int | None = None, num_classes: int = 2
) -> int:
    """Multiply-accumulates per sequence: Q, K, V and output projections, the two attention
    products, the feed-forward pair, and the head (embeddings are lookups, no MACs)."""
    ff = ff or 4 * d_model
    per_layer = 4 * seq * d_model**2 + 2 * seq**2 * d_model + 2 * seq * d_model * ff
    return layers * per_layer + d_model * num_classes
