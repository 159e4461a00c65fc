"""XNOR-Net VGG16 on CIFAR-10: AdamW + cosine, 400 epochs, no decay on binary kernels. Target >= 90%.

  python -m experiments.train --model=bin_vgg16 --workdir=runs/bin_vgg16

Latent binary kernels are clipped to [-1, 1] (their straight-through window) and not decayed;
float kernels (first conv, classifier) get decoupled weight decay.
"""

from experiments.configs import default


def get_config():
  return default.binary_config("bin_vgg16", num_epochs=400)
