"""The conversion corpus: architectures nobody here wrote, each built from a small config.

`transformers` models from configs (hidden size 32 or so, two layers, random weights; nothing
is downloaded; the text and vision configs and the models the other tests build too come from
`tiny_transformers`, one place), an MTCNN-structured face detector (PReLU, ceil-mode pooling,
a rank-2 PReLU after a flatten) and the pretrained ONNX models that installed wheels ship
(`zoo.packaged`).
`build(name)` returns what `edgeforge.convert` takes: a source (a module or an ONNX path) and
its example inputs (None for an ONNX file, whose inputs edgeforge synthesises).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tiny_transformers as tiny
import torch
from torch import nn

__all__ = ["ARCHITECTURES", "SLICE", "build"]


def _ids() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(3, tiny.VOCABULARY, (1, tiny.SEQUENCE))


def _text(kind: str, config: str, mask: bool = True, **extra: Any) -> Callable[[], Any]:
    def build() -> tuple[nn.Module, Any]:
        import transformers

        settings = {**tiny.TEXT, **extra}
        module = getattr(transformers, kind)(getattr(transformers, config)(**settings)).eval()
        inputs = {"input_ids": _ids()}
        if mask:
            inputs["attention_mask"] = tiny.padded_mask(12)
        return module, inputs

    return build


def _decoder(kind: str, config: str, **settings: Any) -> Callable[[], Any]:
    """A causal language model's logits over one prompt, without a KV cache."""

    def build() -> tuple[nn.Module, Any]:
        import transformers

        module = getattr(transformers, kind)(getattr(transformers, config)(**settings)).eval()
        module.config.use_cache = False
        return module, {"input_ids": _ids(), "attention_mask": torch.ones(1, tiny.SEQUENCE)}

    return build


def _image(kind: str, config: str, size: int = 32, **settings: Any) -> Callable[[], Any]:
    def build() -> tuple[nn.Module, Any]:
        import transformers

        module = getattr(transformers, kind)(getattr(transformers, config)(**settings)).eval()
        return module, torch.randn(1, 3, size, size)

    return build


def _videomae() -> tuple[nn.Module, Any]:
    import transformers

    config = transformers.VideoMAEConfig(num_frames=4, tubelet_size=2, num_labels=3, **tiny.VISION)
    module = transformers.VideoMAEForVideoClassification(config).eval()
    return module, torch.randn(1, 4, 3, 32, 32)


def _patchtst() -> tuple[nn.Module, Any]:
    import transformers

    config = transformers.PatchTSTConfig(
        num_input_channels=3,
        context_length=32,
        patch_length=8,
        patch_stride=8,
        prediction_length=8,
        d_model=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        ffn_dim=64,
    )
    module = transformers.PatchTSTForPrediction(config).eval()
    return module, {"past_values": torch.randn(1, 32, 3)}


