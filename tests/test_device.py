"""The device rule (cnnlab.device): picking and validating devices, and every public function
that takes a model or tensors, with the model and its inputs on different devices.

On a CPU-only machine two tricks make the "tensor made on the wrong device" mistakes fail:

- *poisoned*: PyTorch's default device is set to ``meta`` while the function runs, so any tensor
  it makes without saying where lands on ``meta``, and a check on every torch call
  (:class:`StrictDevices`) fails when one call mixes devices, as a GPU would;
- shape-only functions also run on a model moved to ``meta`` (no memory, no arithmetic).

On a machine with CUDA the same cases also run with the model on the GPU and the inputs on the
CPU, the reverse, and both on the GPU.
"""

from __future__ import annotations

import contextlib

import matplotlib.pyplot as plt
import pytest
import torch
import torch.utils._pytree as pytree
from torch.overrides import TorchFunctionMode

from cnnlab import augment, conv, drawing, hooks, metrics, receptive_field, saliency, transforms, viz
from cnnlab.device import DeviceError, available_devices, model_device, pick_device
from cnnlab.models import ConvStack, SmallCNN, shape_table
from cnnlab.report import compare
from cnnlab.train import evaluate, fit, predict, predict_ensemble, seed_everything

CUDA = torch.cuda.is_available()
#: (model's device, inputs' device) pairs this machine can run.
PAIRS = [("cpu", "cpu")] + ([("cuda", "cpu"), ("cpu", "cuda"), ("cuda", "cuda")] if CUDA else [])


