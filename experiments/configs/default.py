"""Defaults shared by every training configuration (the model presets import and override them).

  python -m experiments.train --config=experiments/configs/default.py:bin_vgg16 --workdir=runs/x

The config string after ':' names the model. Usually run a preset instead, e.g.
`python -m experiments.train --model=bin_vgg16 --workdir=runs/bin_vgg16`; any field can be
overridden on the command line, e.g. `--config.num_epochs=3 --config.data.source=synthetic`.
"""

import ml_collections


def get_config(model: str = "bin_vgg16") -> ml_collections.ConfigDict:
  """The defaults: SGD + cosine, batch 128, CIFAR-10 with a 5,000-image validation hold-out."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Model: `name` from the registry (xnorjax.models); `options` are its keyword arguments.
  config.model = ml_collections.ConfigDict()
  config.model.name = model
  config.model.options = ml_collections.ConfigDict({"width": 1.0, "dtype": "float32"})

  # Data (experiments/input_pipeline.py).
  config.data = ml_collections.ConfigDict()
  config.data.source = "auto"        # auto | tfds | image_folder | synthetic
  config.data.path = ""              # image folder or tarball; default $XNORJAX_CIFAR10_JPEG
  config.data.cache_dir = ""         # decoded-image cache; default ~/.cache/xnorjax
  config.data.tfds_name = "cifar10"
  config.data.tfds_data_dir = ""     # default: TFDS's own (~/tensorflow_datasets)
  config.data.tfds_download = True
  config.data.image_size = 32
  config.data.num_classes = 10
  config.data.num_validation = 5000  # held out of train, stratified; selects checkpoints
  config.data.split_seed = 0
  config.data.augment = True         # random crop from `crop_padding` zero padding + flip
  config.data.crop_padding = 4
  config.data.flip = True
  config.data.prefetch = 2
  # True: the splits are copied to the accelerators once and the batches assembled there (the
  # same batches; experiments/device_pipeline.py), for accelerators the host pipeline cannot feed.
  config.data.on_device = False
  config.data.synthetic_train_size = 2048
  config.data.synthetic_test_size = 512

  # Schedule of the run.
  config.batch_size = 128            # global, over all devices and hosts
  config.eval_batch_size = 500
  config.num_epochs = 200
  config.num_train_steps = -1        # > 0: stop after this many steps instead of num_epochs
  config.eval_every_steps = -1       # -1: once per epoch
  config.eval_test_during_training = True  # also log test_* curves (never used for selection)
  config.log_every_steps = 50
  config.checkpoint_every_steps = -1  # -1: at every evaluation
  config.keep_checkpoints = 2
  config.steps_per_dispatch = 50     # data.on_device: training steps per dispatch (lax.scan)

  # Optimisation (experiments/optim.py).
  config.optim = ml_collections.ConfigDict()
  config.optim.name = "sgd"          # sgd | adam | adamw
  config.optim.learning_rate = 0.1
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  config.optim.schedule = "cosine"   # cosine | linear | step | constant
  config.optim.warmup_epochs = 1.0
  config.optim.step_epochs = (100, 150)  # step schedule: multiply by step_factor at these epochs
  config.optim.step_factor = 0.1
  config.optim.final_lr_fraction = 0.0   # cosine: lr at the end, as a fraction of the peak
  # Weight decay per parameter group (optax.partition): float kernels, latent binary kernels,
  # BatchNorm scales/offsets and biases.
  config.optim.weight_decay = 5e-4
  config.optim.weight_decay_binary = 0.0
  config.optim.weight_decay_norm_bias = 0.0
  config.optim.clip_latent_weights = 1.0  # keep latent binary kernels in [-c, c]; 0: off
  config.optim.grad_clip_norm = 0.0       # > 0: clip the global gradient norm
  # "bop": train the binary kernels with Bop (xnorjax/bop.py) instead of the optimizer above.
  config.optim.binary_optimizer = ""
  config.optim.bop_gamma = 1e-4       # Bop's adaptivity rate (larq's default)
  config.optim.bop_threshold = 1e-8   # Bop's flip threshold (larq's default)
  config.label_smoothing = 0.0

  # Knowledge distillation (experiments/distill.py), on when teacher_workdir names a training run:
  # loss = (1 - weight) * CE + weight * temperature^2 * KL(teacher || student), softened by T.
  config.distill = ml_collections.ConfigDict()
  config.distill.teacher_workdir = ""
  config.distill.weight = 0.9
  config.distill.temperature = 4.0

  # Two-stage training (experiments/two_stage.py): binary activations with float weights into
  # <workdir>/stage1, then the binary model from it into <workdir>/stage2.
  config.two_stage = False
  config.init_from_workdir = ""  # start from this run's selected checkpoint (stage 2 sets it)

  # Devices: data-parallel over local devices (-1: all); multi-host via jax.distributed.
  config.num_devices = -1
  config.distributed = False
  # With distributed: where the processes meet, how many there are and which one this is ("" and
  # -1: detected from the cluster, as jax.distributed.initialize does on SLURM, Open MPI, ...).
  config.coordinator_address = ""
  config.num_processes = -1
  config.process_id = -1
  config.tensorboard = True  # TensorBoard event files (needs TensorFlow); metrics.jsonl always
  return config


def binary_config(model: str, *, num_epochs: int, input_quantizer: str = "ste_sign"):
  """The shared recipe of the binary presets: XNOR-Net layers (alpha * sign(W) kernels), float
  first and last layers, AdamW 2e-3 with cosine decay after 5 warm-up epochs, decoupled weight
  decay 1e-4 on float kernels only; latent binary kernels clipped to [-1, 1] (the default)."""
  config = get_config(model)
  config.model.options = {
      "width": 1.0,
      "input_quantizer": input_quantizer,
      "kernel_quantizer": "magnitude_aware_sign",
      "binarize_first_layer": False,
      "binarize_last_layer": False,
      "dtype": "float32",
  }
  config.num_epochs = num_epochs
  config.optim.name = "adamw"
  config.optim.learning_rate = 2e-3
  config.optim.schedule = "cosine"
  config.optim.warmup_epochs = 5.0
  config.optim.weight_decay = 1e-4
  config.optim.weight_decay_binary = 0.0
  config.optim.weight_decay_norm_bias = 0.0
  config.optim.clip_latent_weights = 1.0
  return config
