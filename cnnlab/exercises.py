"""The series' exercises, with checks a learner can call and model answers to compare with.

Each notebook's exercises end with ``check("03.2", never_centred=...)`` cells: the check works
out the truth itself (by running the convolution, the pool or the receptive-field walk, never by
restating a formula) and answers **right**, or **not yet** with a hint that points to the idea,
not the answer. An open question ("explain why ...") has a model answer instead, shown on request
with ``model_answer("03.3")``. What a learner has solved is kept in the cache folder
(``exercises.json``), never in the notebook: ``progress("03")`` lists it.

Worked solutions are notebooks in ``notebooks/solutions/``: each computes its answers and passes
the same checks (CI runs them). A teacher removes them from a copy of the series with
``rm -r notebooks/solutions``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab import cache_dir
from cnnlab.conv import shift_difference
from cnnlab.files import atomic_write

__all__ = ["Exercise", "Verdict", "EXERCISES", "check", "model_answer", "progress"]


@dataclass(frozen=True, repr=False)
class Verdict:
    """What a check says: ``right`` or not, and the message (a hint when not)."""

    exercise: str
    right: bool
    message: str

    def __str__(self) -> str:
        return f"{self.exercise}: {'right' if self.right else 'not yet'}. {self.message}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour, word = ("#2e7d32", "✓ right") if self.right else ("#b26a00", "✗ not yet")
        return (f'<div class="cnnlab-verdict" style="border-left:4px solid {colour};padding:4px 8px">'
                f'<b style="color:{colour}">{self.exercise}: {word}.</b> {self.message}</div>')


@dataclass(frozen=True)
class Exercise:
    """One exercise: its notebook's number and its own (``"03.2"``), a one-line summary, and
    either a ``judge`` (the learner's answer as keywords -> ``(right, message)``) or a
    ``model_answer`` for an open question."""

    id: str
    summary: str
    judge: Callable[..., tuple[bool, str]] | None = None
    model_answer: str | None = None


# ----- the checks: each measures the truth, then compares -----------------------------------------

def _strokes(size: int = 15) -> dict[str, Tensor]:
    """Four test strokes two pixels wide through the middle of a blank image: the diagonal from
    top left to bottom right, the other diagonal, a horizontal and a vertical line."""
    eye = torch.eye(size)
    diag = ((eye + eye.roll(1, 0)) > 0).float()
    diag[0, -1] = 0  # roll wraps one pixel around the corner
    mid = torch.zeros(size, size)
    mid[size // 2 - 1 : size // 2 + 1] = 1
    return {"diagonal": diag, "other diagonal": diag.flip(1), "horizontal": mid, "vertical": mid.T.contiguous()}


def _kernel_answer(kernel) -> Tensor:
    k = torch.as_tensor(kernel, dtype=torch.float32)
    if k.shape != (3, 3) or not torch.isfinite(k).all():
        raise ValueError(f"kernel: give a 3x3 grid of numbers (a tensor or nested lists), got shape {tuple(k.shape)}")
    return k


def _diagonal_kernel(*, kernel) -> tuple[bool, str]:
    k = _kernel_answer(kernel)
    strongest = {name: float(F.relu(F.conv2d(s[None, None], k[None, None])).max())
                 for name, s in _strokes().items()}  # after a ReLU, as a CNN's next layer sees it
    diagonal = strongest.pop("diagonal")
    rival, rival_value = max(strongest.items(), key=lambda kv: kv[1])
    if diagonal <= 0:
        return False, ("it gives no positive response on a top-left to bottom-right stroke: put positive weights "
                       "where such a stroke passes through the 3x3 window")
    if rival_value > diagonal / 2:
        return False, (f"it answers a {rival} stroke with {rival_value:.2f}, against {diagonal:.2f} for the diagonal: "
                       "give the cells off the diagonal negative weights, so that other strokes cancel out")
    return True, (f"strongest response {diagonal:.2f} on the diagonal stroke, at most {rival_value:.2f} on the others "
                  f"({rival}). Notebook 03's kernel playground shows which digits light it up.")


def _centred_rows(size: int, kernel: int, stride: int, padding: int) -> set[int]:
    """The rows that a patch centre lands on, found by unfolding an image of row numbers."""
    rows = torch.arange(size, dtype=torch.float32).repeat_interleave(size).reshape(1, 1, size, size) + 1
    patches = F.unfold(rows, kernel, padding=padding, stride=stride)  # padding reads as 0: no row
    centre = patches[0, (kernel * kernel) // 2]
    return {int(r) - 1 for r in centre.tolist() if r > 0}


def _as_indices(name: str, value) -> set[int]:
    try:
        out = {int(v) for v in value}
    except (TypeError, ValueError):
        raise ValueError(f"{name}: give the row (or column) numbers as a list or set of whole numbers, "
                         f"e.g. [0, 2, 4], got {value!r}") from None
    return out


def _never_centred(*, never_centred, with_padding_1=None) -> tuple[bool, str]:
    answer = _as_indices("never_centred", never_centred)
    truth = set(range(28)) - _centred_rows(28, 3, 2, 0)
    if answer != truth:
        missing, extra = sorted(truth - answer), sorted(answer - truth)
        what = (f"{len(missing)} row(s) that no centre reaches are missing" if missing else "") + \
               (" and " if missing and extra else "") + (f"{len(extra)} of yours are some patch's centre" if extra else "")
        return False, (f"{what}. With padding 0 the first patch covers rows 0-2, so its centre is row 1; each next "
                       "patch starts 2 rows further. Which rows does a centre never land on, up to row 27?")
    if with_padding_1 is None:
        return True, ("with stride 2 and padding 0 the even rows are never a centre, and the last, row 27, is not even "
                      "read: the last window that fits covers rows 24-26. Now try with_padding_1=: which rows are "
                      "never a centre with padding 1?")
    padded = _as_indices("with_padding_1", with_padding_1)
    truth_1 = set(range(28)) - _centred_rows(28, 3, 2, 1)
    if padded != truth_1:
        return False, ("padding 0 is right; with padding 1 the first patch starts one row above the image, "
                       "so its centre is row 0. Which rows does a centre skip now?")
    return True, ("padding 1 moves every centre up by one row: now the odd rows are skipped, row 27 among them (the "
                  "last window covers rows 26-27 and one row of padding). The window explorer of notebook 03 shows "
                  "it pixel by pixel.")


def _pool_keeps(shift: int, pool: int = 3) -> bool:
    """Whether a pool of ``pool`` with stride ``pool`` keeps a move by ``shift`` pixels: some
    whole-pixel move of its output matches it away from the borders (random images, so no
    accident of the picture)."""
    x = torch.rand(4, 1, 30, 30, generator=torch.Generator().manual_seed(0))
    layer = nn.MaxPool2d(pool, stride=pool)
    for out in {shift // pool, -(-shift // pool)}:
        diff = shift_difference(layer, x, shift, 0, out_shift=(out, 0))
        if diff[..., 1:-1, 1 + out : -(1 + out)].abs().max() == 0:
            return True
    return False


def _pool_shifts(*, kept) -> tuple[bool, str]:
    answer = _as_indices("kept", kept)
    if not answer <= set(range(7)):
        return False, "kept: give the shifts from 0 to 6 pixels that the pool keeps, e.g. {0, 2, 4}"
    truth = {s for s in range(7) if _pool_keeps(s)}
    if answer != truth:
        return False, ("not those. A pool with stride 3 puts out one value per 3x3 block: which moves of the input "
                       "land every block on another whole block? Check each with shift_difference and out_shift.")
    return True, (f"a 3x3 pool with stride 3 keeps moves by {sorted(truth)} pixels: whole blocks. Any other move "
                  "regroups the pixels into other blocks, and the maxima change.")


def _layers_for_the_digit(*, layers) -> tuple[bool, str]:
    from cnnlab.models import ConvStack
    from cnnlab.receptive_field import receptive_fields

    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        raise ValueError(f"layers: give a whole number of conv layers, got {layers!r}")

    def field(depth: int) -> int:
        return receptive_fields(ConvStack(depth=depth, padding=1))[-1].size[0]  # its last conv layer

    need = next(d for d in range(1, 64) if field(d) >= 28)
    if layers != need:
        return False, (f"{layers} layers see {field(layers)} x {field(layers)} pixels. Each 3x3 layer widens the field "
                       "by the same amount: how many layers until it covers all 28 rows?")
    return True, (f"{need} layers see {field(need)} x {field(need)} pixels, one less sees {field(need - 1)}: a unit of "
                  "the last layer sees the whole 28x28 digit only after that many 3x3 convolutions without pooling.")


def _whole(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name}: give a whole number, got {value!r}")
    return value


def _test_size_at_95(*, images) -> tuple[bool, str]:
    from cnnlab.metrics import required_test_size, simulated_power

    images = _whole("images", images)
    at_80, at_95 = required_test_size(0.990, 0.992), required_test_size(0.990, 0.992, power=0.95)
    if abs(images - at_95) > 0.01 * at_95:
        if images <= at_80:
            return False, (f"that is no more than at 80% power ({at_80:,} each): a test that must catch the "
                           "difference 19 times in 20, not 4 in 5, needs more images")
        return False, "not that many: keep the accuracies at 99.0% and 99.2%, and change only the power, to 0.95"
    power = simulated_power(0.990, 0.992, at_95)
    return True, (f"{at_95:,} test images each ({at_95 / at_80:.2f} times the {at_80:,} of 80% power); simulated, "
                  f"that size finds the difference {power:.0%} of the time.")


def _c3_fully_connected(*, parameters) -> tuple[bool, str]:
    from cnnlab.models import LENET5_C3_TABLE, PartialConv2d, count_parameters

    parameters = _whole("parameters", parameters)
    every = count_parameters(PartialConv2d([range(6)] * 16, 6, 5))  # each of C3's 16 maps sees all six of S2's
    table = count_parameters(PartialConv2d(LENET5_C3_TABLE, 6, 5))
    if parameters != every:
        hint = (" That is the table's own count." if parameters == table else "")
        return False, (f"not {parameters:,}.{hint} Each of C3's 16 maps would have one 5x5 kernel for each of the "
                       "6 maps of S2, and one bias")
    return True, f"{every:,} parameters, against {table:,} with the paper's table: the table saves {every - table:,}."


def _macs_with_image_size(*, macs_ratio, parameters_change) -> tuple[bool, str]:
    import torchvision

    from cnnlab.models import count_parameters
    from cnnlab.scale import count_macs

    if not isinstance(macs_ratio, (int, float)) or isinstance(macs_ratio, bool) or not macs_ratio > 0:
        raise ValueError(f"macs_ratio: give a positive number (the MACs at 448x448 divided by those at 224x224), "
                         f"got {macs_ratio!r}")
    if not isinstance(parameters_change, int) or isinstance(parameters_change, bool):
        raise ValueError(f"parameters_change: give a whole number (parameters at 448x448 minus those at 224x224), "
                         f"got {parameters_change!r}")
    model = torchvision.models.resnet50()  # random weights: the counts do not depend on them
    ratio = count_macs(model, (3, 448, 448)) / count_macs(model, (3, 224, 224))
    if parameters_change != 0:
        return False, ("the parameters are the filters' weights, and a filter is the same size whatever the image: "
                       "how many of them does a larger image add?")
    if abs(macs_ratio - ratio) > 0.02 * ratio:
        return False, ("not that ratio: a convolution does the same work at every position of its map, and an image "
                       "twice as wide and twice as high has how many times the positions?")
    return True, (f"{ratio:.3f} times the MACs for twice the side (four times the pixels), and not one parameter more "
                  f"({count_parameters(model):,}): a CNN's cost grows with the image's area, its number of parameters does not. "
                  "ViT-B/16's position embeddings are learnt for 14x14 patches, so a 448-px image needs them "
                  "interpolated first.")


# ----- the registry ----------------------------------------------------------------------------------

EXERCISES: dict[str, Exercise] = {e.id: e for e in sorted([
    Exercise("03.1", "a 3x3 kernel for diagonal strokes (top left to bottom right)", judge=_diagonal_kernel),
    Exercise("03.2", "which rows a stride-2 3x3 kernel never centres on, with padding 0 and 1", judge=_never_centred),
    Exercise("03.4", "which shifts a 3x3 max pool with stride 3 keeps", judge=_pool_shifts),
    Exercise("04.1", "how many 3x3 conv layers a unit needs to see the whole 28x28 digit", judge=_layers_for_the_digit),
    Exercise("02.4", "pixels shuffled by one fixed permutation: why the MLP does not care", model_answer=(
        "The MLP's first layer gives every pixel its own weights and knows nothing of which pixels are "
        "neighbours. A fixed permutation only reorders its inputs, so training finds the same weights, reordered, "
        "and the same accuracy. A CNN's 3x3 filters read neighbouring pixels together because neighbours "
        "belong to the same stroke; after the permutation they do not, so the filters see noise and the CNN "
        "loses most of its advantage: its structure is an assumption about images.")),
    Exercise("04.2", "stride-2 convolutions instead of max-pools: fields and parameters", model_answer=(
        "A 2x2 convolution with stride 2 has the same receptive-field arithmetic as a 2x2 max-pool (the same "
        "size, stride and start), so `receptive_fields` gives the same fields; a 3x3 one with stride 2 grows "
        "them a little more. The parameters are not the same: a pool has none, a 2x2 convolution from 16 to 16 "
        "channels adds 16 * 16 * 4 + 16 = 1,040 of them, which it then learns.")),
    Exercise("07.5", "test images for 99.0% vs 99.2% at 95% power", judge=_test_size_at_95),
    Exercise("08.5", "LeNet-5's C3 parameters if every map saw all of S2", judge=_c3_fully_connected),
    Exercise("08.2", "ResNet-50's MACs and parameters at 448x448 against 224x224", judge=_macs_with_image_size),
], key=lambda e: e.id)}


def _exercise(exercise_id: str) -> Exercise:
    if exercise_id not in EXERCISES:
        known = sorted({e.split(".")[0] for e in EXERCISES})
        raise ValueError(f"no exercise {exercise_id!r}: exercises are named by notebook and number, e.g. '03.2'; "
                         f"notebooks with exercises here: {', '.join(known)}")
    return EXERCISES[exercise_id]


def check(exercise_id: str, **answer) -> Verdict:
    """Check an answer: ``check("03.2", never_centred=[...])``. Says right, or not yet with a hint,
    and keeps a right answer in the learner's progress (:func:`progress`)."""
    exercise = _exercise(exercise_id)
    if exercise.judge is None:
        raise ValueError(f"exercise {exercise_id} is an open question with no check: compare your answer with "
                         f"model_answer({exercise_id!r})")
    if not answer:
        raise ValueError(f"check({exercise_id!r}, ...) needs your answer as a keyword, e.g. "
                         f"check({exercise_id!r}, {_keywords(exercise)})")
    try:
        right, message = exercise.judge(**answer)
    except TypeError as err:
        raise ValueError(f"exercise {exercise_id} takes {_keywords(exercise)}; got {', '.join(answer)} ({err})") from None
    if right:
        _record(exercise_id, "solved")
    return Verdict(exercise_id, right, message)


def _keywords(exercise: Exercise) -> str:
    import inspect

    return ", ".join(f"{name}=..." for name in inspect.signature(exercise.judge).parameters)


def model_answer(exercise_id: str) -> str:
    """The model answer of an open question, to compare with your own (revealed on request)."""
    exercise = _exercise(exercise_id)
    if exercise.model_answer is None:
        raise ValueError(f"exercise {exercise_id} has a check, not a model answer: call check({exercise_id!r}, ...)")
    _record(exercise_id, "read")
    return exercise.model_answer


def _progress_file():
    return cache_dir() / "exercises.json"


def _load() -> dict[str, str]:
    try:
        kept = json.loads(_progress_file().read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: start again rather than stop the lesson
    return {k: v for k, v in kept.items() if isinstance(k, str) and v in ("solved", "read")} if isinstance(kept, dict) else {}


def _record(exercise_id: str, state: str) -> None:
    kept = _load()
    if kept.get(exercise_id) == "solved":
        return
    kept[exercise_id] = state
    try:
        _progress_file().parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(_progress_file()) as f:
            f.write(json.dumps(kept, indent=1, sort_keys=True).encode())
    except OSError as err:  # a read-only cache: the verdict still stands, only the record is lost
        print(f"(progress not kept: {_progress_file()} could not be written: {err})")


@dataclass(frozen=True, repr=False)
class Progress:
    """Which exercises of a notebook are solved (checked and right) or read (model answers)."""

    notebook: str
    solved: list[str]
    read: list[str]
    open: list[str]

    def __str__(self) -> str:
        total = len(self.solved) + len(self.read) + len(self.open)
        parts = [f"notebook {self.notebook}: {len(self.solved)} of {total} exercise{'s' if total != 1 else ''} solved"
                 + (f" ({', '.join(self.solved)})" if self.solved else "")]
        if self.read:
            parts.append(f"model answers read: {', '.join(self.read)}")
        if self.open:
            parts.append(f"still open: {', '.join(self.open)}")
        return "; ".join(parts)

    __repr__ = __str__


def progress(notebook: str | int) -> Progress:
    """The learner's progress on one notebook's exercises: ``progress("03")``."""
    number = f"{int(notebook):02d}" if str(notebook).isdigit() else str(notebook)
    ids = [e for e in EXERCISES if e.startswith(number + ".")]
    if not ids:
        known = sorted({e.split(".")[0] for e in EXERCISES})
        raise ValueError(f"notebook {notebook!r} has no exercises here; those that do: {', '.join(known)}")
    kept = _load()
    return Progress(number, [e for e in ids if kept.get(e) == "solved"], [e for e in ids if kept.get(e) == "read"],
                    [e for e in ids if e not in kept])
