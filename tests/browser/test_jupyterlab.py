"""JupyterLab in a real browser: Run All, no cell errors, explorers drawn as controls that redraw their figure.

`make test-browser` runs this with Chromium and its driver from Debian's packages
(`apt-get install chromium chromium-driver`) and selenium from the package index. Unlike nbval, the
kernel here is a live frontend's: the explorer cells build their widgets, and the browser renders them.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (make test-browser does)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
RUN_ALL_TIMEOUT_S = 900

# The notebook's cells as JupyterLab's model holds them (the app is exposed with expose_app_in_browser).
CELLS_JS = """
const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
const found = [];
for (let i = 0; i < cells.length; i++) {
  const cell = cells.get(i);
  if (cell.type !== 'code') continue;
  const errors = [];
  for (let j = 0; j < cell.outputs.length; j++) {
    const out = cell.outputs.get(j).toJSON();
    if (out.output_type === 'error') errors.push(out.ename + ': ' + out.evalue);
  }
  found.push({index: i, count: cell.executionCount, errors: errors, source: cell.sharedModel.getSource()});
}
return found;
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def lab_settings(folder: Path) -> Path:
    """User settings for this test's JupyterLab: no autosave, so the copied notebooks stay as they are."""
    plugin = folder / "@jupyterlab" / "docmanager-extension"
    plugin.mkdir(parents=True)
    (plugin / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
    return folder


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a copy of the notebooks, and a headless Chromium pointed at it."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("needs Chromium and its driver (Debian: apt-get install chromium chromium-driver)")
    root = tmp_path_factory.mktemp("lab")
    notebooks = root / "notebooks"
    shutil.copytree(NOTEBOOKS, notebooks)
    port, token = free_port(), os.urandom(16).hex()
    headless = ("DEEPLAB_HEADLESS", "MPLBACKEND")  # as CI sets them: no widgets, no figures in the notebook
    env = {k: v for k, v in os.environ.items() if k not in headless}  # a live frontend, widgets and all
    env.update(JUPYTERLAB_SETTINGS_DIR=str(lab_settings(root / "settings")), JUPYTERLAB_WORKSPACES_DIR=str(root))
    log = open(root / "jupyterlab.log", "w")
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}"]
    command += [f"--ServerApp.root_dir={notebooks}", f"--IdentityProvider.token={token}"]
    command += ["--LabApp.expose_app_in_browser=True"]
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).status == 200
        except OSError:
            return False

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    browser = None
    try:
        wait_for(up, 120, "JupyterLab to start (see jupyterlab.log)")
        browser = webdriver.Chrome(service=webdriver.ChromeService(driver), options=options)
        yield browser, url, token
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        server.wait(timeout=30)
        log.close()


def run_all(browser, url: str, token: str, name: str) -> list[dict]:
    """Open ``name``, Run All, wait until every code cell has run; the cells as JupyterLab holds them."""
    browser.get(f"{url}/lab/tree/{name}?token={token}")
    ready = "return !!(window.jupyterapp && window.jupyterapp.shell.currentWidget"
    ready += " && window.jupyterapp.shell.currentWidget.sessionContext.session"
    ready += " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel)"
    wait_for(lambda: browser.execute_script(ready), 120, f"{name} to open with a kernel")
    time.sleep(2)  # the kernel's first handshake
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    status = "return window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status"

    def finished():
        cells = browser.execute_script(CELLS_JS)
        if any(cell["errors"] for cell in cells):
            return cells  # Run All stops at an error
        done = all(cell["count"] for cell in cells) and browser.execute_script(status) == "idle"
        return cells if done else None

    return wait_for(finished, RUN_ALL_TIMEOUT_S, f"Run All in {name}", every=2)


FIGURE_JS = """
const box = arguments[0].closest('.widget-vbox');
const image = box && box.querySelector('.widget-output img');
return image ? image.src : '';
"""


def explorer_figure(browser, control) -> str:
    """The figure (a PNG data URL) the explorer holding ``control`` shows now."""
    return browser.execute_script(FIGURE_JS, control)


@pytest.mark.parametrize("name", ["01_data_pipeline.ipynb", "06_prediction_visualisation.ipynb"])
def test_run_all_draws_explorers_that_answer_their_controls(lab, name):
    browser, url, token = lab
    cells = run_all(browser, url, token, name)
    failed = [f"cell {c['index']} ({c['source'][:80]!r}): {c['errors']}" for c in cells if c["errors"]]
    assert not failed, "\n".join(failed)
    outputs = " ".join(o.text for o in browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output"))
    assert "Error displaying widget" not in outputs and "model not found" not in outputs
    explorers = sum("course.live_frontend()" in c["source"] for c in cells)
    drawn = browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output .widget-output")
    assert explorers and len(drawn) == explorers, f"{len(drawn)} of {explorers} explorers drawn as widgets"
    sliders = browser.find_elements(By.CSS_SELECTOR, ".widget-slider .noUi-handle")
    assert sliders, "no explorer was drawn as controls (only as text?)"
    handle = sliders[0]
    before = wait_for(lambda: explorer_figure(browser, handle), 60, "the explorer's figure")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", handle)
    handle.click()
    handle.send_keys(Keys.ARROW_RIGHT)  # the first slider one step on
    changed = lambda: explorer_figure(browser, handle) not in ("", before)  # noqa: E731
    wait_for(changed, 120, "the figure to change with the slider")
