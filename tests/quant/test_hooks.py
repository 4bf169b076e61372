"""Every calibration recorder leaves the model without hooks once its `with` block ends, also when
the block raises; a hook left behind would go on recording (or rounding) during evaluation."""

import pytest
import torch

from quant_toy import calibration_runner, make_model
from wmquant.quant.recorders import BlockInputRecorder, LinearInputRecorder
from wmquant.quant.stats import ActStatsRecorder


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


RECORDERS = {
    "act_stats": lambda model: ActStatsRecorder(model),
    "linear_inputs": lambda model: LinearInputRecorder(model, ["predictor.blocks.0.mlp.fc1", "encoder.blocks.0.attn.qkv"]),
    "block_inputs": lambda model: BlockInputRecorder(model, max_samples=4),
}


@pytest.mark.parametrize("name", sorted(RECORDERS))
def test_recorder_removes_its_hooks_on_exit_and_on_error(name):
    model = make_model().eval()
    assert _hook_count(model) == 0
    with RECORDERS[name](model) as recorder:
        assert _hook_count(model) > 0
        calibration_runner(model, calls=1)()
    assert _hook_count(model) == 0
    with pytest.raises(RuntimeError, match="planner failed"):
        with RECORDERS[name](model):
            raise RuntimeError("planner failed")
    assert _hook_count(model) == 0
    recorder.remove()  # a second removal is harmless
    assert _hook_count(model) == 0
