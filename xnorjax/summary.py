"""`xnorjax.summary(model, input_shape)`: a larq-style summary of a Flax NNX model.

  import xnorjax
  s = xnorjax.summary(model, (1, 32, 32, 3))   # prints the table, returns a ModelSummary
  s.compression_factor, s.binary_mac_fraction, s.to_markdown(), s.to_dict()

One row per module that owns variables or multiply-accumulates, in the order the forward pass calls
them, with the type, output shape, float and binary parameter counts, memory at 32 bits and
packed, MACs and the binary share of them. What is counted:

  * Parameters are the `nnx.Param` variables. A parameter is *binary* when it is the `kernel` of an
    `xnorjax.nn.BinaryConv` / `BinaryDense` with a kernel_quantizer (the weights that a packed
    kernel stores as one bit each); every other parameter is float. BatchNorm statistics
    (`nnx.BatchStat`) are non-trainable *state*: not parameters, but in the memory columns.
    Everything else (RNG state, intermediates) is ignored.
  * Memory at 32 bits: 4 bytes per parameter and per state value (the float model).
    Packed memory: binary kernels at 1 bit per weight (bits / 8 bytes; a real packed layout may
    pad each output channel to a whole 32-bit word), plus one float32 scale per output channel
    when the kernel quantizer is magnitude-aware (alpha = mean |W|) or a custom callable (assumed
    scaled), none for `ste_sign` / `approx_sign`; float parameters and state at 4 bytes.
    compression_factor = memory at 32 bits / packed memory.
  * MACs per example of conv and dense layers (`BinaryConv`, `BinaryDense`, `nnx.Conv`,
    `nnx.Linear`): output elements per example / output channels * kernel size, i.e.
    OH*OW*KH*KW*Cin*Cout for a conv (Cin per group) and in*out for a dense layer. A layer's MACs
    are binary when both its kernel and its input are binarized: the layer has a kernel_quantizer
    and an input_quantizer, or its parent module holds a non-None `input_quantizer` that
    binarizes the layer's input before the call (as NIN's dropout block does).
    BatchNorm, pooling and activations are not counted as MACs.

Output shapes come from an abstract forward pass (`jax.eval_shape`, model copy in eval mode, so no
FLOPs and no change to `model`); `__call__` of the model's module classes is wrapped while it is
traced to record each call, so do not trace the same classes on another thread meanwhile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any, Callable, Optional, Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from xnorjax import quantizers
from xnorjax.nn import binary_layers

_MAC_LAYERS = (binary_layers.BinaryConv, binary_layers.BinaryDense, nnx.Conv, nnx.Linear)
_BINARY_LAYERS = (binary_layers.BinaryConv, binary_layers.BinaryDense)
_UNSCALED_QUANTIZERS = (quantizers.ste_sign, quantizers.approx_sign)
BYTES_PER_FLOAT = 4


@dataclasses.dataclass(frozen=True)
class LayerSummary:
  """One row: a module with its own variables (not its submodules') and its MACs per example."""
  path: str                  # e.g. "stages.0.1.conv"; "" for the root module.
  type: str                  # class name
  output_shape: Any          # shape tuple of the first call's output (pytree of them); None if not called.
  float_params: int
  binary_params: int
  state: int                 # non-trainable values (BatchNorm statistics)
  scale_factors: int         # float32 scales stored with the packed binary kernel (alpha per channel)
  macs: int                  # multiply-accumulates per example
  binary_macs: int           # those with binarized kernel and input
  input_bits: Optional[int] = None   # conv / dense layers: 1 or 32
  kernel_bits: Optional[int] = None

  @property
  def params(self) -> int:
    return self.float_params + self.binary_params

  @property
  def memory_float32(self) -> float:
    """Bytes with every parameter and state value at 32 bits."""
    return BYTES_PER_FLOAT * (self.params + self.state)

  @property
  def memory_packed(self) -> float:
    """Bytes with binary kernels at 1 bit per weight plus their float32 scales."""
    return BYTES_PER_FLOAT * (self.float_params + self.state + self.scale_factors) + self.binary_params / 8


@dataclasses.dataclass(frozen=True)
class ModelSummary:
  """The rows and totals; `str()` / `to_text()` is the printed table."""
  model_type: str
  input_shape: tuple[int, ...]
  layers: tuple[LayerSummary, ...]

  def _sum(self, field: str):
    return sum(getattr(layer, field) for layer in self.layers)

  float_params = property(lambda self: self._sum("float_params"))
  binary_params = property(lambda self: self._sum("binary_params"))
  params = property(lambda self: self._sum("params"))
  state = property(lambda self: self._sum("state"))
  macs = property(lambda self: self._sum("macs"))
  binary_macs = property(lambda self: self._sum("binary_macs"))
  memory_float32 = property(lambda self: self._sum("memory_float32"))
  memory_packed = property(lambda self: self._sum("memory_packed"))

  @property
  def compression_factor(self) -> float:
    return self.memory_float32 / self.memory_packed if self.memory_packed else float("nan")

  @property
  def binary_mac_fraction(self) -> float:
    return self.binary_macs / self.macs if self.macs else 0.0

  def to_dict(self) -> dict:
    """JSON-ready: rows (with their memory) and totals."""
    rows = []
    for layer in self.layers:
      row = dataclasses.asdict(layer)
      row.update(memory_float32=layer.memory_float32, memory_packed=layer.memory_packed)
      rows.append(row)
    totals = {k: getattr(self, k) for k in (
        "params", "float_params", "binary_params", "state", "memory_float32", "memory_packed",
        "compression_factor", "macs", "binary_macs", "binary_mac_fraction")}
    return {"model_type": self.model_type, "input_shape": list(self.input_shape), "layers": rows,
            "totals": totals}

  # ---- Rendering ----

  def table(self) -> tuple[list[str], list[list[str]]]:
    """Header and rows of strings (the totals row last)."""
    header = ["Layer", "Type", "Bits in/w", "Output shape", "# 32-bit", "# 1-bit", "Memory 32-bit",
              "Memory packed", "MACs", "1-bit MACs"]
    rows = []
    for layer in self.layers:
      bits = f"{layer.input_bits}/{layer.kernel_bits}" if layer.kernel_bits else "-"
      share = f"{100 * layer.binary_macs / layer.macs:.0f}%" if layer.macs else "-"
      rows.append([layer.path or "(root)", layer.type, bits, _shape_text(layer.output_shape),
                   f"{layer.float_params:,}", f"{layer.binary_params:,}",
                   format_bytes(layer.memory_float32), format_bytes(layer.memory_packed),
                   f"{layer.macs:,}" if layer.macs else "-", share])
    rows.append(["Total", "", "", "", f"{self.float_params:,}", f"{self.binary_params:,}",
                 format_bytes(self.memory_float32), format_bytes(self.memory_packed),
                 f"{self.macs:,}", f"{100 * self.binary_mac_fraction:.1f}%"])
    return header, rows

  def totals_lines(self) -> list[str]:
    return [
        f"Parameters: {self.params:,} ({self.float_params:,} float, {self.binary_params:,} binary); "
        f"non-trainable state (BatchNorm statistics): {self.state:,}",
        f"Memory: {format_bytes(self.memory_float32)} at 32 bits, {format_bytes(self.memory_packed)} "
        f"with packed binary kernels: compression factor {self.compression_factor:.2f}x",
        f"MACs per example: {self.macs:,}, of which binary {self.binary_macs:,} "
        f"({100 * self.binary_mac_fraction:.1f}%)",
    ]

  def to_text(self) -> str:
    header, rows = self.table()
    title = f"{self.model_type} summary (input shape {tuple(self.input_shape)})"
    return "\n".join([title, _text_table(header, rows), *self.totals_lines()])

  def to_markdown(self) -> str:
    header, rows = self.table()
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(
        "---" if i < 4 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines + [""] + [f"- {line}" for line in self.totals_lines()])

  def __str__(self) -> str:
    return self.to_text()


def format_bytes(n: float) -> str:
  for unit, scale in (("MiB", 2 ** 20), ("KiB", 2 ** 10)):
    if n >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{n:.1f} B" if n != int(n) else f"{int(n)} B"


def _shape_text(shape) -> str:
  if shape is None:
    return "-"
  if isinstance(shape, tuple) and all(isinstance(d, int) for d in shape):
    return str(shape)
  return str(jax.tree.map(tuple, shape, is_leaf=lambda s: isinstance(s, tuple)))


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  right = [i >= 4 for i in range(len(header))]

  def line(cells):
    return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

  rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
  return "\n".join([rule, line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1]), rule])


