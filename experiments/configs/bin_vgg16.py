"""XNOR-Net VGG16 on CIFAR-10: AdamW + cosine, 400 epochs, no decay on binary kernels. Target >= 90%.

  python -m experiments.train --model=bin_vgg16 --workdir=runs/bin_vgg16

Latent binary kernels are clipped to [-1, 1] (their straight-through window) and not decayed;
float kernels (first conv, classifier) get decoupled weight decay.
"""

from experiments.configs import default


def get_config():
  config = default.get_config("bin_vgg16")
  config.model.options = {
      "width": 1.0,
      "input_quantizer": "ste_sign",
      "kernel_quantizer": "magnitude_aware_sign",
      "binarize_first_layer": False,
      "binarize_last_layer": False,
      "dtype": "float32",
  }
  config.num_epochs = 400
  config.optim.name = "adamw"
  config.optim.learning_rate = 2e-3
  config.optim.schedule = "cosine"
  config.optim.warmup_epochs = 5.0
  config.optim.weight_decay = 1e-4
  config.optim.weight_decay_binary = 0.0
  config.optim.weight_decay_norm_bias = 0.0
  config.optim.clip_latent_weights = 1.0
  return config