class StrictDevices(TorchFunctionMode):
    """Fail any torch call whose tensor arguments sit on more than one device (CPU scalars
    excepted, as PyTorch allows them beside GPU tensors)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {a.device for a in pytree.tree_leaves((args, kwargs))
                   if isinstance(a, torch.Tensor) and not (a.device.type == "cpu" and a.dim() == 0)}
        if len(devices) > 1:
            raise AssertionError(f"{getattr(func, '__name__', func)} mixes tensors on {sorted(map(str, devices))}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def poisoned():
    """Tensors made without a device land on ``meta``; a call mixing devices fails."""
    with torch.device("meta"), StrictDevices():
        yield


def test_strict_devices_catches_a_tensor_made_without_a_device():
    """The trick itself must be able to fail: the mistake this file hunts, made on purpose."""
    layer = torch.nn.Conv2d(1, 2, 3)

    def careless(model):  # the old receptive_fields: a probe made on the default device
        return model(torch.zeros(1, 1, 8, 8)).shape

    def careful(model):
        return model(torch.zeros(1, 1, 8, 8, device=model_device(model))).shape

    with poisoned():
        assert careful(layer) == (1, 2, 6, 6)
        with pytest.raises(AssertionError, match="mixes tensors on"):
            careless(layer)


# ----- picking a device -----------------------------------------------------------------------------

def test_pick_device_accepts_what_is_here():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(" CPU ") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")
    if CUDA:
        assert pick_device() == torch.device("cuda", torch.cuda.current_device())
    elif "mps" not in available_devices():
        assert pick_device() == torch.device("cpu")
    assert pick_device("cpu:0") == torch.device("cpu")
    assert pick_device("auto") == pick_device(None)
    assert available_devices()[0] == "cpu"
    for name in available_devices():
        assert pick_device(name).type == name.split(":")[0]


@pytest.mark.parametrize("name,reason", [
    ("gpu", "not a PyTorch device name.*cuda"),
    ("tpu", "TPUs are not supported"),
    ("banana", "not a device name"),
    ("cuda:x", "not a device name"),
    ("cpu:3", "one CPU device"),
    ("meta", "trains on cpu, cuda, mps"),
    ("cuda:7", "finds no NVIDIA GPU|built without CUDA|this machine has"),
])
def test_pick_device_refuses_with_what_to_use(name, reason):
    if name == "cuda:7" and CUDA and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(DeviceError, match=reason) as err:
        pick_device(name)
    assert "device='cpu'" in str(err.value) and "device=None" in str(err.value)
    cli = err.value.for_cli()
    assert f"--device {name}" in cli and "--device cpu" in cli and "device=" not in cli


def test_cuda_and_mps_only_when_present():
    if not CUDA:
        with pytest.raises(DeviceError, match="cuda"):
            pick_device("cuda")
    else:
        assert pick_device("cuda:0") == torch.device("cuda", 0)
    if "mps" not in available_devices():
        with pytest.raises(DeviceError, match="MPS is not available"):
            pick_device("mps")


def test_model_device_with_parameters_buffers_or_neither():
    assert model_device(SmallCNN()) == torch.device("cpu")
    assert model_device(SmallCNN().to("meta")) == torch.device("meta")
    bn = torch.nn.BatchNorm2d(3, affine=False).to("meta")  # buffers only
    assert model_device(bn) == torch.device("meta")
    assert model_device(torch.nn.MaxPool2d(2)) == torch.device("cpu")


# ----- every public function that takes a model or tensors ------------------------------------------

@pytest.fixture(scope="module")
def cpu_model():
    seed_everything(0)
    return SmallCNN().eval()


@pytest.fixture(scope="module")
def images(mnist_small):
    _, test = mnist_small
    return test.subset(range(48))


def _analysis_cases(images):
    """name -> function(model, data): analysis that must return CPU tensors."""
    x = images.x
    return {
        "predict": lambda m, d: predict(m, d),
        "predict(tensor)": lambda m, d: predict(m, d.x[:5]),
        "predict_ensemble": lambda m, d: predict_ensemble([m, m], d),
        "evaluate": lambda m, d: torch.tensor(evaluate(m, d), device="cpu"),
        "feature_maps": lambda m, d: hooks.feature_maps(m, d.x[:3], "conv2"),
        "channel_maxima": lambda m, d: hooks.channel_maxima(m, d.x, "relu1", batch_size=16),
        "feature_map_view": lambda m, d: hooks.feature_map_view(m, d.x[0], "relu2", 3)["map"],
        "feature_map_view(filter)": lambda m, d: hooks.feature_map_view(m, d.x[0], "relu2", 3)["filter"],
        "effective_receptive_field": lambda m, d: receptive_field.effective_receptive_field(m, "conv2", d.x[:4], (5, 5)),
        "receptive_field_view": lambda m, d: receptive_field.receptive_field_view(m, "pool", (3, 4), d.x[:4])[2],
        "input_gradients": lambda m, d: saliency.input_gradients(m, d.x[:4]),
        "input_gradients(signed)": lambda m, d: saliency.input_gradients(m, d.x[:4], target=2, signed=True),
        "smoothgrad": lambda m, d: saliency.smoothgrad(m, d.x[:2], samples=3),
        "grad_cam": lambda m, d: saliency.grad_cam(m, d.x[:4], "relu2"),
        "grad_cam(pool)": lambda m, d: saliency.grad_cam(m, d.x[:2], "pool", target=3),
        "accuracy_under_shift": lambda m, d: torch.tensor(metrics.accuracy_under_shift(m, d, [0, 2], ["left"])["left"], device="cpu"),
        "explore_transform": lambda m, d: metrics.explore_transform(m, d, 4, dx=2.5, angle=10)[1]["small-cnn"],
        "explore_transform(image)": lambda m, d: metrics.explore_transform(m, d, 4, dx=2.5, angle=10)[0],
        "predict_drawing": lambda m, d: drawing.predict_drawing({"cnn": m}, d.denormalize(d.x[7, 0]), d)[1]["cnn"],
        "most_confident_mistakes": lambda m, d: metrics.most_confident_mistakes(predict(m, d).to(d.device), d.y, 5),
        "confusion_matrix": lambda m, d: metrics.confusion_matrix(d.y, d.y.roll(1)),
        "per_class_accuracy": lambda m, d: metrics.per_class_accuracy(metrics.confusion_matrix(d.y, d.y.roll(1)).to(d.device)),
        "erf_extent": lambda m, d: torch.tensor(float(receptive_field.erf_extent(d.x[0, 0].abs(), (14, 14))), device="cpu"),
        "mnist_style": lambda m, d: drawing.mnist_style(d.denormalize(d.x[7, 0])),
        "shift_difference": lambda m, d: conv.shift_difference(m.conv1, d.x[:3], 2, 1),
        "output_window": lambda m, d: conv.output_window(d.x[3, 0], m.conv1.weight[5, 0], 4, 7, stride=2, padding=1).products,
        "output_window(fmap)": lambda m, d: conv.output_window(d.x[3, 0], m.conv1.weight[5, 0], 4, 7, padding=1).fmap,
    }


def _tensor_op_cases():
    """name -> function(data): tensor operations whose result follows their inputs' device."""
    return {
        "conv2d_loops": lambda d: conv.conv2d_loops(d.x[:2], d.x[0, :, 10:13, 10:13][None].expand(4, 1, 3, 3), stride=2,
                                                    padding=1),
        "conv2d_unfold": lambda d: conv.conv2d_unfold(d.x[:2], d.x[0, :, 10:13, 10:13][None].expand(4, 1, 3, 3), dilation=2),
        "apply_kernel": lambda d: conv.apply_kernel(d.x[3], conv.kernel_preset("Sobel x (vertical edges)"), stride=2),
        "apply_kernel(list)": lambda d: conv.apply_kernel(d.x[3], [[0, 1, 0], [1, -4, 1], [0, 1, 0]]),
        "shift_images": lambda d: transforms.shift_images(d.x[:3], 2, -1, d.background),
        "transform_digit": lambda d: transforms.transform_digit(d.x[3], 1.5, 0, 20, 0.9, d.background),
        "denormalize": lambda d: d.denormalize(d.x[:2]),
        "affine": lambda d: augment.affine(d.x[:3], torch.tensor([1.5, 0.0, -2.0], device=d.device), 0.0, 10.0, 1.1,
                                           fill=d.background),
    }


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("model_dev,input_dev", PAIRS)
def test_analysis_runs_where_the_model_is_and_returns_cpu_tensors(cpu_model, images, model_dev, input_dev):
    reference = {name: f(cpu_model, images) for name, f in _analysis_cases(images).items()}
    model, data = cpu_model.to(model_dev), images.to(input_dev)
    try:
        for name, f in _analysis_cases(data).items():
            out = f(model, data)
            assert out.device.type == "cpu", f"{name} returned a tensor on {out.device}"
            assert _close(out, reference[name]), f"{name} differs with the model on {model_dev}, inputs on {input_dev}"
            assert model_device(model).type == model_dev, f"{name} moved the model"
    finally:
        cpu_model.to("cpu")


