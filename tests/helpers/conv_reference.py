"""Float conv references shared by the conv test modules: a numpy conv, the gradients of every
formulation, and a data-parallel run of conv2d over four simulated devices."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from xnorjax.ops import conv2d


def numpy_same_pads(n, k, s):
  out = -(-n // s)
  total = max((out - 1) * s + k - n, 0)
  return total // 2, total - total // 2


def numpy_conv2d(x, kernel, strides, padding, pad_value):
  """Reference: pad with pad_value, then a direct sum over windows in float64."""
  x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  kh, kw = kernel.shape[:2]
  sh, sw = strides
  if padding == "SAME":
    pads = (numpy_same_pads(x.shape[1], kh, sh), numpy_same_pads(x.shape[2], kw, sw))
  elif padding == "VALID":
    pads = ((0, 0), (0, 0))
  elif isinstance(padding, int):
    pads = ((padding, padding), (padding, padding))
  else:
    pads = padding
  xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=pad_value)
  ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
  out = np.zeros((x.shape[0], ho, wo, kernel.shape[3]))
  for i in range(ho):
    for j in range(wo):
      window = xp[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :]
      out[:, i, j, :] = np.einsum("nhwc,hwco->no", window, kernel)
  return out


def formulation_grads(x, kernel, cotangent, formulations, **conv_kwargs):
  """{formulation: jax.grad of sum(conv2d(x, kernel, formulation=f, **conv_kwargs) * cotangent)
  with respect to (x, kernel)}, each jitted."""
  grads = {}
  for formulation in formulations:
    loss = lambda a, b, f=formulation: jnp.sum(
        conv2d(a, b, formulation=f, **conv_kwargs) * cotangent)
    grads[formulation] = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
  return grads


DATA_PARALLEL_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from xnorjax.ops import conv as conv_lib
    formulation, size = sys.argv[1], int(sys.argv[2])
    conv_lib._KERNEL_GRAD_CHUNK_BYTES = 1  # lax_padded would split the batch into single examples
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((16, size, size, 8)).astype(np.float32)
    k_np = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    loss = lambda f: lambda a, b: jnp.sum(conv_lib.conv2d(a, b, formulation=f) ** 2)
    want = jax.grad(loss("lax"), argnums=(0, 1))(x_np, k_np)
    # A mesh with automatic axes (as experiments.trainer makes) and one with explicit axes.
    for mesh in (Mesh(np.array(jax.devices()), ("b",)), jax.make_mesh((4,), ("b",))):
      with jax.set_mesh(mesh):
        x = jax.device_put(x_np, NamedSharding(mesh, P("b")))
        k = jax.device_put(k_np, NamedSharding(mesh, P()))
        grad = jax.jit(jax.grad(loss(formulation), argnums=(0, 1)))
        hlo = grad.lower(x, k).compile().as_text()
        target = {"native": "xnorjax_float_conv_kernel_grad",
                  "winograd": "xnorjax_winograd_kernel_grad"}.get(formulation, "")
        assert target in hlo
        assert "all-gather" not in hlo and "all-reduce" in hlo, mesh.axis_types
        gx, gk = grad(x, k)
        assert gx.sharding.spec[0] == "b", gx.sharding
        # float32 sums of 1,000 terms in another order; Winograd F(4x4, 3x3) rounds ~10x more
        tol = 5e-5 if formulation == "winograd" else 1e-5
        for got, ref in zip((gx, gk), want):
          np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=tol,
                                     atol=tol * float(np.abs(ref).max()))
    print("OK")
""")


def run_data_parallel_script(formulation: str, size: int = 8):
  """Gradients of `formulation` with the batch of (size x size) maps sharded over 4 simulated CPU
  devices: equal to lax's on one device, the kernel gradient all-reduced, nothing all-gathered."""
  result = subprocess.run([sys.executable, "-c", DATA_PARALLEL_SCRIPT, formulation, str(size)],
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0 and "OK" in result.stdout, result.stdout + result.stderr
