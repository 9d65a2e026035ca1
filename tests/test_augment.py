"""cnnlab.augment: per-image affine transforms on the training device, checked against
torchvision's own affine (image by image) and against exact whole-pixel shifts."""

import dataclasses
from dataclasses import asdict

import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from cnnlab.augment import Augment, affine, augment_problem, random_affine
from cnnlab.train import TrainConfig
from cnnlab.transforms import shift_images


@pytest.mark.parametrize("shape", [(28, 28), (20, 32)])
def test_affine_matches_torchvision_image_by_image(shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, *shape, generator=gen)
    dx, dy = torch.tensor([0.0, 1.5, -2.0, 3.0, 0.3]), torch.tensor([0.0, -1.0, 2.5, 0.0, -0.7])
    angle, scale = torch.tensor([0.0, 10.0, -25.0, 40.0, 90.0]), torch.tensor([1.0, 0.9, 1.2, 1.0, 1.1])
    ours = affine(x, dx, dy, angle, scale, fill=0.3)
    covered = affine(torch.ones_like(x), dx, dy, angle, scale) > 0.9999  # edges blend with the fill differently
    for i in range(len(x)):
        ref = TF.affine(x[i], angle=float(angle[i]), translate=[float(dx[i]), float(dy[i])], scale=float(scale[i]),
                        shear=[0.0, 0.0], interpolation=InterpolationMode.BILINEAR, fill=0.3)
        assert covered[i].sum() > 0.5 * covered[i].numel()
        assert torch.allclose(ours[i][covered[i]], ref[covered[i]], atol=1e-5), f"image {i}"


def test_whole_pixel_moves_are_exact_and_uncovered_pixels_get_the_fill():
    x = torch.rand(3, 1, 28, 28)
    out = affine(x, torch.tensor([2.0, -3.0, 0.0]), torch.tensor([1.0, 0.0, -4.0]), torch.zeros(3), torch.ones(3),
                 fill=-0.42)
    expected = torch.stack([shift_images(x[0], 2, 1, -0.42), shift_images(x[1], -3, 0, -0.42),
                            shift_images(x[2], 0, -4, -0.42)])
    assert torch.allclose(out, expected, atol=1e-5)


def test_each_image_of_a_batch_gets_its_own_transform():
    x = torch.rand(1, 1, 28, 28).expand(16, -1, -1, -1).contiguous()  # one image, 16 times
    out, params = random_affine(x, max_shift=2, max_rotate=10, scale=(0.9, 1.1),
                                generator=torch.Generator().manual_seed(1), return_params=True)
    assert len(set(params["angle"].tolist())) == 16 and len(set(params["dx"].tolist())) == 16
    flat = out.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(16)).min() > 1e-3  # no two outputs alike
    assert params["dx"].abs().max() <= 2 and params["angle"].abs().max() <= 10
    assert 0.9 <= params["scale"].min() and params["scale"].max() <= 1.1
    again = random_affine(x, generator=torch.Generator().manual_seed(1))  # the same draws again
    assert torch.equal(again, out)
    # torchvision's v2 transforms, by contrast, move a batch tensor as one: the reason this module exists
    tv = TF.affine(x, angle=7.0, translate=[1.0, 0.0], scale=1.0, shear=[0.0, 0.0])
    assert torch.equal(tv[0], tv[15])


def test_zero_ranges_leave_images_as_they_are_and_bad_ranges_are_refused():
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(random_affine(x, max_shift=0, max_rotate=0, scale=(1, 1)), x, atol=1e-5)
    with pytest.raises(ValueError, match="max_shift must be a number >= 0"):
        random_affine(x, max_shift=-1)
    with pytest.raises(ValueError, match="scale must be a range"):
        random_affine(x, scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="scale must be positive"):
        affine(x, 0.0, 0.0, 0.0, torch.tensor([1.0, 0.0, 1.0, 1.0]))


# ----- Augment: training's augment setting as a frozen dataclass, checked when built -----------------

@pytest.mark.parametrize("fields,message", [
    ({"shift": -1}, "augment's shift must be a number of pixels from 0 to 8, got -1"),
    ({"shift": "2"}, "augment's shift must be a number of pixels from 0 to 8, got '2'"),
    ({"shift": True}, "augment's shift must be a number of pixels"),
    ({"rotate": 500}, "augment's rotate must be a number of degrees from 0 to 180, got 500"),
    ({"rotate": float("nan")}, "augment's rotate must be a number of degrees"),
    ({"scale": 2}, r"augment's scale must be a range \(low, high\) with 0.5 <= low <= high <= 2.0, e.g. \(0.9, 1.1\), got 2"),
    ({"scale": (1.2, 0.8)}, r"augment's scale must be a range \(low, high\)"),
    ({"scale": (0.9,)}, r"augment's scale must be a range \(low, high\)"),
])
def test_augment_refuses_bad_fields_when_built_saying_what_is_allowed(fields, message):
    with pytest.raises(ValueError, match=message):
        Augment(**fields)
    with pytest.raises(ValueError, match=message):  # the dict form, through the same check
        Augment.from_value(fields)
    assert augment_problem(fields) is not None
    with pytest.raises(ValueError, match=message):  # and where training's settings are built
        TrainConfig(augment=fields)