def test_analysis_makes_no_tensor_without_saying_where(cpu_model, images):
    for name, f in _analysis_cases(images).items():
        reference = f(cpu_model, images)
        with poisoned():
            out = f(cpu_model, images)
        assert out.device.type == "cpu" and _close(out, reference), name


@pytest.mark.parametrize("input_dev", [d for d in ("cpu", "cuda") if d == "cpu" or CUDA])
def test_tensor_operations_follow_their_inputs(images, input_dev):
    reference = {name: f(images) for name, f in _tensor_op_cases().items()}
    data = images.to(input_dev)
    for name, f in _tensor_op_cases().items():
        out = f(data)
        assert out.device.type == input_dev, f"{name} returned a tensor on {out.device}"
        assert _close(out.cpu(), reference[name]), name
        with poisoned():
            assert _close(f(images), reference[name]), f"{name} under the poisoned default device"


@pytest.mark.parametrize("input_dev", [d for d in ("cpu", "cuda") if d == "cpu" or CUDA])
def test_augmentation_draws_on_the_device_of_its_images(images, input_dev):
    """Random draws differ between devices' generators, so this checks where, not what."""
    x = images.x[:4].to(input_dev)
    gallery, params = augment.augment_examples(x, copies=3, fill=images.background, seed=2)
    assert gallery.device.type == input_dev and all(p.device.type == input_dev for p in params.values())
    assert torch.equal(gallery[:, 0], x)
    with poisoned():
        again, _ = augment.augment_examples(x, copies=3, fill=images.background, seed=2)
    assert torch.equal(again, gallery)


