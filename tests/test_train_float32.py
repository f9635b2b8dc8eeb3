"""The recipes' float32 settings: chosen by the compute mode a run ends up in, applied, resumed and recorded."""

import dataclasses
import json

import pytest
import torch

from tests.conftest import fake_cpu_flags
from toolkit.checkpoint import load_checkpoint
from toolkit.errors import ConfigError
from toolkit.model import MLP, ConvNet
from toolkit.recipes import RECIPES, config_from_checkpoint, make_config
from toolkit.train import train
from toolkit.train_step import first_layer, frozen_from


def test_a_freeze_by_steps_applies_in_float32_only():
    halfway = make_config("fast", float32_first_layer_steps=0.5)
    assert frozen_from(halfway, steps_per_epoch=100, bf16=True) is None
    assert frozen_from(halfway, steps_per_epoch=100, bf16=False) == 50
    # no recipe freezes by steps: `fast` whitens its first layer instead (tests/test_whiten.py), in either mode
    for name in RECIPES:
        assert frozen_from(make_config(name), steps_per_epoch=100, bf16=False) is None


def test_the_first_layer_is_the_first_with_weights():
    convnet, mlp = ConvNet(), MLP()
    assert first_layer(convnet) is convnet.conv1 and first_layer(mlp) is mlp.hidden[0]


def test_a_checkpoint_from_before_the_float32_settings_trained_every_layer_throughout():
    old = {k: v for k, v in dataclasses.asdict(make_config("fast")).items() if k != "float32_first_layer_steps"}
    assert config_from_checkpoint(old, make_config("fast")).float32_first_layer_steps == 1.0


def test_bad_float32_first_layer_steps_are_refused():
    with pytest.raises(ConfigError, match="float32-first-layer-steps must be a number from 0 to 1"):
        make_config("fast", float32_first_layer_steps=1.5)


def _weights(run_dir, epoch_state=None):
    state = epoch_state or load_checkpoint(run_dir / "checkpoint.pt")
    return {k: v.clone() for k, v in state["state_dict"].items()}


def _two_epochs(tmp_path, mnist_dir, name, **overrides):
    """Two epochs of 10 steps of `fast` with a learned first layer frozen after a quarter of the steps in float32,
    cut after the first and resumed; the weights after each epoch."""
    config = make_config("fast", epochs=2, train_limit=1280, device="cpu", float32_first_layer_steps=0.25,
                         whitened_first_layer=False, **overrides)

    def interrupt(stats, total):
        if stats.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, mnist_dir, tmp_path / name, on_epoch=interrupt)
    first = _weights(tmp_path / name)
    result = train(config, mnist_dir, tmp_path / name, resume=True)
    return config, result, first, _weights(tmp_path / name)


def test_a_float32_run_freezes_its_first_layer_resumes_frozen_and_records_its_mode(tmp_path, mnist_dir):
    config, result, first, last = _two_epochs(tmp_path, mnist_dir, "cut", bf16=False)
    # frozen after 5 of 20 steps, inside the first epoch: the resumed second epoch leaves it as it was
    assert torch.equal(first["conv1.weight"], last["conv1.weight"])
    assert torch.equal(first["conv1.bias"], last["conv1.bias"])
    assert not torch.equal(first["conv2.weight"], last["conv2.weight"])
    straight = train(config, mnist_dir, tmp_path / "straight")
    assert all(torch.equal(w, _weights(tmp_path / "straight")[k]) for k, w in last.items())
    for run in (result, straight):
        assert (run.bf16, run.compute, run.config["float32_first_layer_steps"]) == (False, "float32", 0.25)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["compute"] == "float32"
    assert json.loads((tmp_path / "cut" / "history.json").read_text())["compute"] == "float32"


def test_a_bf16_run_trains_every_layer_throughout(tmp_path, mnist_dir, monkeypatch):
    import toolkit.train

    monkeypatch.setattr(toolkit.train, "bf16_supported", lambda device: True)  # as on a CPU with AVX512-BF16/AMX
    _, result, first, last = _two_epochs(tmp_path, mnist_dir, "bf16")
    assert (result.bf16, result.compute) == (True, "bfloat16")
    assert not torch.equal(first["conv1.weight"], last["conv1.weight"])
    assert load_checkpoint(tmp_path / "bf16" / "checkpoint.pt")["compute"] == "bfloat16"


def test_no_bf16_on_the_command_line_trains_in_float32_and_says_so(tmp_path, mnist_dir):
    from tests.conftest import run_cli

    run_dir = tmp_path / "run"
    result = run_cli("train", "--no-bf16", "--epochs", "1", "--train-limit", "1000", "--out", run_dir,
                     "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    assert "float32, first layer whitened (never trained)" in result.stdout
    assert json.loads((run_dir / "history.json").read_text())["compute"] == "float32"
    assert load_checkpoint(run_dir / "checkpoint.pt")["config"]["bf16"] is False


@pytest.mark.parametrize("flags, native", [({"avx512f", "avx512_vnni"}, False), ({"avx512f", "avx512_bf16"}, True),
                                           ({"avx2", "amx_bf16"}, True)])
def test_bf16_counts_only_where_the_cpu_has_it(monkeypatch, flags, native):
    """oneDNN says yes to bf16 on any AVX-512 CPU and emulates it there: train goes by the CPU's own flags."""
    import toolkit.train

    fake_cpu_flags(monkeypatch, flags)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    assert toolkit.train.bf16_supported("cpu") is native
