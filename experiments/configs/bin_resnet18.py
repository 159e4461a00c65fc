"""Bi-Real style binary ResNet-18 (real-valued shortcuts) on CIFAR-10: AdamW + cosine, 300 epochs.

  python -m experiments.train --model=bin_resnet18 --workdir=runs/bin_resnet18
"""

from experiments.configs import default


def get_config():
  return default.binary_config("bin_resnet18", num_epochs=300, input_quantizer="approx_sign")
