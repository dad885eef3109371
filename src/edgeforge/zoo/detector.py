"""A small single-shot detector whose post-processing exports to ONNX as plain tensor ops.

Layout: a strided conv backbone, box and class heads on two feature levels (strides 16 and
32, three anchors per cell, as in SSD), then post-processing inside the graph:
sigmoid scores -> best class per anchor -> top-k -> gather -> box decoding -> class-aware
IoU suppression -> top-k again to a fixed number of detections.

The suppression is Fast NMS (Bolya et al., YOLACT, 2019): a box is dropped when any
higher-scoring box of its class overlaps it by more than the threshold, whether or not that
box was itself dropped. It is a masked matrix maximum instead of greedy NMS's sequential
loop, so it needs no NonMaxSuppression op, no Loop and no data-dependent shapes.

Invariants a caller can rely on:
- outputs have fixed shapes: `boxes` (batch, max_detections, 4) as x1, y1, x2, y2 pixels
  inside the image, `scores` (batch, max_detections), `labels` (batch, max_detections) int64,
  `num_detections` (batch,) int64;
- detections are sorted by score (scores closer than 5e-5 may come in either order, see
  `_top_k`); slots past `num_detections` hold boxes of zeros, score 0 and label -1.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeforge.zoo._blocks import ConvBNAct

__all__ = ["TinyDetector", "tiny_detector"]

_BOX_SCALE = (0.1, 0.1, 0.2, 0.2)  # SSD's variances for centre and size offsets
_MAX_LOG_SIZE = math.log(1000.0 / 16)  # cap exp() as torchvision's box coder does
_TIE_STEP = 2.5e-7


class TinyDetector(nn.Module):
    def __init__(
        self,
        num_classes: int = 20,
        image_size: int = 320,
        max_detections: int = 100,
        pre_nms_top_k: int = 200,
        score_threshold: float = 0.05,
        iou_threshold: float = 0.45,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.image_size = image_size
        self.max_detections = max_detections
        self.pre_nms_top_k = pre_nms_top_k
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold

        widths = (16, 32, 64, 128)
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:  # four stride-2 stages: stride 16
            layers += [ConvBNAct(channels, width, 3, 2), ConvBNAct(width, width, 3)]
            channels = width
        self.stage16 = nn.Sequential(*layers)
        self.stage32 = nn.Sequential(ConvBNAct(channels, 256, 3, 2), ConvBNAct(256, 256, 3))

        ratios = (1.0, 2.0, 0.5)
        levels = ((16, channels, 48.0), (32, 256, 128.0))  # (stride, channels, anchor size)
        self.box_heads = nn.ModuleList(
            nn.Conv2d(c, len(ratios) * 4, 3, padding=1) for _, c, _ in levels
        )
        self.class_heads = nn.ModuleList(
            nn.Conv2d(c, len(ratios) * num_classes, 3, padding=1) for _, c, _ in levels
        )
        anchors = torch.cat([_anchors(image_size, s, size, ratios) for s, _, size in levels])
        self.register_buffer("anchors", anchors, persistent=False)
        # For each pair (i, j) of score-sorted candidates, 1 where i ranks above j.
        above = torch.ones(pre_nms_top_k, pre_nms_top_k).triu(1)
        self.register_buffer("ranks_above", above, persistent=False)
        # He initialisation (as torchvision's detectors use) keeps untrained features alive;
        # torch's default lets them fade, and near-equal scores then rank differently in
        # different runtimes.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c16 = self.stage16(image)
        features = (c16, self.stage32(c16))
        heads = zip(self.box_heads, self.class_heads, features, strict=True)
        outputs = [
            (_flatten(box(f), 4), _flatten(cls(f), self.num_classes)) for box, cls, f in heads
        ]
        deltas = torch.cat([d for d, _ in outputs], 1)
        logits = torch.cat([c for _, c in outputs], 1)
        return self.postprocess(deltas, logits)

    def postprocess(
        self, deltas: torch.Tensor, logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw head outputs (batch, anchors, 4) and (batch, anchors, classes) to detections."""
        best, labels = logits.sigmoid().max(-1)
        scores, index = _top_k(best, self.pre_nms_top_k)
        labels = labels.gather(1, index)
        deltas = deltas.gather(1, index.unsqueeze(-1).expand(-1, -1, 4))
        boxes = self._decode(deltas, self.anchors[index])

        # Shift each class into its own region so that classes never overlap each other.
        shifted = boxes + (labels * (self.image_size + 1)).unsqueeze(-1).to(boxes.dtype)
        overlap = _pairwise_iou(shifted) * self.ranks_above
        keep = (overlap.amax(1) <= self.iou_threshold) & (scores > self.score_threshold)

        # Dropped candidates move below every kept one, keeping their relative order.
        ranked, order = _top_k(torch.where(keep, scores, scores - 2.0), self.max_detections)
        valid = keep.gather(1, order)
        boxes = boxes.gather(1, order.unsqueeze(-1).expand(-1, -1, 4))
        return (
            boxes * valid.unsqueeze(-1).to(boxes.dtype),
            torch.where(valid, ranked, torch.zeros_like(ranked)),
            torch.where(valid, labels.gather(1, order), torch.full_like(order, -1)),
            valid.sum(1),
        )

    def _decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """SSD centre-size decoding; anchors and result are x1, y1, x2, y2."""
        size = anchors[..., 2:] - anchors[..., :2]
        centre = anchors[..., :2] + 0.5 * size
        centre = centre + deltas[..., :2] * _BOX_SCALE[0] * size
        size = size * torch.exp((deltas[..., 2:] * _BOX_SCALE[2]).clamp(max=_MAX_LOG_SIZE))
        boxes = torch.cat([centre - 0.5 * size, centre + 0.5 * size], -1)
        return boxes.clamp(0.0, float(self.image_size))


