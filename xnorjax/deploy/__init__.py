"""Deployment: trained binary models exported in packed form, and run through the XNOR kernels.

  from xnorjax import deploy
  exported = deploy.export_model(model, input_shape=(32, 32, 3), mean=mean, std=std)
  deploy.save(exported, "exported/bin_vgg16")      # orbax arrays + manifest.json
  predict = deploy.load("exported/bin_vgg16")       # jitted: images -> logits
  logits = predict(images)

Any model built from BinaryConv, BinaryDense, BinaryConvBlock, nnx.BatchNorm, ReLU, pooling and
flattening exports: a module other than those layers describes its evaluation-mode computation
with an `inference_program()` method, a sequence of its submodules and of the ops `MaxPool`,
`AvgPool`, `Relu`, `Sign`, `Flatten`, `GlobalAvgPool` (`xnorjax.nn.inference`, also here).

How (each step a pure function of arrays):
  convert.layer_program   the model as a list of ops, one per layer, as it computes in eval mode.
  fold.fold_program       binary kernels bit-packed once; alpha, biases, BatchNorms, ReLU and the
                          next sign folded into exact per-channel thresholds of the packed kernel's
                          epilogue; max-pooling on packed signs (OR / AND per channel); the float
                          first and last layers kept, the last binary layer's BatchNorm folded into
                          its float epilogue.
  program.run             the interpreter both forms share.
python -m experiments.export writes a training run's selected checkpoint in this form;
python -m experiments.bench.deploy measures it.
"""

from xnorjax.deploy.convert import layer_program
from xnorjax.deploy.export import Exported
from xnorjax.deploy.export import Predictor
from xnorjax.deploy.export import export_model
from xnorjax.deploy.export import load
from xnorjax.deploy.export import read_manifest
from xnorjax.deploy.export import save
from xnorjax.deploy.fold import fold_program
from xnorjax.deploy.fold import sign_thresholds
from xnorjax.deploy.program import Op
from xnorjax.deploy.program import packed_max_pool
from xnorjax.deploy.program import run
from xnorjax.nn.inference import AvgPool
from xnorjax.nn.inference import Flatten
from xnorjax.nn.inference import GlobalAvgPool
from xnorjax.nn.inference import MaxPool
from xnorjax.nn.inference import Relu
from xnorjax.nn.inference import Sign

__all__ = [
    "AvgPool", "Exported", "Flatten", "GlobalAvgPool", "MaxPool", "Op", "Predictor", "Relu", "Sign",
    "export_model", "fold_program", "layer_program", "load", "packed_max_pool", "read_manifest",
    "run", "save", "sign_thresholds",
]
