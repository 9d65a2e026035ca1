"""Real-browser acceptance: JupyterLab serves the series, every notebook runs in Chromium, and
its widgets render and respond the way a learner meets them.

A JupyterLab server on 127.0.0.1 (no token, temporary settings and workspaces) serves a copy of
``notebooks/`` in the smoke setting; Playwright drives Debian's Chromium (``/usr/bin/chromium``,
or ``$CNNLAB_CHROMIUM``), never a downloaded browser. Screenshots of every widget go to
``artifacts/ui/``. Without Chromium the suite is skipped with the reason, except in CI
(``CI=true``), where a missing browser is a failure. Server and browser always shut down.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "ui"
CHROMIUM = os.environ.get("CNNLAB_CHROMIUM", "/usr/bin/chromium")
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
# Headless, and off the network: no background requests, updates, sync or first-run pages.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
RUN_TIMEOUT_S = 420  # one notebook, all cells, in the smoke setting (about a minute on 2 cores)
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _chromium_or_skip() -> str:
    if Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    reason = (f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium) "
              "or point CNNLAB_CHROMIUM at a Chromium binary")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI needs the browser tests to run: {reason}")
    pytest.skip(reason)


EXERCISE_NOTEBOOK = "zz_exercise_check.ipynb"  # beside the series in the lab's copy, never in notebooks/


def _write_exercise_notebook(path: Path) -> None:
    """What a learner types to check an answer: a wrong one first, then the right one."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('from cnnlab.exercises import check, progress\n\ncheck("04.1", layers=13)'),
        nbformat.v4.new_code_cell('check("04.1", layers=14)'),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(folder: Path) -> None:
    """Lab settings for testing: every cell in the page (no windowing), no news or update checks."""
    settings = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    }
    for rel, value in settings.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """The URL of a JupyterLab server over a copy of the notebooks, in the smoke setting."""
    _chromium_or_skip()
    root = tmp_path_factory.mktemp("lab")
    work = root / "notebooks"
    shutil.copytree(ROOT / "notebooks", work, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    _write_exercise_notebook(work / EXERCISE_NOTEBOOK)
    _write_settings(root / "settings")
    port = _free_port()
    env = {**os.environ, "CNNLAB_SMOKE": "1", "JUPYTERLAB_SETTINGS_DIR": str(root / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces"), "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline", "PYTHONUNBUFFERED": "1"}
    log_path = root / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
             "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
             f"--ServerApp.root_dir={work}", "--LabApp.news_url=", "--LabApp.extension_manager=readonly"]
            + (["--allow-root"] if os.geteuid() == 0 else []),  # CI runs as root
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within 90 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:  # the server, its kernels and anything they started: the whole process group
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(server.pid, sig)
                server.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="session")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium_or_skip(), args=CHROMIUM_FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, lab):
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        yield page
    finally:
        context.close()
        _shut_down_kernels(lab)


def _shut_down_kernels(lab: str) -> None:
    """End every kernel the test started, so the next notebook starts on a quiet machine
    (with the server's XSRF cookie, as a browser sends it: the server checks it)."""
    import http.cookiejar

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(f"{lab}/lab", timeout=30).close()
    xsrf = next((c.value for c in jar if c.name == "_xsrf"), "")
    with opener.open(f"{lab}/api/kernels", timeout=10) as r:
        kernels = json.load(r)
    for k in kernels:
        request = urllib.request.Request(f"{lab}/api/kernels/{k['id']}", method="DELETE", headers={"X-XSRFToken": xsrf})
        opener.open(request, timeout=30).close()


# ----- driving JupyterLab --------------------------------------------------------------------------------

def _prompts(page) -> list[str]:
    return page.eval_on_selector_all(".jp-Notebook .jp-CodeCell .jp-InputPrompt", "els => els.map(e => e.textContent.trim())")


def _menu_until(page, menu: str, item: str, prompts_test: str, tries: int = 3) -> None:
    """Choose ``menu`` > ``item`` until the cells' input prompts pass ``prompts_test`` (a JS array
    method call): a page still settling, or a kernel still starting, can drop the first request."""
    for attempt in range(tries):
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{re.escape(menu)}$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")).click()
        try:
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]" + prompts_test,
                timeout=30_000)
            return
        except Exception:
            if attempt == tries - 1:
                raise


