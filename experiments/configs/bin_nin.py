"""XNOR-Net Network-in-Network on CIFAR-10 (the XNOR-Net CIFAR port's model): AdamW + cosine.

  python -m experiments.train --model=bin_nin --workdir=runs/bin_nin
"""

from experiments.configs import default


def get_config():
  config = default.get_config("bin_nin")
  config.model.options = {
      "width": 1.0,
      "input_quantizer": "ste_sign",
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
