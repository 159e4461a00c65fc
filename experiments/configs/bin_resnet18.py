"""Bi-Real style binary ResNet-18 (real-valued shortcuts) on CIFAR-10: AdamW + cosine, 300 epochs.

  python -m experiments.train --model=bin_resnet18 --workdir=runs/bin_resnet18
"""

from experiments.configs import default


def get_config():
  config = default.get_config("bin_resnet18")
  config.model.options = {
      "width": 1.0,
      "input_quantizer": "approx_sign",
      "kernel_quantizer": "magnitude_aware_sign",
      "binarize_first_layer": False,
      "binarize_last_layer": False,
      "dtype": "float32",
  }
  config.num_epochs = 300
  config.optim.name = "adamw"
  config.optim.learning_rate = 2e-3
  config.optim.warmup_epochs = 5.0
  config.optim.weight_decay = 1e-4
  config.optim.weight_decay_binary = 0.0
  return config
