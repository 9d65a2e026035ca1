"""A convolution written out by hand, twice (loops, then ``unfold``), to check against ``F.conv2d``.

Like ``F.conv2d``, every function here computes on its inputs' device and returns its result there.

PyTorch's ``conv2d`` is a cross-correlation: the kernel is not flipped. Both versions here
compute exactly what it computes, for any kernel size, stride, padding and dilation
(``groups=1``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.device import eval_mode, model_device
from cnnlab.transforms import shift_images

__all__ = [
    "conv_output_size", "conv2d_loops", "conv2d_unfold", "KERNEL_PRESETS", "kernel_preset",
    "apply_kernel", "parse_kernel", "conv_layer_summary", "channel_contributions", "ConvWindow", "output_window",
    "shift_difference",
]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length along one axis: ``floor((size + 2*padding - dilation*(kernel-1) - 1) / stride) + 1``."""
    for name, v, least in (("stride", stride, 1), ("dilation", dilation, 1), ("padding", padding, 0), ("kernel", kernel, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise ValueError(f"{name} must be a whole number >= {least}, got {v!r}")
    span = dilation * (kernel - 1) + 1  # the kernel's footprint, holes included
    if size + 2 * padding < span:
        raise ValueError(
            f"a kernel spanning {span} pixels does not fit in {size} pixels with padding {padding}"
        )
    return (size + 2 * padding - span) // stride + 1


def conv2d_loops(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1) -> Tensor:
    """Convolution as the definition reads: for every output position, a dot product of the
    kernel with the patch under it. ``x`` (B, C_in, H, W), ``weight`` (C_out, C_in, k, k)."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    c_out, c_in, kh, kw = weight.shape
    x = F.pad(x, (pw, pw, ph, ph))
    h_out = conv_output_size(x.shape[2] - 2 * ph, kh, sh, ph, dh)
    w_out = conv_output_size(x.shape[3] - 2 * pw, kw, sw, pw, dw)
    out = torch.zeros(x.shape[0], c_out, h_out, w_out, dtype=x.dtype, device=x.device)
    for i in range(h_out):
        for j in range(w_out):
            # The patch this output position sees: (B, C_in, kh, kw), every dilation-th pixel.
            patch = x[:, :, i * sh : i * sh + dh * (kh - 1) + 1 : dh, j * sw : j * sw + dw * (kw - 1) + 1 : dw]
            out[:, :, i, j] = torch.einsum("bchw,ochw->bo", patch, weight)
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    return out


def conv2d_unfold(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1) -> Tensor:
    """The same convolution as one matrix product: ``unfold`` lays every patch out as a column
    (B, C_in*k*k, L), and the flattened kernels (C_out, C_in*k*k) multiply them all at once."""
    c_out, _, kh, kw = weight.shape
    h_out = conv_output_size(x.shape[2], kh, _pair(stride)[0], _pair(padding)[0], _pair(dilation)[0])
    w_out = conv_output_size(x.shape[3], kw, _pair(stride)[1], _pair(padding)[1], _pair(dilation)[1])
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # (B, C_in*kh*kw, L)
    out = weight.reshape(c_out, -1) @ cols  # (B, C_out, L): one dot product per (filter, position)
    if bias is not None:
        out += bias.view(1, -1, 1)
    return out.view(x.shape[0], c_out, h_out, w_out)


def kernel_preset(name: str, size: int = 3, seed: int = 0) -> Tensor:
    """A classic ``size`` x ``size`` kernel by name (see :data:`KERNEL_PRESETS`); 3x3 ones are
    centred in a 5x5 grid when ``size`` is 5."""
    if size not in (3, 5):
        raise ValueError(f"size must be 3 or 5, got {size}")
    if name not in KERNEL_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(KERNEL_PRESETS)}")
    if name == "box blur":
        return torch.full((size, size), 1.0 / size**2)
    if name == "Gaussian":
        row = torch.tensor([1.0, 2, 1]) if size == 3 else torch.tensor([1.0, 4, 6, 4, 1])
        k = torch.outer(row, row)
        return k / k.sum()
    if name == "sharpen":  # identity plus (identity - blur): boosts what differs from its surroundings
        return 2 * kernel_preset("identity", size) - kernel_preset("box blur", size)
    if name == "random":
        return torch.randn(size, size, generator=torch.Generator().manual_seed(seed)).mul(0.5)
    k3 = KERNEL_PRESETS[name]
    return k3 if size == 3 else F.pad(k3, (1, 1, 1, 1))


#: 3x3 kernels; ``kernel_preset`` builds the others and 5x5 versions.
KERNEL_PRESETS: dict[str, Tensor | None] = {
    "identity": torch.tensor([[0.0, 0, 0], [0, 1, 0], [0, 0, 0]]),
    "box blur": None,
    "Gaussian": None,
    "sharpen": None,
    "Sobel x (vertical edges)": torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]),
    "Sobel y (horizontal edges)": torch.tensor([[-1.0, -2, -1], [0, 0, 0], [1, 2, 1]]),
    "Laplacian": torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]),
    "random": None,
}


def apply_kernel(image: Tensor, kernel: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    """The feature map of one (H, W) or (1, H, W) image under one kernel: an (H', W') tensor on
    the image's device (the kernel, a tensor or nested lists, joins it there)."""
    x = image.float().reshape(1, 1, *image.shape[-2:])
    k = torch.as_tensor(kernel, dtype=torch.float32, device=x.device)
    conv_output_size(x.shape[-1], k.shape[-1], stride, padding)  # a clear error if it does not fit
    return F.conv2d(x, k.reshape(1, 1, *k.shape), stride=stride, padding=padding)[0, 0]


def parse_kernel(cells: list[list[str | float]], limit: float = 1000.0) -> Tensor:
    """A kernel from a grid of typed-in values; a clear error names the first bad cell."""
    rows = []
    for i, row in enumerate(cells):
        values = []
        for j, cell in enumerate(row):
            text = str(cell).strip()
            try:
                v = float(text)
            except ValueError:
                raise ValueError(f"row {i + 1}, column {j + 1}: {text!r} is not a number") from None
            if not math.isfinite(v) or abs(v) > limit:
                raise ValueError(f"row {i + 1}, column {j + 1}: {text} is not a number between -{limit:g} and {limit:g}")
            values.append(v)
        rows.append(values)
    if len({len(r) for r in rows}) != 1 or len(rows) != len(rows[0]):
        raise ValueError("the kernel must be a square grid")
    return torch.tensor(rows)


def conv_layer_summary(c_in: int, h: int, w: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0,
                       dilation: int = 1) -> dict:
    """Output shape and parameter count of a ``Conv2d(c_in, c_out, kernel, stride, padding, dilation)`` on (c_in, h, w)."""
    for name, v, low in (("c_in", c_in, 1), ("h", h, 1), ("w", w, 1), ("c_out", c_out, 1), ("kernel", kernel, 1),
                         ("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be a whole number >= {low}, got {v!r}")
    h_out = conv_output_size(h, kernel, stride, padding, dilation)
    w_out = conv_output_size(w, kernel, stride, padding, dilation)
    return {
        "output": (c_out, h_out, w_out),
        "weights": c_out * c_in * kernel * kernel,
        "biases": c_out,
        "parameters": c_out * c_in * kernel * kernel + c_out,
        "multiply_adds": c_out * h_out * w_out * c_in * kernel * kernel,
    }


def channel_contributions(x: Tensor, weight: Tensor, stride=1, padding=0, dilation=1) -> Tensor:
    """Each input channel's share of a convolution, kept apart: (B, C_out, C_in, H', W') for ``x``
    (B, C_in, H, W) and ``weight`` (C_out, C_in, k, k). Summed over C_in, plus the bias, it is
    ``F.conv2d(x, weight, bias)``: one k x k kernel per (output, input) channel pair, added up."""
    c_out, c_in, kh, kw = weight.shape
    if x.dim() != 4 or x.shape[1] != c_in:
        raise ValueError(f"x must be (B, {c_in}, H, W) for a weight of shape {tuple(weight.shape)}, got {tuple(x.shape)}")
    h_out = conv_output_size(x.shape[2], kh, _pair(stride)[0], _pair(padding)[0], _pair(dilation)[0])
    w_out = conv_output_size(x.shape[3], kw, _pair(stride)[1], _pair(padding)[1], _pair(dilation)[1])
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # (B, C_in*kh*kw, L)
    cols = cols.view(x.shape[0], c_in, kh * kw, -1)  # (B, C_in, kh*kw, L): each channel's patches apart
    out = torch.einsum("bckl,ock->bocl", cols, weight.reshape(c_out, c_in, kh * kw))  # no sum over c
    return out.reshape(x.shape[0], c_out, c_in, h_out, w_out)


@dataclass(frozen=True)
class ConvWindow:
    """What one output pixel of a convolution reads and computes (see :func:`output_window`)."""

    row: int  # the output pixel
    col: int
    rows: slice  # the input rows and columns it reads; below 0 or past the edge: the zero padding
    cols: slice
    values: Tensor  # the input under the kernel (padding read as 0), shaped like the kernel
    kernel: Tensor
    products: Tensor  # values * kernel
    bias: float
    total: float  # products.sum() + bias, computed here
    fmap: Tensor  # the whole output, from F.conv2d: fmap[row, col] is the same number as total

    def arithmetic(self, digits: int = 2) -> str:
        """The computation as text: a line per kernel row (window value · weight, added up), each input
        channel's rows under its own heading when there are several, then the sum."""
        k = self.kernel.shape[-1]
        values, kernel = self.values.reshape(-1, k, k), self.kernel.reshape(-1, k, k)  # (C_in, k, k)
        lines = []
        for c, (vc, wc) in enumerate(zip(values.tolist(), kernel.tolist())):
            if len(values) > 1:
                lines.append(f"input channel {c}:")
            lines += ["  " + " + ".join(f"{v:.{digits}f}·({w:.{digits}f})" for v, w in zip(vr, wr)) for vr, wr in zip(vc, wc)]
        bias = f" + {self.bias:g} (the bias)" if self.bias else ""
        return "\n".join(lines) + f"\n= {float(self.products.sum()):.4f}{bias}" + (f" = {self.total:.4f}" if bias else "")


def output_window(image: Tensor, kernel: Tensor, row: int, col: int, *, stride: int = 1, padding: int = 0,
                  bias: float = 0.0) -> ConvWindow:
    """The input window output pixel ``(row, col)`` reads, for a (H, W) or (C_in, H, W) ``image`` and
    a (k, k) or (C_in, k, k) ``kernel`` with ``stride`` and ``padding``: the window's place and
    values, the products with the kernel and their sum, beside the whole ``F.conv2d`` output.
    Computed on the image's device (the kernel is moved there); the tensors come back on the CPU."""
    x = image.detach().float().reshape(1, -1, *image.shape[-2:])  # (1, C_in, H, W)
    k = torch.as_tensor(kernel, dtype=torch.float32, device=x.device).detach()
    size = k.shape[-1]
    if k.shape[-2] != size or k.numel() != x.shape[1] * size * size:
        raise ValueError(f"the kernel must be (k, k) or ({x.shape[1]}, k, k) for a {x.shape[1]}-channel image, "
                         f"got {tuple(k.shape)}")
    h_out = conv_output_size(x.shape[2], size, stride, padding)  # a clear error if it does not fit
    w_out = conv_output_size(x.shape[3], size, stride, padding)
    for name, v, n in (("row", row, h_out), ("col", col, w_out)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
            raise ValueError(f"output {name} {v!r} is outside 0–{n - 1}: a {size}x{size} kernel with stride {stride} "
                             f"and padding {padding} gives a {h_out}x{w_out} output")
    top, left = row * stride - padding, col * stride - padding  # input coordinates: below 0 is padding
    padded = F.pad(x, (padding, padding, padding, padding))  # the zeros F.conv2d reads there
    values = padded[0, :, top + padding : top + padding + size, left + padding : left + padding + size].reshape(k.shape)
    products = values * k
    b = torch.tensor([float(bias)], device=x.device)
    fmap = F.conv2d(x, k.reshape(1, x.shape[1], size, size), b, stride=stride, padding=padding)[0, 0]  # (H', W')
    return ConvWindow(row, col, slice(top, top + size), slice(left, left + size), values.cpu(), k.cpu(), products.cpu(),
                      float(bias), float(products.sum()) + float(bias), fmap.cpu())


def shift_difference(layer: Callable[[Tensor], Tensor], x: Tensor, dx: int, dy: int,
                     out_shift: tuple[int, int] | None = None, *, fill: float = 0.0) -> Tensor:
    """``layer(shift(x)) - shift(layer(x))``: "shift, then the layer" minus "the layer, then shift".
    Zero away from the borders for an equivariant layer. ``out_shift`` (right, down) is how far the
    output should move, ``(dx, dy)`` unless given: half as far after a stride or a pool of 2.
    A module runs where it is, in eval mode; ``x`` may come from any device; the result is on the CPU."""
    odx, ody = (dx, dy) if out_shift is None else out_shift
    module = isinstance(layer, nn.Module)
    if module:
        x = x.detach().to(model_device(layer))
    with torch.no_grad(), eval_mode(layer) if module else contextlib.nullcontext():
        return (layer(shift_images(x, dx, dy, fill)) - shift_images(layer(x), odx, ody)).cpu()