class MtcnnRNet(nn.Module):
    """MTCNN's refinement network, layer for layer (facenet-pytorch's RNet): PReLU per
    channel, ceil-mode max pooling, a channels-last flatten, a rank-2 PReLU, two heads."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return torch.softmax(self.dense5_1(x), dim=1), self.dense5_2(x)


def _mtcnn_rnet() -> tuple[nn.Module, Any]:
    return MtcnnRNet().eval(), torch.randn(1, 3, 24, 24)


def _packaged(key: str) -> Callable[[], Any]:
    def build() -> tuple[Any, Any]:
        from edgeforge.zoo.packaged import packaged_onnx_models

        return packaged_onnx_models()[key], None

    return build


ARCHITECTURES: dict[str, Callable[[], tuple[Any, Any]]] = {
    # encoders of the BERT family
    "bert": tiny.bert_classifier,
    "distilbert": _text(
        "DistilBertForSequenceClassification",
        "DistilBertConfig",
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
    ),
    "roberta": _text("RobertaForSequenceClassification", "RobertaConfig", pad_token_id=1),
    "albert": _text("AlbertForSequenceClassification", "AlbertConfig", embedding_size=16),
    "electra": _text("ElectraForSequenceClassification", "ElectraConfig", embedding_size=16),
    "mobilebert": _text(
        "MobileBertForSequenceClassification",
        "MobileBertConfig",
        embedding_size=16,
        intra_bottleneck_size=16,
        true_hidden_size=16,
        num_feedforward_networks=1,
    ),
    # decoders
    "gpt2": _decoder(
        "GPT2LMHeadModel",
        "GPT2Config",
        vocab_size=100,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=1,
        eos_token_id=2,
        n_positions=64,
    ),
    "llama": _decoder(
        "LlamaForCausalLM",
        "LlamaConfig",
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=64,
    ),
    "bloom": _decoder(
        "BloomForCausalLM", "BloomConfig", vocab_size=100, hidden_size=32, n_layer=2, n_head=2
    ),
    # encoders of sequence-to-sequence models
    "t5_encoder": tiny.t5_encoder,
    "whisper_encoder": tiny.whisper_encoder,
    # vision transformers
    "vit": tiny.vit_classifier,
    "deit": _image("DeiTForImageClassification", "DeiTConfig", num_labels=5, **tiny.VISION),
    "beit": _image("BeitForImageClassification", "BeitConfig", num_labels=5, **tiny.VISION),
    "dinov2": _image("Dinov2Model", "Dinov2Config", **tiny.VISION),
    "clip_vision": _image("CLIPVisionModel", "CLIPVisionConfig", **tiny.VISION),
    "swin": tiny.swin_classifier,
    "yolos": _image(
        "YolosForObjectDetection",
        "YolosConfig",
        num_detection_tokens=5,
        num_labels=3,
        **{**tiny.VISION, "image_size": [32, 32]},
    ),
    # convolutional and hybrid vision models
    "convnext": _image(
        "ConvNextForImageClassification",
        "ConvNextConfig",
        num_channels=3,
        hidden_sizes=[8, 16, 32, 64],
        depths=[1, 1, 1, 1],
        num_labels=3,
    ),
    "mobilevit": _image(
        "MobileViTForImageClassification",
        "MobileViTConfig",
        size=64,
        image_size=64,
        hidden_sizes=[16, 24, 32],
        neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
        num_labels=3,
    ),
    "segformer": _image(
        "SegformerForSemanticSegmentation",
        "SegformerConfig",
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 2, 2],
        decoder_hidden_size=32,
        num_labels=3,
    ),
    "efficientnet": _image(
        "EfficientNetForImageClassification",
        "EfficientNetConfig",
        size=64,
        image_size=64,
        width_coefficient=0.25,
        depth_coefficient=0.25,
        hidden_dim=320,
        num_labels=3,
    ),
    "resnet": _image(
        "ResNetForImageClassification",
        "ResNetConfig",
        embedding_size=8,
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_labels=3,
    ),
    "mobilenet_v1": _image(
        "MobileNetV1ForImageClassification",
        "MobileNetV1Config",
        image_size=32,
        depth_multiplier=0.25,
        num_labels=3,
    ),
    "mobilenet_v2": _image(
        "MobileNetV2ForImageClassification",
        "MobileNetV2Config",
        image_size=32,
        depth_multiplier=0.25,
        num_labels=3,
    ),
    # audio, video, time series
    "wav2vec2": tiny.wav2vec2,
    "videomae": _videomae,
    "patchtst": _patchtst,
    # packaged and packaged-structured models
    "mtcnn_rnet": _mtcnn_rnet,
    "silero_vad": _packaged("silero-vad/silero_vad_16k_op15"),
}

# The slice the test suite converts: one architecture per class-5 fix of issue 18 (OpenVINO
# pooling, ExecuTorch PReLU and Core ML rank-2 PReLU, ExecuTorch 3-D convolution).
SLICE = ("efficientnet", "mtcnn_rnet", "videomae")


def build(name: str) -> tuple[Any, Any]:
    torch.manual_seed(0)
    return ARCHITECTURES[name]()
