"""Reference architectures built in plain torch (no torchvision), with random weights.

Used by the demo, the tests and the estimator's calibration, so that nothing is downloaded.
`catalog` names every architecture with its export options and published figures;
`packaged_onnx_models` finds real pretrained ONNX models that pip-installed packages ship.
"""

from __future__ import annotations

from edgeforge.zoo.catalog import ARCHITECTURES, ZooEntry, build, lookup
from edgeforge.zoo.detector import TinyDetector, tiny_detector
from edgeforge.zoo.digits import DigitsCNN, train_digits_cnn
from edgeforge.zoo.efficientnet import efficientnet_b0
from edgeforge.zoo.googlenet import googlenet
from edgeforge.zoo.mobilenet import (
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3_large,
    mobilenet_v3_small,
)
from edgeforge.zoo.packaged import packaged_onnx_models
from edgeforge.zoo.recurrent import RecurrentClassifier, gru_classifier, lstm_classifier
from edgeforge.zoo.resnet import resnet18, resnet50
from edgeforge.zoo.shufflenet import shufflenet_v2_x1_0
from edgeforge.zoo.squeezenet import squeezenet1_1
from edgeforge.zoo.transformer import TransformerClassifier, transformer_encoder
from edgeforge.zoo.vgg import vgg16

__all__ = [
    "ARCHITECTURES",
    "DigitsCNN",
    "RecurrentClassifier",
    "TinyDetector",
    "TransformerClassifier",
    "ZooEntry",
    "build",
    "efficientnet_b0",
    "googlenet",
    "gru_classifier",
    "lookup",
    "lstm_classifier",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "packaged_onnx_models",
    "resnet18",
    "resnet50",
    "shufflenet_v2_x1_0",
    "squeezenet1_1",
    "tiny_detector",
    "train_digits_cnn",
    "transformer_encoder",
    "vgg16",
]
