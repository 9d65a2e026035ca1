"""The project's files agree with each other: pins, conda env, README commands, CI, notebooks."""

import json
import re
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            out[canonicalize_name(name)] = version
    return out


def test_every_requirement_is_pinned_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    pinned = pins()
    for text in reqs:
        req = Requirement(text)
        if req.name == "cnnlab":
            continue
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is required but has no pin in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{req.name}=={pinned[name]} is outside {req}"
    assert pinned["torch"] == "2.14.1" and pinned["torchvision"] == "0.29.1"


def test_environment_yml_agrees_with_constraints():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"
    pip_lines = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-c constraints.txt" in pip_lines
    pinned = pins()
    for line in pip_lines:
        if "==" in line:
            name, version = line.split("==")
            assert pinned.get(canonicalize_name(name)) == version, f"environment.yml pins {line}, constraints.txt {pinned.get(canonicalize_name(name))}"


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(?:bash|sh)\n(.+?)\n```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
    commands = readme_commands()
    test_cmd = next(c for c in commands if "pytest" in c and "venv" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd.strip() in ci, "the README's test command must appear verbatim in .ci/run"
    assert "constraints.txt" in test_cmd
    lab_cmd = next(c for c in commands if "jupyter lab" in c)
    assert "constraints.txt" in lab_cmd and "notebooks" in lab_cmd
    assert "--allow-root" in lab_cmd  # the same command works as root (containers) and as a user


def test_notebooks_read_the_smoke_setting_through_cnnlab():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks and notebooks[0].name == "00_start_here.ipynb"
    for nb_path in notebooks:
        nb = json.loads(nb_path.read_text())
        code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        assert "CNNLAB_SMOKE" not in code and "os.environ" not in code, f"{nb_path.name}: use cnnlab.full_or_smoke"
        assert "import *" not in code, f"{nb_path.name}: import names explicitly"


def test_every_notebook_sets_device_in_its_settings_cell_and_uses_it():
    for nb_path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = [c for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == "code"]
        settings = "".join(cells[0]["source"])
        assert re.search(r"^DEVICE = None +# None: the best available", settings, flags=re.M), \
            f"{nb_path.name}: the settings cell needs DEVICE = None with its comment"
        rest = "\n".join("".join(c["source"]) for c in cells[1:])
        trains = re.findall(r"\b(?:fit|load_or_train)\(", rest)
        assert not trains or "device=DEVICE" in settings + rest, f"{nb_path.name}: train with DEVICE"


def test_gpu_check_wheels_are_the_pinned_versions():
    pinned = pins()
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "tests" / "gpu-check-wheels.txt").read_text().splitlines()]
    for line in filter(None, lines):
        name, version = line.split("==")
        assert pinned.get(canonicalize_name(name)) == version, f"gpu-check-wheels.txt pins {line}, constraints.txt {pinned.get(canonicalize_name(name))}"


def test_python_version_is_the_same_everywhere():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    assert "Python 3.11 or newer" in (ROOT / "README.md").read_text()


def test_the_notebooks_folder_holds_only_the_series():
    extra = [p.name for p in (ROOT / "notebooks").iterdir()
             if p.suffix != ".ipynb" and p.name not in ("__pycache__", ".ipynb_checkpoints", "solutions")]
    assert not extra, f"test plumbing belongs in tests/, not in the learner's notebooks/: {extra}"
    # solutions/: one NN_solutions notebook per notebook of the series that has checked exercises
    numbers = {p.name[:2] for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    for path in (ROOT / "notebooks" / "solutions").iterdir():
        if path.name in ("__pycache__", ".ipynb_checkpoints"):
            continue
        assert re.fullmatch(r"\d\d_solutions\.ipynb", path.name) and path.name[:2] in numbers, path.name
        code = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        assert f'check("{path.name[:2]}.' in code, f"{path.name} passes no check of its notebook"


def test_every_pin_installs_on_the_oldest_python_the_readme_promises():
    """"Python 3.11 or newer" includes 3.11.0 (Debian 12 ships 3.11.2): no pinned release may ask
    for more. Read from the installed distributions' own metadata, so it needs no network."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.specifiers import SpecifierSet

    too_new = []
    for name, version in pins().items():
        try:
            meta = distribution(name).metadata
        except PackageNotFoundError:
            continue  # not in this environment (the test extra installs them all)
        if meta["Version"] == version and meta["Requires-Python"]:
            if not SpecifierSet(meta["Requires-Python"]).contains("3.11.0"):
                too_new.append(f"{name}=={version} (Requires-Python {meta['Requires-Python']})")
    assert not too_new, f"pins that need a newer Python than 3.11.0: {too_new}"


def test_the_series_map_and_the_readme_know_every_notebook():
    from cnnlab.series import NOTEBOOKS

    stems = [stem for _, stem, _, _ in NOTEBOOKS]
    readme = (ROOT / "README.md").read_text()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert path.stem in stems, f"{path.name} is missing from cnnlab.series.NOTEBOOKS (notebook 00's map)"
        assert f"| `{path.stem}` |" in readme, f"{path.name} is missing from the README's series table"
    assert [n for n, _, _, _ in NOTEBOOKS] == [f"{i:02d}" for i in range(len(NOTEBOOKS))]


def test_stored_outputs_come_from_one_full_run_on_a_fresh_kernel():
    """Every code cell ran, in order, from a fresh kernel: execution counts 1, 2, 3, ..."""
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        counts = [c["execution_count"] for c in cells]
        assert counts == list(range(1, len(cells) + 1)), f"{path.name}: execution counts {counts}"


_RUN_LINE = re.compile(r"^([\w-]+): (?:loaded the saved run|saved the run) (\S+\.pt) \((test|validation) accuracy "
                       r"([\d.]+)%\)", re.M)
_VERSION = re.compile(r"\bversion ([0-9a-f]{10})\b")


def stored_outputs(path: Path) -> str:
    """All the text a notebook's stored outputs show."""
    text = []
    for cell in json.loads(path.read_text())["cells"]:
        for out in cell.get("outputs", []):
            text.append("".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


def stored_run_lines() -> list[tuple[str, str, str, str, str]]:
    """``(notebook, run name, file, scored on, accuracy)`` for every saved run that a notebook's
    stored outputs say they saved or loaded ("test" or "validation" accuracy)."""
    found = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        found += [(path.stem[:2], *m.groups()) for m in _RUN_LINE.finditer(stored_outputs(path))]
    return found


def test_a_saved_run_shows_the_same_accuracy_in_every_notebook():
    """One saved run per model: a notebook that loads the MLP prints the accuracy of the very run
    notebook 02 saved, so two notebooks never disagree about one model."""
    lines = stored_run_lines()
    assert {name for _, name, _, _, _ in lines} >= {"linear", "mlp", "small-cnn", "conv-stack-8", "modern-cnn"}
    seen: dict[str, set] = {}
    for notebook, _, file, scored, acc in lines:
        seen.setdefault(file, set()).add((notebook, scored, acc))
    disagree = {f: sorted(v) for f, v in seen.items() if len({(s, acc) for _, s, acc in v}) > 1}
    assert not disagree, f"saved runs shown with different accuracies (notebook, scored on, accuracy): {disagree}"


def stale_runs(lines, versions: dict[str, set[str]]) -> list[str]:
    """What is wrong with the saved runs that stored outputs name (``lines`` as
    :func:`stored_run_lines` gives them; ``versions``: each notebook's printed dataset versions).

    An MNIST run must be the run today's series settings name (model, full MNIST,
    SERIES_SETTINGS, a seed the series uses), scored on the test set. A run of notebook 09
    (named with cnnlab.transfer.RUN_PREFIX) is named by its kind and the content hash of its
    training data: that hash must be a dataset version the notebook prints, its file must carry
    the name, it must be scored on the validation split (09 chooses on it and scores the test set
    once, itself), and one name must mean one file (settings changed since the outputs were
    stored leave a second file behind)."""
    from dataclasses import asdict

    from cnnlab.runs import SERIES_MODELS, SPREAD_SEEDS, run_path, series_model, series_settings
    from cnnlab.train import make_config
    from cnnlab.transfer import RUN_PREFIX

    class FullMnist:  # what run_path reads of the training set: its name and size
        name = "mnist"

        def __len__(self):
            return 60_000

    stale, files_of = [], {}
    for notebook, name, file, scored, _ in lines:
        if name.startswith(RUN_PREFIX):
            m = re.fullmatch(re.escape(RUN_PREFIX) + r"([a-z0-9]+(?:-[a-z0-9]+)*)-([0-9a-f]{10})", name)
            if not m:
                stale.append(f"{notebook}: {name} is not named {RUN_PREFIX}<kind>-<content hash> (cnnlab.transfer.run_name)")
                continue
            if m[2] not in versions.get(notebook, set()):
                stale.append(f"{notebook}: {name} was trained on data version {m[2]}, which the notebook never prints")
            if not re.fullmatch(re.escape(name) + r"-[0-9a-f]{10}\.pt", file):
                stale.append(f"{notebook}: {file} is not a file of the run {name}")
            if scored != "validation":
                stale.append(f"{notebook}: {name} was scored on the {scored} set while it trained; choose on the validation split")
            files_of.setdefault((notebook, name), set()).add(file)
            continue
        if name not in SERIES_MODELS:
            stale.append(f"{notebook}: {name} is not one of the series' models (cnnlab.runs.SERIES_MODELS) "
                         f"nor a run of notebook 09 (cnnlab.transfer.RUN_PREFIX)")
            continue
        expected = [run_path(name, series_model(name), FullMnist(),
                             asdict(make_config(**series_settings(name) | {"seed": seed}))).name
                    for seed in (0, *SPREAD_SEEDS)]
        if file not in expected:
            stale.append(f"{notebook}: {file} (today's settings name the seed-0 run {expected[0]})")
        elif scored != "test":
            stale.append(f"{notebook}: {name} is a series run, scored on the test set, but shown with a {scored} accuracy")
    stale += [f"{notebook}: {name} is shown as {len(files)} different files: {sorted(files)}"
              for (notebook, name), files in files_of.items() if len(files) > 1]
    return stale


def test_the_stored_outputs_name_the_runs_the_series_settings_produce(monkeypatch):
    """Every saved run in the stored outputs is the run today's settings name: a settings change
    that would make a re-run train a different model cannot leave outputs of the old one behind."""
    monkeypatch.delenv("CNNLAB_SMOKE", raising=False)
    versions = {path.stem[:2]: set(_VERSION.findall(stored_outputs(path)))
                for path in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    lines = stored_run_lines()
    assert any(name.startswith("fashion-") for _, name, _, _, _ in lines), "notebook 09's saved runs are not printed"
    stale = stale_runs(lines, versions)
    assert not stale, "stored outputs from runs the series no longer trains; re-run these notebooks:\n" + "\n".join(stale)


def test_the_run_check_fails_stale_runs_of_either_kind(monkeypatch):
    """The check above can fail: an MNIST run with other settings, a name nobody trains, and
    Fashion-MNIST runs on data the notebook does not print, scored on the test set, or shown as two files."""
    monkeypatch.delenv("CNNLAB_SMOKE", raising=False)
    good = [line for line in stored_run_lines() if line[1] == "mlp"][:1]
    assert good and not stale_runs(good, {})
    fashion = ("09", "fashion-probe-0123456789", "fashion-probe-0123456789-abcdefabcd.pt", "validation", "84.10")
    assert not stale_runs([fashion], {"09": {"0123456789"}})
    cases = {
        "mlp-0000000000.pt": ("02", "mlp", "mlp-0000000000.pt", "test", "97.00"),
        "not one of the series": ("02", "mlp-huge", "mlp-huge-0000000000.pt", "test", "97.00"),
        "never prints": fashion,
        "scored on the test set": fashion[:3] + ("test",) + fashion[4:],
        "not a file of the run": fashion[:2] + ("fashion-probe-9999999999-abcdefabcd.pt",) + fashion[3:],
        "not named": ("09", "fashion-Probe", "fashion-Probe-abcdefabcd.pt", "validation", "84.10"),
    }
    for what, line in cases.items():
        versions = {} if what == "never prints" else {"09": {"0123456789"}}
        problems = stale_runs([line], versions)
        assert problems and what in problems[0], (what, problems)
    twice = [fashion, fashion[:2] + ("fashion-probe-0123456789-0000000000.pt",) + fashion[3:]]
    assert any("2 different files" in p for p in stale_runs(twice, {"09": {"0123456789"}}))


def test_every_page_the_readme_links_to_exists_and_every_module_is_described():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[\w./-]+)\)", readme)
    assert {"docs/api.md", "docs/gpu.md", "docs/performance.md", "docs/reliability.md", "docs/testing.md"} <= set(links)
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, f"the README links to pages that are not there: {missing}"
    api = (ROOT / "docs" / "api.md").read_text()
    undescribed = [p.stem for p in sorted((ROOT / "cnnlab").glob("*.py"))
                   if not p.stem.startswith("_") and f"`cnnlab.{p.stem}`" not in api]
    assert not undescribed, f"docs/api.md does not describe: {undescribed}"
