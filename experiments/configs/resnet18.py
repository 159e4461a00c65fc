"""Float CIFAR ResNet-18: SGD + Nesterov, cosine, 200 epochs.

  python -m experiments.train --model=resnet18 --workdir=runs/resnet18
"""

from experiments.configs import default


def get_config():
  config = default.get_config("resnet18")
  config.model.options = {"width": 1.0, "dtype": "float32"}
  config.num_epochs = 200
  config.optim.name = "sgd"
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  return config