# ------------------------------------------------------------------------------------------------
# Counting.
# ------------------------------------------------------------------------------------------------

def _path_text(path) -> str:
  return ".".join(str(p) for p in path)


def _check_input_shape(input_shape) -> tuple[int, ...]:
  try:
    shape = tuple(input_shape)
  except TypeError:
    shape = None
  if (not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
    raise ValueError("input_shape must be a non-empty sequence of positive ints including the batch "
                     f"dimension, e.g. (1, 32, 32, 3); got {input_shape!r}")
  return shape


def _is_scaled(quantizer) -> bool:
  """Whether a packed kernel of this quantizer needs a float scale per output channel."""
  fn = quantizer.func if isinstance(quantizer, functools.partial) else quantizer
  return fn not in _UNSCALED_QUANTIZERS


@contextlib.contextmanager
def _recording_calls(classes, record: Callable):
  """Wraps `cls.__call__` of each class to report (self, output) and the call's start order."""
  originals = {cls: (cls.__dict__.get("__call__"), cls.__call__) for cls in classes}

  def wrap(call):
    @functools.wraps(call)
    def wrapped(self, *args, **kwargs):
      slot = record(self, None)
      out = call(self, *args, **kwargs)
      record(self, out, slot)
      return out
    return wrapped

  try:
    for cls, (_, call) in originals.items():
      cls.__call__ = wrap(call)
    yield
  finally:
    for cls, (own, _) in originals.items():
      if own is None:
        del cls.__call__
      else:
        cls.__call__ = own


def _trace_calls(model: nnx.Module, input_shape, dtype) -> list[tuple[tuple, Any]]:
  """[(module path, output shapes)] of every module call, in call order, from an abstract pass."""
  graphdef, state = nnx.split(model)
  classes = {type(m) for _, m in nnx.iter_modules(model)}
  calls = []

  def forward(state, x):
    copy = nnx.merge(graphdef, state)
    copy.eval()
    paths = {id(m): tuple(p) for p, m in nnx.iter_modules(copy)}

    def record(module, out, slot=None):
      if id(module) not in paths:
        return None
      if slot is None:
        calls.append([paths[id(module)], None])
        return len(calls) - 1
      calls[slot][1] = jax.tree.map(lambda a: tuple(a.shape), out)
      return slot

    with _recording_calls(classes, record):
      return copy(x)

  try:
    jax.eval_shape(forward, state, jax.ShapeDtypeStruct(input_shape, dtype))
  except (TypeError, ValueError) as e:
    raise ValueError(f"the model cannot run on input_shape={input_shape}: {type(e).__name__}: {e}") from e
  return [tuple(c) for c in calls]


def compute_summary(model: nnx.Module, input_shape: Sequence[int], *,
                    dtype=jnp.float32) -> ModelSummary:
  """The ModelSummary of `model` on inputs of `input_shape` (batch dimension first); no printing."""
  if not isinstance(model, nnx.Module):
    raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}")
  input_shape = _check_input_shape(input_shape)
  batch = input_shape[0]
  calls = _trace_calls(model, input_shape, dtype)

  modules = {tuple(p): m for p, m in nnx.iter_modules(model)}
  owner_of = {}  # variable path -> owning module path (the longest module-path prefix)
  counts = {p: {"float_params": 0, "binary_params": 0, "state": 0} for p in modules}
  variables = [*nnx.to_flat_state(nnx.state(model, nnx.Param)),
               *nnx.to_flat_state(nnx.state(model, nnx.BatchStat))]
  for var_path, var in variables:
    var_path = tuple(var_path)
    owner = max((p for p in modules if var_path[:len(p)] == p), key=len)
    owner_of[var_path] = owner
    module = modules[owner]
    size = math.prod(var.get_value().shape)
    if isinstance(var, nnx.BatchStat):
      counts[owner]["state"] += size
    elif (isinstance(module, _BINARY_LAYERS) and module.kernel_quantizer is not None
          and var_path == owner + ("kernel",)):
      counts[owner]["binary_params"] += size
    else:
      counts[owner]["float_params"] += size

  first_output, macs, binary_macs, order = {}, {}, {}, []
  for path, out in calls:
    if path not in first_output:
      first_output[path] = out
      order.append(path)
    module = modules[path]
    if isinstance(module, _MAC_LAYERS) and isinstance(out, tuple):
      kernel = module.kernel.get_value()
      n = math.prod(out) // out[-1] * math.prod(kernel.shape) // batch
      macs[path] = macs.get(path, 0) + n
      if _binary_input(modules, path) and _binary_kernel(module):
        binary_macs[path] = binary_macs.get(path, 0) + n

  rows = []
  listed = order + [p for p in sorted(modules, key=_path_text) if p not in first_output]
  for path in listed:
    module, c = modules[path], counts[path]
    is_mac = isinstance(module, _MAC_LAYERS)
    if not (is_mac or any(c.values())):
      continue
    scales = (module.kernel.get_value().shape[-1]
              if _binary_kernel(module) and _is_scaled(module.kernel_quantizer) else 0)
    rows.append(LayerSummary(
        path=_path_text(path), type=type(module).__name__, output_shape=first_output.get(path),
        float_params=c["float_params"], binary_params=c["binary_params"], state=c["state"],
        scale_factors=scales, macs=macs.get(path, 0), binary_macs=binary_macs.get(path, 0),
        input_bits=(1 if _binary_input(modules, path) else 32) if is_mac else None,
        kernel_bits=(1 if _binary_kernel(module) else 32) if is_mac else None))
  return ModelSummary(type(model).__name__, input_shape, tuple(rows))


def _binary_kernel(module) -> bool:
  return isinstance(module, _BINARY_LAYERS) and module.kernel_quantizer is not None


def _binary_input(modules, path) -> bool:
  """The layer binarizes its input, or its parent does before calling it (see the module doc)."""
  if getattr(modules[path], "input_quantizer", None) is not None:
    return True
  parent = modules.get(path[:-1]) if path else None
  return parent is not None and getattr(parent, "input_quantizer", None) is not None


def summary(model: nnx.Module, input_shape: Sequence[int], *, dtype=jnp.float32,
            print_fn: Optional[Callable[[str], Any]] = print) -> ModelSummary:
  """Prints (with `print_fn`; None for silence) and returns the summary of `model`.

  Args:
    model: a Flax NNX module; it is not modified (a copy runs abstractly, in eval mode).
    input_shape: the input's shape including the batch dimension, e.g. (1, 32, 32, 3); MACs are
      reported per example.
    dtype: the input dtype of the abstract forward pass.
    print_fn: called with the table's text (e.g. `logging.info`).
  """
  result = compute_summary(model, input_shape, dtype=dtype)
  if print_fn is not None:
    print_fn(result.to_text())
  return result