def test_augment_refuses_unknown_fields_and_other_kinds_of_value():
    with pytest.raises(ValueError, match="augment takes shift, rotate and scale, not bogus"):
        Augment.from_value({"bogus": 1})
    with pytest.raises(ValueError, match="augment takes shift, rotate and scale, not bogus"):
        TrainConfig(augment={"bogus": 1})
    with pytest.raises(TypeError, match="bogus"):
        Augment(bogus=1)
    with pytest.raises(ValueError, match="augment takes shift, rotate and scale in a dict or an Augment"):
        Augment.from_value(2)
    with pytest.raises(ValueError, match="augment takes shift, rotate and scale in a dict or an Augment"):
        TrainConfig(augment=[2, 10])


def test_augment_is_frozen_and_hashable():
    a = Augment(shift=2, rotate=10, scale=[0.9, 1.1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.shift = 9  # would otherwise skip the check made when it was built
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.scale = (0.1, 5.0)
    assert a.scale == (0.9, 1.1) and isinstance(a.scale, tuple)  # a list scale kept as a tuple
    assert a == Augment(2, 10, (0.9, 1.1)) and hash(a) == hash(Augment(2, 10, (0.9, 1.1)))


def test_augment_and_its_dict_form_convert_both_ways():
    from cnnlab import runs

    a = Augment(**runs.AUGMENT)
    assert (a.shift, a.rotate, a.scale) == (2, 10, (0.9, 1.1))
    assert a.to_dict() == runs.AUGMENT and type(a.to_dict()["scale"]) is list
    assert type(a.to_dict()["rotate"]) is type(runs.AUGMENT["rotate"])  # 10 stays 10, not 10.0: the same json
    assert Augment.from_value(runs.AUGMENT) == a and Augment.from_value(a) is a and Augment.from_value(None) is None
    assert Augment.from_value({"shift": 2}) == Augment(shift=2)
    assert Augment(shift=2).to_dict() == {"shift": 2}  # what is left at its default is left out, as in a dict
    assert Augment().to_dict() == {}
    assert augment_problem(a) is None


def test_a_config_built_with_an_augment_is_the_one_built_with_its_dict(monkeypatch):
    """The config keeps the plain dict, so a saved run's name (a hash of the config) does not
    depend on which form was given, and today's settings name the runs they named before."""
    from cnnlab import runs
    from cnnlab.models import create_model
    from cnnlab.train import make_config

    monkeypatch.delenv("CNNLAB_SMOKE", raising=False)

    class FullMnist:  # what run_path reads of the training set: its name and size
        name = "mnist"

        def __len__(self):
            return 60_000

    for dict_form, augment in [(runs.AUGMENT, Augment(**runs.AUGMENT)), ({"shift": 2}, Augment(shift=2)),
                               ({"rotate": 10, "scale": (0.9, 1.1)}, Augment(rotate=10, scale=(0.9, 1.1)))]:
        with_dict, with_augment = TrainConfig(augment=dict_form), TrainConfig(augment=augment)
        assert type(with_augment.augment) is dict
        assert json_form(asdict(with_augment)) == json_form(asdict(with_dict))
    assert asdict(TrainConfig(augment=Augment(**runs.AUGMENT))) == asdict(TrainConfig(augment=runs.AUGMENT))
    assert TrainConfig(augment=Augment(**runs.AUGMENT)).augment == runs.AUGMENT

    for name in ("modern-cnn-aug", "modern-cnn"):
        settings = runs.series_settings(name)
        assert settings["augment"] == runs.AUGMENT
        model = runs.series_model(name)
        by_dict = runs.run_path(name, model, FullMnist(), asdict(make_config(**settings)))
        by_augment = runs.run_path(name, model, FullMnist(),
                                   asdict(make_config(**settings | {"augment": Augment(**runs.AUGMENT)})))
        assert by_augment.name == by_dict.name
        plain = runs.run_path(name, model, FullMnist(), asdict(make_config(**settings | {"augment": None})))
        assert plain.name != by_dict.name  # the name does depend on the augmentation
    tiny = create_model("linear")
    assert (runs.run_path("x", tiny, FullMnist(), asdict(TrainConfig(augment=Augment(shift=2)))).name
            == runs.run_path("x", tiny, FullMnist(), asdict(TrainConfig(augment={"shift": 2}))).name)


def json_form(config: dict) -> str:
    import json

    return json.dumps(config, sort_keys=True, default=str)


def test_fit_trains_the_same_with_an_augment_as_with_its_dict(mnist_small):
    from cnnlab.models import LinearClassifier
    from cnnlab.train import Callback, fit, seed_everything

    train, _ = mnist_small
    data = train.subset(range(128))

    class FirstBatch(Callback):
        def after_batch(self, state):
            if state.step == 1:
                self.xb = state.xb.clone()

    results = []
    for augment in ({"shift": 2, "rotate": 10, "scale": [0.9, 1.1]}, Augment(shift=2, rotate=10, scale=(0.9, 1.1))):
        seed_everything(0)
        model, seen = LinearClassifier(), FirstBatch()
        h = fit(model, data, epochs=1, batch_size=64, device="cpu", progress=False, augment=augment, callbacks=[seen])
        results.append((seen.xb, model.fc.weight.detach().clone(), h.config["augment"]))
    seed_everything(0)
    plain = FirstBatch()
    fit(LinearClassifier(), data, epochs=1, batch_size=64, device="cpu", progress=False, callbacks=[plain])
    (xb_dict, w_dict, cfg_dict), (xb_aug, w_aug, cfg_aug) = results
    assert torch.equal(xb_dict, xb_aug) and torch.equal(w_dict, w_aug)
    assert cfg_dict == cfg_aug == {"shift": 2, "rotate": 10, "scale": [0.9, 1.1]}
    assert int(((xb_aug - plain.xb).flatten(1).abs().amax(1) > 1e-3).sum()) >= 60  # the same images, each moved