@pytest.mark.parametrize("model", [SmallCNN(), ConvStack(depth=3, pool_every=2)], ids=["small-cnn", "conv-stack"])
def test_shape_only_functions_run_on_a_meta_model(model):
    """receptive_fields, spatial_layers and shape_table only need shapes: a model on the meta
    device (no memory, no arithmetic) gives the same answers, so nothing is made on the CPU."""
    expected = (receptive_field.receptive_fields(model), hooks.spatial_layers(model), shape_table(model))
    meta = model.to("meta")
    with StrictDevices():
        got = (receptive_field.receptive_fields(meta), hooks.spatial_layers(meta), shape_table(meta))
        assert receptive_field.input_region(meta, expected[0][-1].name, (0, 0)) == expected[0][-1].region((0, 0), (28, 28))
    assert got == expected


@pytest.mark.parametrize("model_dev,input_dev", PAIRS)
def test_drawing_accepts_tensors_from_any_device(cpu_model, images, model_dev, input_dev):
    model, data = cpu_model.to(model_dev), images.to(input_dev)
    probs = predict(model, data).to(input_dev)
    cm = metrics.confusion_matrix(data.y, probs.argmax(1)).to(input_dev)
    region = receptive_field.input_region(model, "conv2", (4, 4))
    erf = receptive_field.effective_receptive_field(model, "conv2", data.x[:4], (4, 4)).to(input_dev)
    linear = torch.nn.Linear(784, 10).to(model_dev)  # moved outside: Module.to itself compares devices
    try:
        with StrictDevices():
            viz.plot_confusion(cm, data.classes)
            viz.show_mistakes(data, probs, k=4)
            viz.show_receptive_field(data.denormalize(data.x[0]), region, erf)
            viz.show_saliency(data.denormalize(data.x[0]), {"grad": erf, "same": erf.clone(), "signed": erf - erf.mean()},
                              labels={"signed": "d score / d pixel"})
            viz.show_prediction(data.x[0], {"m": probs[0]}, data.classes)
            viz.show_images(data, [0, 1])
            viz.show_weights_as_templates(linear, data.classes)
            viz.show_filters(model.conv1.weight)
            viz.show_feature_maps(data.x[:4, 0])
            viz.show_feature_maps(data.x[:4, 0].relu(), normalize=False, colorbar=False)
            viz.show_filters(model.conv1.weight, colorbar=False)
            viz.show_maps({"a": data.x[0, 0], "b": data.x[1, 0].relu()})
            viz.show_convolution(data.x[0], data.x[0, 0, :3, :3], data.x[0, 0])
            viz.show_augmentations(augment.augment_examples(data.x[:2], copies=2, seed=1)[0], data)
            viz.plot_error_ladder(compare({"a": probs.argmax(1) == data.y, "b": data.y == data.y}))
            assert viz.tile(data.x[:4, 0]).device.type == "cpu"
    finally:
        plt.close("all")
        cpu_model.to("cpu")


