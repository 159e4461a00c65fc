"""A straightforward PyTorch CPU implementation of vgg16 and bin_vgg16, timed like experiments.bench.train.

  python experiments/bench/pytorch_baseline.py [--models=vgg16,bin_vgg16] [--batch_size=128]

The baseline the training issue compares against ("a straightforward PyTorch CPU implementation
of the same two models"), so that experiments.bench.train can measure it on the same machine, in the same
run, instead of quoting numbers from other machines. It needs only torch (not a dependency of
xnorjax; `pip install torch==2.13.0` in any environment) and imports nothing from this project:
experiments.bench.train runs it as a subprocess with `--pytorch_python`. Prints one JSON line per model.

The models follow the reference XNOR-Net PyTorch code: vgg16 is conv -> BatchNorm -> ReLU x 13
with max-pooling per stage and a 512 -> 10 linear layer; bin_vgg16 has a float first conv 3 -> 64
(BatchNorm, ReLU), then the 13 convs as XNOR blocks (BatchNorm -> sign with the clipped
straight-through gradient -> conv with alpha * sign(W), alpha the mean |W| per output channel ->
BatchNorm -> ReLU). NCHW, float32, SGD with Nesterov momentum and weight decay, cross-entropy:
what such code does by default.
"""

import argparse
import json
import os
import statistics
import time

import torch
from torch import nn
import torch.nn.functional as F

STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class SignSTE(torch.autograd.Function):
  """sign(x) (sign(0) = +1) forward; gradient passed where |x| <= 1 (BNN's clipped STE)."""

  @staticmethod
  def forward(ctx, x):
    ctx.save_for_backward(x)
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

  @staticmethod
  def backward(ctx, g):
    (x,) = ctx.saved_tensors
    return g * (x.abs() <= 1).to(g.dtype)


class XnorConv(nn.Module):
  """BatchNorm -> sign -> conv with alpha * sign(W) -> BatchNorm -> ReLU."""

  def __init__(self, cin, cout):
    super().__init__()
    self.bn_in = nn.BatchNorm2d(cin)
    self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    self.bn_out = nn.BatchNorm2d(cout)

  def forward(self, x):
    w = self.conv.weight
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    wb = SignSTE.apply(w) * alpha
    x = F.conv2d(SignSTE.apply(self.bn_in(x)), wb, padding=1)
    return F.relu(self.bn_out(x))


def make_model(name: str) -> nn.Module:
  layers, c = [], 3
  if name == "bin_vgg16":
    layers += [nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    c = 64
  for stage in STAGES:
    for out in stage:
      if name == "bin_vgg16":
        layers.append(XnorConv(c, out))
      else:
        layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
      c = out
    layers.append(nn.MaxPool2d(2))
  layers += [nn.Flatten(), nn.Linear(512, 10)]
  return nn.Sequential(*layers)


def _median_rate(fn, images, repeats):
  rates = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    rates.append(images / (time.perf_counter() - t))
  return statistics.median(rates)


def bench(name: str, batch_size: int, steps: int, repeats: int) -> dict:
  torch.manual_seed(0)
  model = make_model(name)
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                        weight_decay=5e-4)
  x = torch.randn(batch_size, 3, 32, 32)
  y = torch.randint(0, 10, (batch_size,))

  def train():
    model.train()
    for _ in range(steps):
      opt.zero_grad(set_to_none=True)
      F.cross_entropy(model(x), y).backward()
      opt.step()

  def forward():
    model.eval()
    with torch.no_grad():
      for _ in range(steps):
        model(x)

  train()  # warm-up
  train_rate = _median_rate(train, steps * batch_size, repeats)
  forward()
  forward_rate = _median_rate(forward, steps * batch_size, repeats)
  return {"framework": "pytorch", "torch": torch.__version__, "model": name,
          "batch_size": batch_size, "threads": torch.get_num_threads(),
          "train_images_per_second": round(train_rate, 2),
          "forward_images_per_second": round(forward_rate, 2)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="vgg16,bin_vgg16")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  for name in args.models.split(","):
    if name not in ("vgg16", "bin_vgg16"):
      parser.error(f"--models: {name!r} is not vgg16 or bin_vgg16")
    print(json.dumps(bench(name, args.batch_size, args.steps, args.repeats)), flush=True)


if __name__ == "__main__":
  main()
