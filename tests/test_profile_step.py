"""experiments/profile_step.py: the trace and HLO parsing, and one real profile of a small model."""

import pytest

from experiments import profile_step

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


def test_op_times_sums_complete_events_of_ops_per_step():
  events = [
      {"ph": "X", "name": "ffi_call.3", "dur": 3000},
      {"ph": "X", "name": "ffi_call.3", "dur": 1000},
      {"ph": "X", "name": "fusion.1", "dur": 500},
      {"ph": "B", "name": "fusion.1", "dur": 9000},  # not a complete event
      {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 9000},  # runtime, not an op
      {"ph": "X", "name": "$api.py:2479 block_until_ready", "dur": 9000},  # Python frame
  ]
  ops = {"ffi_call.3", "fusion.1", "copy.2"}
  assert profile_step.op_times(events, 2, ops) == pytest.approx({"ffi_call.3": 2.0,
                                                                 "fusion.1": 0.25})


def test_profile_of_a_small_model_finds_its_convs():
  times, shapes, targets, wall_ms = profile_step.profile(
      "bin_small_cnn", 8, 1, ["model.options.width=0.25"])
  assert wall_ms > 0 and sum(times.values()) > 0  # the trace's events matched the HLO's ops
  kinds = {profile_step.kind_of(op, targets) for op in times}
  assert "xnorjax_xnor_conv_f32_hwio" in kinds or "xnorjax_xnor_conv_packed_hwio" in kinds, kinds
