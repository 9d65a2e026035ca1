"""The notebook series: what each notebook teaches, and which ones are in this checkout."""

from __future__ import annotations

from cnnlab import repo_root

#: (number, file stem, title, what the learner sees and does)
NOTEBOOKS: tuple[tuple[str, str, str, str], ...] = (
    ("00", "00_start_here", "Start here", "environment check, device, data, how to use the series"),
    ("01", "01_linear_baseline", "The linear baseline", "softmax regression to ~92%; weights as templates (and weight decay); shift a digit and watch it fail"),
    ("02", "02_mlp", "The MLP", "a 2-layer MLP to ~98%; overfitting; still not shift-robust; parameters vs image size"),
    ("03", "03_convolution", "What a convolution computes", "one output pixel and its input window; kernel playground; channels summed; equivariance and where pooling breaks it; shape arithmetic"),
    ("04", "04_pooling_and_receptive_fields", "Pooling, strides, receptive fields", "pooling after ReLU; theoretical vs effective receptive fields on your own model; a field smaller than a digit"),
    ("05", "05_small_cnn", "The small CNN, trained live", "live dashboard: curves, filters, feature maps; draw your own digit; saliency"),
    ("06", "06_modern_cnn", "A modern CNN with augmentation", "an ablation ladder from the small CNN: BatchNorm, global pooling, augmentation; seeds and an ensemble; structure, not size"),
    ("07", "07_accuracy_report", "Reading an accuracy report", "the source's table rebuilt: errors per million, intervals, McNemar, seeds, test-set size, every error"),
    ("08", "08_cnns_at_scale", "CNNs at scale", "LeNet-5 to ConvNeXt counted: parameters, MACs, top-1, receptive fields; skip connections measured"),
    ("09", "09_transfer_learning", "Same backbone, new data", "real ImageNet weights, offline; 2,000 product photos: from scratch vs linear probe vs fine-tuning; learning curves; label noise; data versions"),
)


def series_map() -> list[dict[str, str]]:
    """Each notebook of the series, with ``available`` True when its file is in this checkout."""
    folder = repo_root() / "notebooks"
    return [
        {"number": n, "file": f"{stem}.ipynb", "title": title, "teaches": teaches,
         "available": (folder / f"{stem}.ipynb").is_file()}
        for n, stem, title, teaches in NOTEBOOKS
    ]