def _top_k(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest along dim 1 (values in (-2, 1)), equal values in index order.

    Runtimes break ties in different orders (ONNX TopK: lower index first; torch.topk:
    unspecified, and the stable sort that would fix it does not export), and ties are common:
    with untrained weights whole regions score the same. So the ranking key subtracts a step
    per index, larger than two float32 ulps in (-2, 2), and the values are gathered back
    unchanged. Values closer than k x step may swap; that is below any score's meaning.
    """
    steps = torch.arange(values.shape[1], device=values.device, dtype=values.dtype)
    _, index = (values - steps * _TIE_STEP).topk(k, dim=1)
    return values.gather(1, index), index


def _flatten(head: torch.Tensor, width: int) -> torch.Tensor:
    """(batch, anchors x width, H, W) -> (batch, H x W x anchors, width), anchors innermost."""
    batch = head.shape[0]
    return head.permute(0, 2, 3, 1).reshape(batch, -1, width)


def _anchors(image_size: int, stride: int, size: float, ratios: tuple[float, ...]) -> torch.Tensor:
    """(cells x ratios, 4) boxes, x1 y1 x2 y2, centred on each cell, row-major like `_flatten`."""
    cells = image_size // stride
    centres = (torch.arange(cells, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    shapes = torch.tensor([(size * math.sqrt(r), size / math.sqrt(r)) for r in ratios])
    centre = torch.stack([cx, cy], -1).reshape(-1, 1, 2)
    half = 0.5 * shapes.reshape(1, -1, 2)
    return torch.cat([centre - half, centre + half], -1).reshape(-1, 4)


def _pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """(batch, n, 4) -> (batch, n, n) intersection over union."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    top_left = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    bottom_right = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0.0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area[:, :, None] + area[:, None, :] - inter + 1e-9)


def tiny_detector(num_classes: int = 20, image_size: int = 320) -> TinyDetector:
    return TinyDetector(num_classes, image_size)
