"""XNOR-Net Network-in-Network on CIFAR-10 (the XNOR-Net CIFAR port's model): AdamW + cosine.

  python -m experiments.train --model=bin_nin --workdir=runs/bin_nin
"""

from experiments.configs import default


def get_config():
  return default.binary_config("bin_nin", num_epochs=300)