def open_and_run_all(page, lab: str, name: str) -> None:
    """Open a notebook, wait for its kernel, run all cells, wait until every cell has run."""
    page.goto(f"{lab}/lab/tree/{name}?reset")  # ?reset: a fresh layout, not the last test's tabs
    page.wait_for_selector(".jp-Notebook .jp-CodeCell")
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    # Clear the stored outputs first, so every prompt and output seen afterwards is from this run.
    _menu_until(page, "Edit", "Clear Outputs of All Cells", ".every(e => !/\\[\\d+\\]/.test(e.textContent))")
    _menu_until(page, "Run", "Run All Cells", ".some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        prompts = _prompts(page)
        if prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
            break
        errors = _errors(page)
        if errors:
            pytest.fail(f"{name}: a cell failed in the browser:\n{errors[0][:2000]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{name}: cells still not run after {RUN_TIMEOUT_S} s: {prompts}")
        time.sleep(1)


def _errors(page) -> list[str]:
    texts = page.eval_on_selector_all(
        ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']", "els => els.map(e => e.textContent)")
    return [t for t in texts if "Traceback" in t or re.search(r"^\w*(Error|Exception)\b", t, re.M)]


def widget_views(page):
    """Outputs where an ipywidget rendered (a broken one shows an error text instead), progress bars left out."""
    return page.locator(".jp-OutputArea-output:has(> .jupyter-widgets):not(:has(.widget-hprogress))")


def screenshot(locator, path: Path) -> None:
    """Save a PNG of ``locator`` and fail if it is blank (a single colour)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    locator.scroll_into_view_if_needed()
    locator.screenshot(path=str(path))
    extrema = Image.open(path).convert("RGB").getextrema()
    assert any(lo != hi for lo, hi in extrema), f"blank screenshot (one colour): {path}"


def image_src(locator) -> str:
    return locator.locator("img").first.get_attribute("src") or ""


def wait_for_change(read, before, what: str, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = read()
        if now != before:
            return now
        time.sleep(0.2)
    pytest.fail(f"{what} did not change within {timeout_s} s")


def press_slider(page, view, label: str, key: str, times: int = 3) -> None:
    slider = view.locator(".widget-slider", has_text=label).first
    handle = slider.locator(".noUi-handle").first
    handle.focus()
    for _ in range(times):
        page.keyboard.press(key)


# ----- the tests -------------------------------------------------------------------------------------------

def stored_widget_count(name: str) -> int:
    """Widgets in the notebook's stored full run, progress bars left out (a run loaded from the
    cache shows none, a smoke run trains and shows one)."""
    nb = json.loads((ROOT / "notebooks" / name).read_text())
    state = nb["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})

    def is_progress_bar(model_id: str) -> bool:
        children = state.get(model_id, {}).get("state", {}).get("children", [])
        return any(state.get(c.removeprefix("IPY_MODEL_"), {}).get("model_name") == "FloatProgressModel" for c in children)

    return sum(not is_progress_bar(o["data"][WIDGET_MIME]["model_id"])
               for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []) if WIDGET_MIME in o.get("data", {}))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_every_widget_renders(page, lab, name):
    try:
        _run_and_check(page, lab, name)
    except BaseException:  # what the page showed when it failed, for whoever reads the CI log
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"FAILED-{name.removesuffix('.ipynb')}.png"), full_page=True)
        raise


def _run_and_check(page, lab, name):
    open_and_run_all(page, lab, name)
    assert not _errors(page), f"{name}: error output"
    views = widget_views(page)
    n = views.count()
    expected = stored_widget_count(name)  # the full run's widgets: the same cells make the same ones
    assert n == expected, f"{name}: {n} widgets rendered, the notebook makes {expected}"
    body = page.locator(".jp-Notebook").inner_text()
    for bad in ("Loading widget...", "Error displaying widget", "Error rendering", "model not found"):
        assert bad not in body, f"{name}: a widget shows {bad!r}"
    broken = page.locator(".jp-Notebook .jupyter-widgets-error-widget")  # ipywidgets' view for a widget it could not create
    assert broken.count() == 0, f"{name}: {broken.count()} widget(s) failed to render, e.g. {broken.first.inner_text()[:300]!r}"
    stem = name.removesuffix(".ipynb")
    for i in range(n):
        view = views.nth(i)
        assert view.inner_text().strip() or view.locator("img, canvas").count(), f"{name}: widget {i} is empty"
        if view.locator("img, canvas").count():  # the explorers and playgrounds, not progress bars
            screenshot(view, ARTIFACTS / f"{stem}-widget{i}.png")
    INTERACTIONS.get(stem, lambda page, views: None)(page, views)


def test_an_exercise_is_checked_wrong_then_right_on_screen(page, lab):
    """A learner answers notebook 04's first exercise in JupyterLab: the check says not yet, with
    a hint that measures the wrong answer, then right."""
    open_and_run_all(page, lab, EXERCISE_NOTEBOOK)
    verdicts = page.locator(".jp-OutputArea-output .cnnlab-verdict")
    assert verdicts.count() == 2, f"{verdicts.count()} verdicts on screen"
    wrong, right = verdicts.nth(0).inner_text(), verdicts.nth(1).inner_text()
    assert "not yet" in wrong and "27 x 27" in wrong and "how many layers" in wrong, wrong
    assert "right" in right and "not yet" not in right and "29 x 29" in right, right
    screenshot(page.locator(".jp-Notebook"), ARTIFACTS / "exercise-check.png")


def _interact_01(page, views) -> None:
    view = views.filter(has_text="shift right").first
    summary = view.locator(".widget-html", has_text="true label").first
    before, before_img = summary.inner_text(), image_src(view)
    press_slider(page, view, "shift right", "ArrowRight", 6)
    wait_for_change(lambda: summary.inner_text(), before, "the shift explorer's probabilities")
    assert image_src(view) != before_img, "the shifted digit's picture did not change"
    screenshot(view, ARTIFACTS / "01_linear_baseline-shifted.png")


def _interact_03(page, views) -> None:
    view = views.filter(has_text="preset").first
    status = view.locator(".widget-html", has_text="output size").first
    before, before_img = status.inner_text(), image_src(view)
    view.locator("select").first.select_option(label="Laplacian")
    after = wait_for_change(lambda: status.inner_text(), before, "the kernel playground's response range")
    assert image_src(view) != before_img, "the feature map did not change for a new preset"
    cell = view.locator(".widget-text input").nth(4)  # the kernel's centre
    cell.fill("9")
    cell.press("Enter")
    wait_for_change(lambda: status.inner_text(), after, "the response range after editing a kernel cell")
    cell.fill("not a number")
    cell.press("Enter")
    view.locator("text=not a number").or_(view.locator(".widget-html >> text=/number/")).first.wait_for()
    screenshot(view, ARTIFACTS / "03_convolution-edited.png")
    # The window explorer: move the output pixel; the window, the arithmetic and the picture follow.
    view = views.filter(has_text="output col").first
    summary = view.locator(".widget-html", has_text="reads input rows").first
    numbers = view.locator(".widget-html", has_text="sum of the").first
    before, before_sum, before_img = summary.inner_text(), numbers.inner_text(), image_src(view)
    row, col = map(int, re.search(r"Output pixel \((\d+), (\d+)\)", before).groups())
    key, target = ("ArrowLeft", col - 3) if col >= 3 else ("ArrowRight", col + 3)
    press_slider(page, view, "output col", key, 3)
    deadline = time.monotonic() + 30
    while f"Output pixel ({row}, {target})" not in summary.inner_text():
        assert time.monotonic() < deadline, f"3 presses of {key} did not reach column {target}: {summary.inner_text()!r}"
        time.sleep(0.2)
    assert summary.inner_text() != before and f"F.conv2d at ({row}, {target})" in numbers.inner_text()
    assert numbers.inner_text() != before_sum and image_src(view) != before_img, "the arithmetic or picture did not follow"
    screenshot(view, ARTIFACTS / "03_convolution-window-moved.png")


def _interact_04(page, views) -> None:
    view = views.filter(has_text="unit row").first
    summary = view.locator(".widget-html", has_text="sees rows").first
    before = summary.inner_text()
    press_slider(page, view, "unit row", "ArrowLeft", 2)
    wait_for_change(lambda: summary.inner_text(), before, "the receptive-field box (rows seen)")
    screenshot(view, ARTIFACTS / "04_pooling_and_receptive_fields-moved.png")


def _interact_05(page, views) -> None:
    # Draw a stroke on the pad: a prediction appears.
    pad = views.filter(has=page.locator("canvas")).first
    pad.scroll_into_view_if_needed()
    box = pad.locator("canvas").first.bounding_box()
    x0, y0 = box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.15
    page.mouse.move(x0, y0)
    page.mouse.down()
    for k in range(1, 21):
        page.mouse.move(x0 - k * 1.5, y0 + k * box["height"] * 0.035)
    page.mouse.up()
    pad.locator(".widget-html", has_text="CNN").first.wait_for(timeout=30_000)
    screenshot(pad, ARTIFACTS / "05_small_cnn-drawn.png")
    # A longer training run in a new cell: the dashboard's picture changes, then stop ends it.
    last = page.locator(".jp-Notebook .jp-Cell").last
    last.click()
    page.keyboard.press("Escape")
    page.keyboard.press("b")  # a new cell below, in command mode
    page.keyboard.press("Enter")
    page.keyboard.insert_text(
        "long_dashboard = LiveDashboard(test_set, every_s=0.3, budget=0.5)\n"
        "long_history = fit(SmallCNN(), train_set, test_set, callbacks=[StopButton(), long_dashboard], epochs=40,"
        " progress=False)")
    page.keyboard.press("Shift+Enter")
    cell = page.locator(".jp-Notebook .jp-CodeCell", has_text="long_dashboard").last  # Shift+Enter added an empty one below
    frame = cell.locator(".jp-RenderedImage img").first
    frame.wait_for(timeout=60_000)
    first = frame.get_attribute("src")
    wait_for_change(lambda: frame.get_attribute("src"), first, "the live dashboard's frame", timeout_s=60)
    screenshot(cell.locator(".jp-OutputArea").first, ARTIFACTS / "05_small_cnn-dashboard.png")
    cell.get_by_role("button", name=re.compile("stop training")).click()
    cell.locator("text=stopped by the button").wait_for(timeout=60_000)
    deadline = time.monotonic() + 60
    prompt = cell.locator(".jp-InputPrompt").first
    while not re.fullmatch(r"\[\d+\]:", prompt.inner_text().strip()):  # the cell ends: the kernel is free again
        assert time.monotonic() < deadline, "training did not end after stop"
        time.sleep(0.5)


def _interact_06(page, views) -> None:
    view = views.filter(has_text="draw again").first
    summary = view.locator(".widget-html", has_text="random versions").first
    before, before_img = summary.inner_text(), image_src(view)
    assert "up to 10° either way" in before
    view.get_by_role("button", name=re.compile("draw again")).click()
    after_img = wait_for_change(lambda: image_src(view), before_img, "the augmentation gallery after 'draw again'")
    press_slider(page, view, "rotate", "ArrowRight", 4)  # 10° -> 30°, in steps of 5°
    deadline = time.monotonic() + 30
    while "up to 30° either way" not in summary.inner_text():
        assert time.monotonic() < deadline, f"the rotate slider did not reach 30°: {summary.inner_text()!r}"
        time.sleep(0.2)
    wait_for_change(lambda: image_src(view), after_img, "the gallery after moving 'rotate'")
    screenshot(view, ARTIFACTS / "06_modern_cnn-rotated.png")


def _interact_07(page, views) -> None:
    view = views.filter(has_text="Flagged as arguable").first
    summary = view.locator(".widget-html", has_text="Flagged as arguable").first
    before = summary.inner_text()
    assert "Flagged as arguable: 0" in before
    view.get_by_role("button", name=re.compile("arguable")).first.click()
    after = wait_for_change(lambda: summary.inner_text(), before, "the error count after flagging one")
    assert "Flagged as arguable: 1" in after
    screenshot(view, ARTIFACTS / "07_accuracy_report-flagged.png")


def _interact_09(page, views) -> None:
    view = views.filter(has_text="ImageNet backbone, top 5").first
    answer = view.locator(".widget-html", has_text="fine-tuned").first
    before, before_img = answer.inner_text(), image_src(view)
    assert "true:" in before
    press_slider(page, view, "photo", "ArrowRight", 3)
    wait_for_change(lambda: image_src(view), before_img, "the product photo after moving the slider")
    wait_for_change(lambda: answer.inner_text(), before, "the fine-tuned model's answer for the new photo")
    screenshot(view, ARTIFACTS / "09_transfer_learning-photo3.png")


INTERACTIONS = {"01_linear_baseline": _interact_01, "03_convolution": _interact_03,
                "04_pooling_and_receptive_fields": _interact_04, "05_small_cnn": _interact_05,
                "06_modern_cnn": _interact_06, "07_accuracy_report": _interact_07,
                "09_transfer_learning": _interact_09}