@pytest.mark.parametrize("model_dev,input_dev", PAIRS)
def test_explorers_work_with_the_model_anywhere(cpu_model, images, model_dev, input_dev):
    from cnnlab.widgets import augment_explorer, error_flagger, feature_map_explorer, receptive_field_explorer, shift_explorer

    model, data = cpu_model.to(model_dev), images.to(input_dev)
    try:
        for box in (shift_explorer(model, data), receptive_field_explorer({"cnn": model}, data, images=8),
                    feature_map_explorer(model, data, pool=32)):
            assert box.image.value[:4] == b"\x89PNG" and "color:#b00" not in box.summary.value
        assert augment_explorer(data, index=[0, 1]).image.value[:4] == b"\x89PNG"
        flagger = error_flagger(data, predict(model, data).to(input_dev))
        assert "errors on 48 test images" in flagger.summary.value
        rf = receptive_field_explorer({"cnn": model}, data, images=8)
        rf.controls["row"].value = 1
        assert "color:#b00" not in rf.summary.value
    finally:
        cpu_model.to("cpu")


@pytest.mark.parametrize("device", [d for d in ("cpu", "cuda") if d == "cpu" or CUDA])
def test_fit_leaves_the_model_on_its_training_device_and_callbacks_see_it(mnist_small, device):
    from cnnlab.callbacks import LiveDashboard

    train, test = mnist_small
    seed_everything(0)
    model = SmallCNN()
    dash = LiveDashboard(test.subset(range(100)), show=False, every_s=0.0, budget=0.9)  # data left on the CPU
    history = fit(model, train.subset(range(256)), test.subset(range(100)), epochs=1, device=device, progress=False,
                  callbacks=[dash])
    assert history.device.startswith(device) and model_device(model).type == device
    assert dash.png[:4] == b"\x89PNG" and dash.frames >= 2
    assert history.last("test_acc") == pytest.approx(evaluate(model, test.subset(range(100))).accuracy)


@pytest.mark.parametrize("model_dev,input_dev", PAIRS)
def test_transfer_learning_runs_where_the_backbone_is(images, model_dev, input_dev, tmp_path, monkeypatch):
    from cnnlab import transfer
    from cnnlab.widgets import product_explorer

    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path))
    net = transfer.load_backbone(device="cpu")
    cpu_data = images.subset(range(8))
    reference = transfer.cached_features(net, cpu_data, size=32, cache=False, progress=False).x
    reference_top = transfer.top5(net, cpu_data.denormalize(cpu_data.x), size=32)
    net.model.to(model_dev)
    data = cpu_data.to(input_dev)
    try:
        for cache in (True, True, False):  # computed, read from the cache, computed again
            feats = transfer.cached_features(net, data, size=32, cache=cache, progress=False)
            assert feats.x.device.type == "cpu" and _close(feats.x, reference) and feats.y.device.type == "cpu"
        guesses = transfer.top5(net, data.denormalize(data.x), size=32)
        assert all(abs(g[0][1] - r[0][1]) < 1e-3 for g, r in zip(guesses, reference_top))
        assert transfer.prepare_images(net, data.x[:2], 40).device.type == model_dev
        assert transfer.content_hash(data) == transfer.content_hash(cpu_data)
        assert transfer.flip_labels(data.y, 0.5, seed=3).device == data.y.device
        assert torch.equal(transfer.flip_labels(data.y, 0.5, seed=3).cpu(), transfer.flip_labels(cpu_data.y, 0.5, seed=3))
        with StrictDevices():
            viz.show_guesses(data.denormalize(data.x[:2]), guesses[:2], titles=["a", "b"])
            viz.plot_learning_curves({"a": {100: 0.5, 1000: 0.7}})
        probs = torch.rand(8, 10, device=input_dev).softmax(1)
        box = product_explorer(data, guesses, probs)
        box.slider.value = 3
        assert box.image.value[:4] == b"\x89PNG" and "true:" in box.finetuned.value
    finally:
        plt.close("all")
    with poisoned():  # nothing made on the default device
        assert transfer.flip_labels(cpu_data.y, 0.5, seed=3).device.type == "cpu"
        assert transfer.content_hash(cpu_data) == transfer.content_hash(data)
