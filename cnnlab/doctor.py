"""Environment check: versions, compute device, and where each dataset was found."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

import torch
import torchvision

import cnnlab
from cnnlab.data import DATASETS, DataError, found_in, locate
from cnnlab.device import pick_device
from cnnlab.train import cpu_has_bf16

#: Datasets the series cannot run without; the others are needed by later notebooks only.
REQUIRED = ("mnist",)


@dataclass
class Report:
    """What :func:`check` found; ``ok`` is True when the series can run."""

    versions: dict[str, str]
    device: str
    device_detail: str
    threads: int
    bf16_cpu: bool
    smoke: bool
    datasets: dict[str, str] = field(default_factory=dict)  # name -> folder, or the error text
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(name in self.missing for name in REQUIRED)

    def __str__(self) -> str:
        lines = ["cnnlab doctor"]
        lines += [f"  {k:<14} {v}" for k, v in self.versions.items()]
        lines.append(f"  {'device':<14} {self.device} ({self.device_detail})")
        lines.append(f"  {'cpu threads':<14} {self.threads}; bf16 matmul on CPU: {'yes' if self.bf16_cpu else 'no'}")
        lines.append(f"  {'smoke mode':<14} {'on (CNNLAB_SMOKE)' if self.smoke else 'off'}")
        lines.append(f"  {'CNNLAB_DATA':<14} {os.environ.get('CNNLAB_DATA', '(not set)')}")
        lines.append(f"  {'cache':<14} {cnnlab.cache_dir()}")
        for name, where in self.datasets.items():
            if name in self.missing:
                need = "required" if name in REQUIRED else "needed by notebook 09, which downloads it when online"
                lines.append(f"  {name:<14} MISSING ({need}):")
                lines += ["      " + line for line in where.splitlines()]
            else:
                lines.append(f"  {name:<14} ok: {where}")
        lines.append("ready: the series can run" if self.ok else "NOT READY: see the missing datasets above")
        return "\n".join(lines)


def check(download: bool | None = None) -> Report:
    """Check versions, device and datasets, verifying and extracting what is found.

    A required dataset (MNIST) that is found nowhere is downloaded when ``download`` is True, or
    None and not ``CNNLAB_OFFLINE=1`` (torchvision's progress bar shows it coming); the others are
    only looked for: the notebook that needs one downloads it.
    """
    device = pick_device()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        detail = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    elif device.type == "mps":
        detail = "Apple GPU"
    else:
        detail = platform.processor() or platform.machine()
    report = Report(
        versions={
            "python": platform.python_version(),
            "cnnlab": cnnlab.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        },
        device=str(device),
        device_detail=detail,
        threads=torch.get_num_threads(),
        bf16_cpu=cpu_has_bf16(),
        smoke=cnnlab.smoke_mode(),
    )
    for name in DATASETS:
        try:
            cache = locate(name, download=download if name in REQUIRED else False)
            source = found_in(name)
            report.datasets[name] = (f"found in {source}, verified, extracted to {cache}" if source is not None
                                     else f"verified in {cache} (downloaded)")
        except DataError as err:
            report.datasets[name] = str(err)
            report.missing.append(name)
    return report
