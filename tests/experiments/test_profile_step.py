"""experiments/bench/profile_step.py: the trace and HLO parsing, and one real profile of a small model."""

import pytest

from experiments.bench import profile_step

HLO = """
  %ffi_call.3 = f32[8,4,4,16]{3,2,1,0} custom-call(%x, %u), custom_call_target="xnorjax_winograd_conv", api_version=API_VERSION_TYPED_FFI
  %copy_bitcast_fusion.12 = f32[9,64]{1,0} fusion(%copy.99), kind=kLoop, calls=%fused_computation.290
  ROOT %tuple.7 = (f32[2]{0}, f32[]) tuple(%a, %b)
"""


def test_hlo_ops_reads_shapes_and_ffi_targets():
  shapes, targets = profile_step.hlo_ops(HLO)
  assert shapes["ffi_call.3"] == "f32[8,4,4,16]{3,2,1,0}"
  assert shapes["copy_bitcast_fusion.12"] == "f32[9,64]{1,0}"
  assert targets == {"ffi_call.3": "xnorjax_winograd_conv"}
  assert profile_step.kind_of("ffi_call.3", targets) == "xnorjax_winograd_conv"
  assert profile_step.kind_of("copy_bitcast_fusion.12", targets) == "copy_bitcast_fusion"


def test_op_times_takes_each_ops_median_step():
  """Three steps; ffi_call.3 runs twice a step, fusion.1 once; one step of fusion.1 is slow."""
  events = [
      {"ph": "X", "name": "ffi_call.3", "ts": 0, "dur": 3000},
      {"ph": "X", "name": "fusion.1", "ts": 1, "dur": 500},
      {"ph": "X", "name": "ffi_call.3", "ts": 2, "dur": 1000},
      {"ph": "X", "name": "ffi_call.3", "ts": 10, "dur": 2000},
      {"ph": "X", "name": "fusion.1", "ts": 11, "dur": 30000},  # one slow step
      {"ph": "X", "name": "ffi_call.3", "ts": 12, "dur": 1000},
      {"ph": "X", "name": "ffi_call.3", "ts": 20, "dur": 3000},
      {"ph": "X", "name": "fusion.1", "ts": 21, "dur": 700},
      {"ph": "X", "name": "ffi_call.3", "ts": 22, "dur": 2000},
      {"ph": "X", "name": "copy.2", "ts": 23, "dur": 900},  # twice in three steps: the mean
      {"ph": "X", "name": "copy.2", "ts": 24, "dur": 600},
      {"ph": "B", "name": "fusion.1", "ts": 25, "dur": 9000},  # not a complete event
      {"ph": "X", "name": "ThunkExecutor::Execute", "ts": 26, "dur": 9000},  # runtime, not an op
      {"ph": "X", "name": "$api.py:2479 block_until_ready", "ts": 27, "dur": 9000},  # Python
  ]
  ops = {"ffi_call.3", "fusion.1", "copy.2", "dot.4"}
  # ffi_call.3's steps: 4, 3, 5 ms -> 4; fusion.1's: 0.5, 30, 0.7 -> 0.7; copy.2: 1.5 / 3.
  assert profile_step.op_times(events, 3, ops) == pytest.approx({"ffi_call.3": 4.0,
                                                                 "fusion.1": 0.7, "copy.2": 0.5})


def test_profile_of_a_small_model_finds_its_convs():
  times, shapes, targets, wall_ms = profile_step.profile(
      "bin_small_cnn", 8, 1, ["model.options.width=0.25"])
  assert wall_ms > 0 and sum(times.values()) > 0  # the trace's events matched the HLO's ops
  kinds = {profile_step.kind_of(op, targets) for op in times}
  assert "xnorjax_xnor_conv_f32_hwio" in kinds or "xnorjax_xnor_conv_packed_hwio" in kinds, kinds
