"""experiments/gpu/kernel_times.py without a GPU: its reading of a profiler trace (a synthetic
XSpace with a GPU plane, in the text form of the proto the profiler writes), and its arguments."""

import jax
import pytest

from experiments.gpu import kernel_times

# Two ops of two calls each: op 1 launches a pre-pass and a main kernel per call, op 2 one kernel;
# 20 ms idle between them. Times in picoseconds from the line's start (timestamp 1000 ns).
_XSPACE = """
planes {
  name: "/device:GPU:0"
  lines {
    name: "Stream #13(Compute)"
    timestamp_ns: 1000
    events { metadata_id: 1 offset_ps: 0 duration_ps: 4000000 }
    events { metadata_id: 2 offset_ps: 5000000 duration_ps: 10000000 }
    events { metadata_id: 1 offset_ps: 60000000 duration_ps: 6000000 }
    events { metadata_id: 2 offset_ps: 67000000 duration_ps: 12000000 }
    events { metadata_id: 3 offset_ps: 20079000000 duration_ps: 7000000 }
    events { metadata_id: 3 offset_ps: 20100000000 duration_ps: 9000000 }
  }
  lines {
    name: "XLA Ops"
    timestamp_ns: 1000
    events { metadata_id: 3 offset_ps: 0 duration_ps: 999000000 }
  }
  event_metadata { key: 1 value { id: 1 name: "void xnorjax::cuda::(anonymous namespace)::PrepassKernel(xnorjax::cuda::ConvShape)" } }
  event_metadata { key: 2 value { id: 2 name: "void xnorjax::cuda::(anonymous namespace)::MmaKernel<(xnorjax::cuda::OutputKind)2, 4>(int)" } }
  event_metadata { key: 3 value { id: 3 name: "sm90_xmma_fprop_implicit_gemm_bf16" } }
}
planes { name: "/host:CPU" lines { name: "python" events { metadata_id: 1 duration_ps: 5 } }
         event_metadata { key: 1 value { id: 1 name: "host work" } } }
"""


def test_trace_is_split_into_ops_and_timed_per_call():
  profile = jax.profiler.ProfileData.from_text_proto(_XSPACE)
  events = kernel_times.kernel_events(profile)
  assert len(events) == 6  # the GPU kernel line only: not "XLA Ops", not the host plane
  groups = kernel_times.split_at_gaps(events, int(kernel_times.GAP_S * 1e9 / 2))
  assert [len(g) for g in groups] == [4, 2]
  first, second = (kernel_times.summarize(g, calls=2) for g in groups)
  assert first["device_us"] == pytest.approx((4 + 10 + 6 + 12) / 2)
  assert first["kernels_per_call"] == 2
  names = {kernel_times.short_name(n): us for n, us in first["kernels"].items()}
  assert names == pytest.approx({"MmaKernel": 11.0, "PrepassKernel": 5.0})
  assert second["device_us"] == pytest.approx(8.0)

  rows = []
  for op, summary in zip(("xnor_packed_mma", "xla_bf16"), (first, second)):
    rows.append(dict(layer="512->512@2", batch=128, op=op, **summary))
  rows.append(dict(layer="512->512@2", batch=128, op="xla_int8", **second))
  text = kernel_times.table(rows)
  assert "| 512->512@2 | 128 | 16.0 | MmaKernel 11.0, PrepassKernel 5.0 | 8.0 | 8.0 | 0.50x |" in text


def test_overlapping_kernels_do_not_open_a_group():
  events = [("a", 0, 100), ("b", 10, 1000), ("c", 500, 10), ("d", 1050, 5), ("e", 5000, 1)]
  assert [[e[0] for e in g] for g in kernel_times.split_at_gaps(events, 100)] == [
      ["a", "b", "c", "d"], ["e"]]


@pytest.mark.parametrize("text", ["512,512", "512,x,2", "0,512,2", "1,2,3,4,5"])
def test_bad_layer_names_the_argument(text):
  with pytest.raises(ValueError, match="--layers"):
    kernel_times.parse_layer(text)
  assert kernel_times.parse_layer("64,128,16") == (64, 128, 16, 128)


def test_runs_on_cpu_and_says_why_nothing_is_timed(capsys):
  kernel_times.main(["--calls=1", "--layers", "32,32,4,1"])
  out = capsys.readouterr().out
  assert "no GPU: no device plane" in out and '"op": "xla_int8"' in out
