"""Reference architectures built in plain torch (no torchvision), with random weights.

Used by the demo, the tests and the estimator's calibration, so that nothing is downloaded.
"""

from __future__ import annotations

from edgeforge.zoo.digits import DigitsCNN, train_digits_cnn
from edgeforge.zoo.resnet import resnet18, resnet50

__all__ = ["DigitsCNN", "resnet18", "resnet50", "train_digits_cnn"]
