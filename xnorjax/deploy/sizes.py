"""Storage accounting of an exported model: binary layers as float32 against packed, and totals."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from xnorjax.deploy import fold as fold_lib
from xnorjax.deploy import program as program_lib


def _nbytes(arrays: Mapping[str, Any]) -> int:
  return int(sum(np.asarray(a).nbytes for a in arrays.values()))


def _weights(op: program_lib.Op, kernel_shape) -> int:
  return fold_lib.fan_in(op, kernel_shape) * int(kernel_shape[-1])


def size_report(layer_arrays: Mapping[str, Mapping[str, Any]], folded: fold_lib.Folded,
                model_float32_bytes: int) -> dict:
  """Bytes per binary layer and in total, JSON-ready.

  Per binary layer: its weights as float32 (the latent kernel, 4 bytes a weight) and packed (1
  bit a weight, in whole uint32 words per output channel); the float32 arrays folded into it
  (biases, BatchNorm statistics and affine parameters) against its epilogue (scale, bias and the
  masks of its packed pools). Totals: the binary layers both ways with their ratio, and the whole
  model: the training-time model's parameters and BatchNorm statistics (float32) against every
  exported array.
  """
  layers = []
  for op in folded.program:
    if op.kind not in program_lib.BINARY_KINDS:
      continue
    arrays = folded.arrays[op.name]
    kernel_shape = np.asarray(arrays["kernel"]).shape
    pools = [p for p in folded.program if p.kind == "packed_max_pool"
             and p.name in folded.absorbed[op.name]]
    weights = _weights(op, kernel_shape)
    layers.append({
        "name": op.name,
        "kind": op.kind,
        "kernel_shape": list(kernel_shape),
        "weights": weights,
        "float32_kernel_bytes": 4 * weights,
        "packed_kernel_bytes": int(np.asarray(arrays["kernel"]).nbytes),
        "float32_folded_bytes": sum(_nbytes(layer_arrays.get(n, {}))
                                    for n in folded.absorbed[op.name]),
        "epilogue_bytes": (_nbytes({k: v for k, v in arrays.items() if k != "kernel"})
                           + sum(_nbytes(folded.arrays[p.name]) for p in pools)),
        "output": op.attrs["output"],
    })
  float32 = sum(l["float32_kernel_bytes"] + l["float32_folded_bytes"] for l in layers)
  packed = sum(l["packed_kernel_bytes"] + l["epilogue_bytes"] for l in layers)
  kernels32 = sum(l["float32_kernel_bytes"] for l in layers)
  kernels1 = sum(l["packed_kernel_bytes"] for l in layers)
  exported = sum(_nbytes(a) for a in folded.arrays.values())
  return {
      "binary_layers": layers,
      "binary_float32_bytes": float32,
      "binary_packed_bytes": packed,
      "binary_ratio": float32 / packed if packed else None,
      "binary_kernel_ratio": kernels32 / kernels1 if kernels1 else None,
      "model_float32_bytes": int(model_float32_bytes),
      "model_exported_bytes": exported,
      "model_ratio": model_float32_bytes / exported if exported else None,
  }


def directory_bytes(path: str) -> int:
  """Total size of the files under `path`."""
  total = 0
  for root, _, files in os.walk(path):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total


def format_report(sizes: Mapping[str, Any]) -> str:
  """The report as a text table (per binary layer, then totals)."""
  rows = [f"{'binary layer':<36} {'weights':>10} {'float32 B':>11} {'packed B':>10} {'ratio':>6}"]
  for l in sizes["binary_layers"]:
    f32 = l["float32_kernel_bytes"] + l["float32_folded_bytes"]
    packed = l["packed_kernel_bytes"] + l["epilogue_bytes"]
    rows.append(f"{l['name']:<36} {l['weights']:>10,} {f32:>11,} {packed:>10,} "
                f"{f32 / packed:>6.1f}")
  rows.append(f"{'binary layers (kernels + folded params)':<47} "
              f"{sizes['binary_float32_bytes']:>11,} {sizes['binary_packed_bytes']:>10,} "
              f"{sizes['binary_ratio'] or 0:>6.1f}")
  rows.append(f"{'binary kernels alone':<47} {'':>11} {'':>10} "
              f"{sizes['binary_kernel_ratio'] or 0:>6.1f}")
  rows.append(f"{'whole model (float32 training model vs exported arrays)':<47} "
              f"{sizes['model_float32_bytes']:>11,} {sizes['model_exported_bytes']:>10,} "
              f"{sizes['model_ratio'] or 0:>6.1f}")
  return "\n".join(rows)
