import math

import pytest
import torch

from toolkit.errors import ConfigError
from toolkit.model import MLP, ConvNet, build_model, count_parameters, forward_flops, layer_flops


def test_convnet_is_the_notebooks_architecture():
    model = ConvNet()
    assert count_parameters(model) == 431_080  # the notebook's text says 410,100, wrongly
    names = [name for name, _ in model.named_children()]
    assert names == ["conv1", "conv2", "fc_layer1", "fc_layer2"]
    assert (model.conv1.in_channels, model.conv1.out_channels, model.conv1.kernel_size) == (1, 20, (5, 5))
    assert (model.conv2.in_channels, model.conv2.out_channels) == (20, 50)
    assert (model.fc_layer1.in_features, model.fc_layer1.out_features) == (800, 500)
    assert forward_flops(model) == 4_586_000  # the 4.59 MFLOP per image the benchmark uses
    # multiply-adds by hand: output elements times the inputs each one sums
    assert layer_flops(model) == {"conv1": 2 * 20 * 24 * 24 * 25, "conv2": 2 * 50 * 8 * 8 * 500,
                                  "fc_layer1": 2 * 500 * 800, "fc_layer2": 2 * 10 * 500}


def test_outputs_are_log_probabilities():
    out = ConvNet()(torch.randn(7, 1, 28, 28))
    assert out.shape == (7, 10)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(7))


def test_mlp_is_of_similar_size_and_glorot_initialized():
    torch.manual_seed(0)
    mlp = MLP()
    assert abs(count_parameters(mlp) - 431_080) / 431_080 < 0.01
    layer = mlp.hidden[0]
    bound = math.sqrt(6 / (layer.in_features + layer.out_features))
    assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
    assert torch.all(layer.bias == 0)
    assert mlp(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model 'resnet'"):
        build_model("resnet")


def test_the_torch_free_model_names_are_the_models():
    from toolkit.model import MODELS
    from toolkit.recipes import MODEL_NAMES

    assert tuple(MODELS) == MODEL_NAMES
