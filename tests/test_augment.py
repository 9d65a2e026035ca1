"""cnnlab.augment: per-image affine transforms on the training device, checked against
torchvision's own affine (image by image) and against exact whole-pixel shifts."""

import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from cnnlab.augment import affine, random_affine
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
