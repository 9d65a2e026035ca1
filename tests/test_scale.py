"""Notebook 08: LeNet-5 as built in 1998, torchvision's ImageNet networks counted, receptive
fields of branching networks, and deep stacks with and without skip connections."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from cnnlab.models import ConvStack, DeepStack, LeNet5, SmallCNN, count_parameters
from cnnlab.receptive_field import measured_receptive_field, receptive_fields


def test_lenet5_has_the_papers_60000_parameters_up_to_f6_and_its_shapes():
    m = LeNet5()
    per_layer = {n: count_parameters(getattr(m, n)) for n in ("c1", "s2", "c3", "s4", "c5", "f6")}
    assert per_layer == {"c1": 156, "s2": 12, "c3": 1516, "s4": 32, "c5": 48120, "f6": 10164}  # LeCun et al. 1998, section II.B
    assert sum(per_layer.values()) == 60_000
    out = m.c5(torch.nn.Sequential(*list(m.children())[:9])(torch.zeros(2, 1, 28, 28)))
    assert out.shape == (2, 120, 1, 1)  # C5 meets a 5x5 input: one position, a dense layer in effect
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_lenet5_c3_sees_only_the_maps_of_its_connection_table():
    from cnnlab.models import LENET5_C3_TABLE, PartialConv2d

    torch.manual_seed(0)
    conv = PartialConv2d(LENET5_C3_TABLE, 6, 5)
    x = torch.randn(1, 6, 10, 10, requires_grad=True)
    for j, inputs in enumerate(LENET5_C3_TABLE):
        (grad,) = torch.autograd.grad(conv(x)[0, j].sum(), x)
        seen = {i for i in range(6) if grad[0, i].abs().sum() > 0}
        assert seen == set(inputs), f"map {j}"
    # the same as a full convolution whose unconnected kernels are zero (built here kernel by kernel)
    dense = torch.zeros(16, 6, 5, 5)
    k = 0
    for j, inputs in enumerate(LENET5_C3_TABLE):
        for i in inputs:
            dense[j, i] = conv.weight[k].detach()
            k += 1
    assert torch.allclose(conv(x), F.conv2d(x, dense, conv.bias), atol=1e-6)


@pytest.mark.parametrize("model", [
    SmallCNN(), LeNet5(), ConvStack(depth=4, pool_every=2), ConvStack(depth=3, dilation=2, padding=2),
    ConvStack(depth=3, stride=2, padding=1, kernel=5),
], ids=["small-cnn", "lenet5", "pooled", "dilated", "strided"])
def test_measured_receptive_field_agrees_with_the_arithmetic_on_chains(model):
    for row in receptive_fields(model, (1, 28, 28)):
        if row.size[0] < 28:  # inside the image: the measurement sees all of it
            assert measured_receptive_field(model, row.name, input_size=28, in_channels=1) == row.size, row.name


def test_a_skip_connection_adds_paths_not_reach():
    plain, residual = DeepStack(depth=4, width=4), DeepStack(depth=4, width=4, residual=True)
    assert count_parameters(plain) == count_parameters(residual)
    for m in (plain, residual):  # a stride-2 stem (3 px) + 4 convs 2 px apart: 19 pixels either way
        assert measured_receptive_field(m, "relu2", input_size=28, in_channels=1) == (19, 19)
    with torch.no_grad():  # a block whose convolutions give 0 leaves a residual stack's signal as it was
        for block in (residual.block1, plain.block1):
            for p in block.parameters():
                p.zero_()
    x = torch.relu(residual.stem(torch.randn(2, 1, 28, 28)))
    assert torch.allclose(residual.relu1(residual.block1(x)), x)
    assert not torch.allclose(plain.relu1(plain.block1(x)), x)
    with pytest.raises(ValueError, match="even number"):
        DeepStack(depth=3)


def test_imagenet_networks_are_counted_not_quoted():
    from cnnlab.scale import build, count_macs, imagenet_weights

    resnet50 = build("resnet50")
    assert count_parameters(resnet50) == 25_557_032  # the source's "around 25M"
    top1 = {w["weights"]: w["top1"] for w in imagenet_weights("resnet50")}
    assert top1 == {"IMAGENET1K_V1": 76.13, "IMAGENET1K_V2": 80.858}
    resnet18 = build("resnet18")
    documented = imagenet_weights("resnet18")[0]["gflops"]
    assert count_macs(resnet18) / 1e9 == pytest.approx(documented, abs=0.001)  # torchvision's "GFLOPS" are MACs
    with pytest.raises(ValueError, match="no model"):
        build("resnet51")


def test_branching_receptive_fields_match_the_published_values():
    from cnnlab.scale import build

    assert measured_receptive_field(build("alexnet").features, input_size=256) == (195, 195)  # Araujo et al. 2019
    assert receptive_fields(build("alexnet").features, (3, 224, 224))[-1].size == (195, 195)
    # torchvision's ResNet-50 strides in the 3x3 convolutions ("v1.5"): 427; the original (483) in the 1x1s
    assert measured_receptive_field(build("resnet50"), "layer4", input_size=512) == (427, 427)


def test_squeeze_and_excitation_makes_the_field_global_and_layernorm_does_not():
    from cnnlab.scale import build

    effnet = build("efficientnet_b0")
    for size in (48, 96):  # the first block's convolutions alone see 7 px; its SE gate sees everything
        assert measured_receptive_field(effnet, "features.1", input_size=size) == (size, size)
    # ConvNeXt's first stage: a 4x4 stride-4 stem, then three blocks of 7x7 depthwise convolutions
    # (LayerNorm per position in between): 4 + 3 * 6 * 4 = 76 pixels
    assert measured_receptive_field(build("convnext_tiny"), "features.1", input_size=128) == (76, 76)


def test_a_normalisation_over_positions_or_a_dead_path_is_refused_with_the_reason():
    gn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.GroupNorm(2, 4))
    with pytest.raises(TypeError, match="normalises over positions"):
        measured_receptive_field(gn, input_size=16, in_channels=1)
    dead = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Sigmoid(), torch.nn.Hardtanh(-1, 0.5))
    with pytest.raises(ValueError, match="no input pixel"):
        measured_receptive_field(dead, input_size=16, in_channels=1)


def test_a_model_row_measures_again_on_a_bigger_input_when_the_field_fills_it():
    from cnnlab.scale import format_models, model_row

    row = model_row("resnet18", time_it=False, rf_input=256)  # 435 px: fills 128, then 256
    assert (row.receptive_field, row.rf_input, row.rf_text) == (256, 256, ">= 256")
    row = model_row("alexnet", time_it=False, rf_input=512)  # 195 px: fits the first try, 256
    assert (row.receptive_field, row.rf_input, row.rf_text) == (195, 256, "195")
    table = format_models([row])
    assert "61,100,840" in table and "56.52% (V1)" in table and table.splitlines()[-1].endswith("195")
    assert row.year == 2014 and not row.transformer and "2014" in table.splitlines()[-1]


def test_batch_losses_records_every_nth_batch(mnist_small):
    from cnnlab.callbacks import BatchLosses
    from cnnlab.models import LinearClassifier
    from cnnlab.train import fit

    train, test = mnist_small
    rec = BatchLosses(every=5)
    fit(LinearClassifier(), train, test, epochs=1, callbacks=[rec], progress=False, device="cpu")
    assert rec.steps == list(range(5, math.ceil(len(train) / 64) + 1, 5))
    assert all(math.isfinite(v) and v > 0 for v in rec.losses) and rec.losses[-1] < rec.losses[0]
    with pytest.raises(ValueError, match="whole number"):
        BatchLosses(every=0)


def test_models_command_prints_the_table_and_json(capsys):
    from cnnlab.__main__ import main

    assert main(["models", "--names", "resnet18", "--no-time", "--no-rf", "--json"]) == 0
    captured = capsys.readouterr()
    row = json.loads(captured.out.strip().splitlines()[-1])["models"][0]
    assert row["name"] == "resnet18" and row["parameters"] == 11_689_512 and row["top1"] == {"IMAGENET1K_V1": 69.758}
    assert "resnet18" in captured.err and "11,689,512" in captured.err
    assert main(["models", "--names", "resnet51", "--no-time", "--no-rf"]) == 2
    assert "no model 'resnet51'" in capsys.readouterr().err


def test_every_architecture_is_built_as_its_published_weights_count_it_with_a_year():
    from cnnlab.scale import ARCHITECTURES, PAPERS, TRANSFORMERS, build, imagenet_weights

    assert set(PAPERS) == set(ARCHITECTURES) and TRANSFORMERS <= set(ARCHITECTURES)
    assert [PAPERS[n][0] for n in ARCHITECTURES] == sorted(PAPERS[n][0] for n in ARCHITECTURES)  # oldest first
    for name in ARCHITECTURES:  # googlenet without its auxiliary classifiers, as its weights were published
        published = {w["parameters"] for w in imagenet_weights(name) if w["imagenet1k_only"]}
        assert count_parameters(build(name)) in published, name
    swag = {w["weights"]: w["imagenet1k_only"] for w in imagenet_weights("vit_b_16")}
    assert swag == {"IMAGENET1K_V1": True, "IMAGENET1K_SWAG_E2E_V1": False, "IMAGENET1K_SWAG_LINEAR_V1": False}


@pytest.mark.parametrize("name", ["googlenet", "vit_b_16", "swin_t"])
def test_macs_of_attention_and_inception_match_torchvision_documented_gflops(name):
    from cnnlab.scale import build, count_macs, imagenet_weights

    fastpath = torch.backends.mha.get_fastpath_enabled()
    documented = imagenet_weights(name)[0]["gflops"]
    assert count_macs(build(name)) / 1e9 == pytest.approx(documented, abs=0.001)  # ViT's attention counted too
    assert torch.backends.mha.get_fastpath_enabled() == fastpath  # the setting it changes is put back


def test_resnet_fields_add_up_stage_by_stage_from_their_3x3_convolutions():
    from cnnlab.scale import build, field_by_stage

    for name, per_stage, field in (("resnet18", [4, 4, 4, 4], 435), ("resnet50", [3, 4, 6, 3], 427)):
        stages = field_by_stage(build(name))
        assert [s["stage"] for s in stages] == ["stem", "layer1", "layer2", "layer3", "layer4"]
        assert stages[0]["field"] == 11  # a 7x7 stride-2 conv (6 px), then a 3x3 max-pool at jump 2 (4 px)
        assert [len(s["layers"]) for s in stages[1:]] == per_stage  # 16 3x3 convolutions in both
        for s in stages[1:]:
            assert all(kernel == 3 and added == 2 * jump for _, kernel, jump, added in s["layers"])
        assert sum(s["added"] for s in stages) + 1 == stages[-1]["field"] == field
    assert measured_receptive_field(build("resnet18"), "layer4", input_size=512) == (435, 435)


def test_a_vit_token_sees_one_patch_then_after_one_attention_block_the_whole_image():
    from cnnlab.scale import PatchGrid, build, format_models, model_row

    vit = build("vit_b_16")
    assert measured_receptive_field(PatchGrid(vit, blocks=0), input_size=224) == (16, 16)
    row = model_row("vit_b_16", time_it=False)
    assert (row.receptive_field, row.rf_input, row.rf_text) == (224, 224, ">= 224")
    assert row.transformer and row.year == 2020 and row.extra_data == ("IMAGENET1K_SWAG_E2E_V1", "IMAGENET1K_SWAG_LINEAR_V1")
    assert row.best_top1() == ("IMAGENET1K_V1", 81.072) and row.best_top1(imagenet1k_only=False)[1] == 85.304
    table = format_models([row])
    assert "85.30% (SWAG_E2E_V1*)" in table and "* pretrained on more than ImageNet-1K" in table
    assert "first encoder block" in table.splitlines()[-1]


def test_device_none_means_the_best_available_here_too():
    """One meaning of device=None in cnnlab: the best available (pick_device). model_row times on
    the CPU by default, because that is its question; None follows the rule."""
    from cnnlab.device import pick_device
    from cnnlab.scale import model_row

    assert model_row("alexnet", time_it=False, receptive_field=False).device == "cpu"
    assert model_row("alexnet", device=None, time_it=False, receptive_field=False).device == str(pick_device(None))
