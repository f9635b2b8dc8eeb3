"""The `fast` recipe's first layer: set from the training images' patches by whitening, and never trained."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from toolkit import data as mnist
from toolkit.checkpoint import load_checkpoint
from toolkit.errors import ConfigError
from toolkit.recipes import config_from_checkpoint, make_config
from toolkit.train import train
from toolkit.train_step import build_training
from toolkit.whiten import EPS, whitening_filters


@pytest.fixture(scope="module")
def images(mnist_dir):
    train_x, _ = mnist.load_split(mnist_dir, "train")
    return mnist.to_tensor(train_x[:1000])


def test_the_filters_are_whitened_patch_directions_and_their_negations(images):
    filters = whitening_filters(images, 20, 5)
    assert filters.shape == (20, 1, 5, 5) and filters.dtype == torch.float32
    top, negated = filters[:10].reshape(10, 25), filters[10:].reshape(10, 25)
    assert torch.equal(negated, -top)
    # each direction's response over the images' patches has second moment eigenvalue / (eigenvalue + eps), near 1
    # for these (the 10 largest eigenvalues of normalized MNIST patches are far above eps), and the responses are
    # uncorrelated: the filters whiten the patches along their top directions
    patches = F.unfold(images, 5).transpose(1, 2).reshape(-1, 25).double()
    responses = patches @ top.double().T
    moments = responses.T @ responses / len(responses)
    assert torch.allclose(moments.diagonal(), torch.ones(10, dtype=torch.float64), atol=0.1)
    assert (moments - torch.diag(moments.diagonal())).abs().max() < 1e-3
    assert EPS > 0


def test_a_fast_run_keeps_its_whitened_first_layer_as_set_and_trains_the_rest(tmp_path, mnist_dir, images):
    config = make_config("fast", train_limit=1280, device="cpu", bf16=False)
    assert config.whitened_first_layer
    result = train(config, mnist_dir, tmp_path / "run")
    assert result.whitened_first_layer
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["state_dict"]
    train_x, _ = mnist.load_split(mnist_dir, "train")
    expected = whitening_filters(mnist.to_tensor(train_x[:1280]), 20, 5)
    assert torch.equal(state["conv1.weight"], expected) and not state["conv1.bias"].any()
    assert result.test_accuracy > 50.0  # the layers above it learn: 10 steps on 1,280 images, chance is 10%


def test_a_model_whose_first_layer_is_linear_trains_it(tmp_path, mnist_dir):
    result = train(make_config("fast", model="mlp", train_limit=1280, device="cpu", bf16=False), mnist_dir,
                   tmp_path / "mlp")
    assert not result.whitened_first_layer
    assert result.config["whitened_first_layer"] is False  # the run's record says what ran, not what was asked
    assert json.loads((tmp_path / "mlp" / "history.json").read_text())["config"]["whitened_first_layer"] is False
    model, *_ = build_training(make_config("fast", model="mlp"), "cpu", 10, torch.zeros(4, 1, 28, 28))
    assert model.hidden[0].weight.requires_grad


def test_whitening_needs_the_training_images():
    with pytest.raises(ConfigError, match="set from the training images"):
        build_training(make_config("fast"), "cpu", 10)


def test_a_checkpoint_from_before_whitening_learned_its_first_layer():
    old = {k: v for k, v in dataclasses.asdict(make_config("fast")).items() if k != "whitened_first_layer"}
    assert config_from_checkpoint(old, make_config("fast")).whitened_first_layer is False
