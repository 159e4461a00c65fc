"""Float VGG16 (BatchNorm) on CIFAR-10: SGD + Nesterov, cosine, 200 epochs. Target >= 93.5% test.

  python -m experiments.train --model=vgg16 --workdir=runs/vgg16
"""

from experiments.configs import default


def get_config():
  config = default.get_config("vgg16")
  config.model.options = {"width": 1.0, "dtype": "float32"}
  config.num_epochs = 200
  config.optim.name = "sgd"
  config.optim.learning_rate = 0.1
  config.optim.nesterov = True
  config.optim.weight_decay = 5e-4
  config.optim.schedule = "cosine"
  config.optim.warmup_epochs = 1.0
  return config
