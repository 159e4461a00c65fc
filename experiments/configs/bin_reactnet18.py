"""ReActNet-18 on CIFAR-10 (Liu et al. 2020, "ReActNet", ECCV): Adam, linear decay, KD from a float teacher.

  python -m experiments.train --model=bin_reactnet18 --workdir=runs/bin_reactnet18 \
      --config.distill.teacher_workdir=runs/resnet18

Train the float teacher first (`python -m experiments.train --model=resnet18
--workdir=runs/resnet18`); without --config.distill.teacher_workdir the preset trains on the labels
alone.

The paper's recipe (ImageNet), followed here:
  * Adam, learning rate 5e-4 at batch 256, scaled linearly: 2.5e-4 at this batch of 128;
  * linear decay to 0 over the run, no warm-up;
  * L2 weight decay 5e-6 on the float conv and dense kernels, none on the binary latent kernels
    (none on BatchNorm, biases and the RSign / RPReLU shifts);
  * distillation from a real-valued teacher with the distributional loss: KL(teacher || student)
    at temperature 1 and no label term (weight 1);
  * 256 epochs per stage in the paper (two stages: binary activations first, then binary weights
    too; `--config.two_stage=True` is not part of this preset).
Epochs: 256, the paper's length of one stage: the fewest for which this recipe (Adam, linear
decay, distillation) has published support. An epoch is a pass over every training image; CIFAR-10's
45,000 make it shorter than an ImageNet epoch but no easier for a binary network to fit, so the
preset keeps the number of passes rather than the number of steps (which would mean thousands of
epochs). It is fewer than bin_resnet18's 300; this preset has not been run to completion.
Measured at short length (docs/training.md, no teacher): this optimizer reaches 40.8% where the
binary presets' AdamW 2e-3 with cosine decay reaches 57.4% (3 epochs at width 0.25, two seeds),
and 68.7% against 81.0% at full width over 10 epochs (one seed each); for short runs override
`optim.name=adamw`, `optim.learning_rate=0.002`, `optim.schedule=cosine`,
`optim.weight_decay=0.0001` (and `optim.warmup_epochs=0.5`). Whether the paper's optimizer
catches up over 256 epochs is unmeasured.
Departures: latent binary kernels stay clipped to [-1, 1] (the project default; ReActNet leaves
them free, but outside [-1, 1] its straight-through estimator gives them no gradient either); RSign
uses Bi-Real's approx_sign gradient, as ReActNet's code.
"""

from experiments.configs import default

BATCH_SIZE = 128
PAPER_LEARNING_RATE = 5e-4  # at the paper's batch of 256


def get_config():
  config = default.get_config("bin_reactnet18")
  config.model.options = {
      "width": 1.0,
      "input_quantizer": "approx_sign",
      "kernel_quantizer": "magnitude_aware_sign",
      "dtype": "float32",
  }
  config.batch_size = BATCH_SIZE
  config.num_epochs = 256
  config.optim.name = "adam"
  config.optim.learning_rate = PAPER_LEARNING_RATE * BATCH_SIZE / 256
  config.optim.schedule = "linear"
  config.optim.warmup_epochs = 0.0
  config.optim.final_lr_fraction = 0.0
  config.optim.weight_decay = 5e-6
  config.optim.weight_decay_binary = 0.0
  config.optim.weight_decay_norm_bias = 0.0
  config.optim.clip_latent_weights = 1.0
  config.distill.weight = 1.0
  config.distill.temperature = 1.0
  return config
