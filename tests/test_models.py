"""cnnlab.models: the seed's architecture exactly, computed sizes, the registry."""

import inspect

import pytest
import torch

from cnnlab.models import MODELS, SmallCNN, count_parameters, create_model, shape_table


def test_small_cnn_is_the_seed_architecture():
    model = SmallCNN()
    assert count_parameters(model) == 1_199_882
    shapes = [(name, shape) for name, shape, _ in shape_table(model)]
    assert shapes == [
        ("input", (1, 28, 28)),
        ("conv1", (32, 26, 26)),
        ("relu1", (32, 26, 26)),
        ("conv2", (64, 24, 24)),
        ("relu2", (64, 24, 24)),
        ("pool", (64, 12, 12)),
        ("flatten", (9216,)),
        ("fc1", (128,)),
        ("relu3", (128,)),
        ("dropout", (128,)),
        ("fc2", (10,)),
    ]


def test_parameter_counts_of_the_baselines():
    assert count_parameters(create_model("linear")) == 28 * 28 * 10 + 10
    assert count_parameters(create_model("mlp", hidden=100)) == 784 * 100 + 100 + 100 * 10 + 10


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("in_channels,size,classes", [(1, 28, 10), (3, 32, 7)])
def test_every_model_maps_images_to_class_scores(name, in_channels, size, classes):
    takes_size = "image_size" in inspect.signature(MODELS[name]).parameters
    kwargs = {"image_size": size} if takes_size else {}
    model = create_model(name, in_channels, classes, **kwargs)
    assert model(torch.randn(4, in_channels, size, size)).shape == (4, classes)
    assert model.hparams["in_channels"] == in_channels and model.hparams["num_classes"] == classes


def test_flatten_width_is_computed_from_the_image_size():
    assert SmallCNN(image_size=32).fc1.in_features == 64 * 14 * 14


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError, match="small-cnn"):
        create_model("resnet")


def test_shape_table_leaves_training_mode_alone():
    model = SmallCNN().train()
    shape_table(model)
    assert model.training


def test_small_cnn_with_batchnorm_is_the_same_network_normalised():
    plain, bn = SmallCNN(), SmallCNN(batchnorm=True)
    assert count_parameters(bn) - count_parameters(plain) == 2 * (32 + 64)  # a scale and a shift per channel
    assert [n for n, _ in bn.named_children()][:6] == ["conv1", "bn1", "relu1", "conv2", "bn2", "relu2"]
    assert "batchnorm" not in plain.hparams and bn.hparams["batchnorm"] is True  # saved runs keep their names
    assert create_model("small-cnn", batchnorm=True).hparams == bn.hparams
    assert bn(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
