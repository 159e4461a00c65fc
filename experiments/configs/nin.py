"""Float Network-in-Network on CIFAR-10: SGD + Nesterov, cosine, 200 epochs.

  python -m experiments.train --model=nin --workdir=runs/nin
"""

from experiments.configs import default


def get_config():
  config = default.get_config("nin")
  config.model.options = {"width": 1.0, "dtype": "float32"}
  config.num_epochs = 200
  config.optim.name = "sgd"
  config.optim.learning_rate = 0.05
  config.optim.weight_decay = 5e-4
  return config
