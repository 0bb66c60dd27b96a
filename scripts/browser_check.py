"""Open every notebook in a real JupyterLab in headless Chromium, as a learner would (maintainers).

Needs two things this script does not install:

    apt-get install chromium            # Debian's Chromium (/usr/bin/chromium); no browser download
    pip install playwright jupyterlab   # playwright only drives that Chromium

Then, from the repository root:

    python -m scripts.browser_check                       # every notebook in notebooks/
    python -m scripts.browser_check notebooks/01_forward_noise.ipynb --out runs/browser

It starts JupyterLab on 127.0.0.1 (a random free port, a random token, no browser), opens each
notebook, runs all cells (Run > Run All Cells), waits until every code cell has run, and
reports per notebook: the wall time, the error outputs (tracebacks), how many ipywidgets
rendered as widgets (and any that did not: "Error displaying widget", a bare
"IntSlider(...)" text), and, where there is a slider, whether moving it (one arrow-key step)
changed the output below it. A screenshot of each notebook goes to ``--out``. The notebooks
run as learners get them: pristine starters, ``auto`` mode. Exit code 1 if any notebook had
an error, a widget that did not render, or a slider that changed nothing.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# what a code cell's prompt shows in JupyterLab 4: "[ ]:" never run, "[*]:" running or queued
JS_PROMPTS = """() => Array.from(document.querySelectorAll(
    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputArea-prompt')).map(p => p.textContent.trim())"""
JS_ERRORS = """() => Array.from(document.querySelectorAll(
    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
    .map(o => o.textContent).filter(t => /Traceback|^\\s*\\w+(Error|Exception)\\b/m.test(t))"""
JS_WIDGETS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const text = panel ? panel.innerText : '';
  return {
    rendered: panel ? panel.querySelectorAll('.jupyter-widgets.widget-slider, .jupyter-widgets.widget-dropdown').length : 0,
    failed: (text.match(/Error displaying widget|Loading widget\\.\\.\\.|(Int|Float)Slider\\(|Dropdown\\(/g) || []).length,
    sliders: panel ? panel.querySelectorAll('.widget-slider').length : 0,
  };
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(port: int, token: str, log, settings: Path) -> subprocess.Popen:
    """JupyterLab on 127.0.0.1:port, serving the repository, with ``token``; waits until it
    answers. Autosave is off (user settings in ``settings``): a run never writes outputs into
    notebooks/ nor, through jupytext's pairing, into labs/."""
    plugin = settings / "@jupyterlab" / "docmanager-extension"
    plugin.mkdir(parents=True, exist_ok=True)
    (plugin / "plugin.jupyterlab-settings").write_text('{"autosave": false}')
    news = settings / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True, exist_ok=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')  # no news pop-up
    env = {**os.environ, "MPLBACKEND": "module://matplotlib_inline.backend_inline", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    env.pop("DIFFUSION_LABS_MODE", None)
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
                             "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", "--allow-root",
                             f"--ServerApp.root_dir={ROOT}", "--LabApp.news_url=",
                             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                             f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={settings}"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return proc
        except OSError as exc:
            if proc.poll() is not None:
                raise RuntimeError("JupyterLab exited at start; see its log") from exc
            time.sleep(1)
    proc.kill()
    raise RuntimeError("JupyterLab did not answer within 120 s")


def _run_all(page) -> None:
    page.click(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
    page.click("li[role=menuitem] >> text=Run", timeout=10_000)
    page.click("li[role=menuitem] >> text=Run All Cells", timeout=10_000)


def _wait_done(page, timeout: float) -> bool:
    """True when every code cell shows an execution count and none is running."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        prompts = page.evaluate(JS_PROMPTS)
        if prompts and all(p not in ("[ ]:", "[*]:", "") for p in prompts):
            return True
        time.sleep(1)
    return False


def _slider_changes_output(page) -> bool | None:
    """Move the first slider one step with the keyboard; True if the cell's outputs change,
    None if there is no slider."""
    handle = page.query_selector(".jp-NotebookPanel:not(.lm-mod-hidden) .widget-slider .noUi-handle")
    if handle is None:
        return None
    cell = handle.evaluate_handle("h => h.closest('.jp-Cell')")
    before = cell.evaluate("c => c.querySelector('.jp-Cell-outputWrapper').innerHTML")
    handle.focus()
    page.keyboard.press("ArrowRight")
    end = time.monotonic() + 30
    while time.monotonic() < end:
        time.sleep(0.5)
        if cell.evaluate("c => c.querySelector('.jp-Cell-outputWrapper').innerHTML") != before:
            time.sleep(3)  # let the redraw finish before the screenshot
            return True
    return False


def check_notebook(page, base: str, token: str, notebook: Path, timeout: float, out: Path) -> dict:
    rel = notebook.resolve().relative_to(ROOT).as_posix()
    page.goto(f"{base}/lab/tree/{rel}?token={token}&reset")
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_selector(".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator, .jp-KernelStatus",
                           timeout=60_000)
    time.sleep(2)  # the kernel connects
    t0 = time.perf_counter()
    _run_all(page)
    finished = _wait_done(page, timeout)
    seconds = time.perf_counter() - t0
    errors = page.evaluate(JS_ERRORS)
    widgets = page.evaluate(JS_WIDGETS)
    moved = _slider_changes_output(page) if finished and widgets["sliders"] else None
    page.screenshot(path=str(out / f"{notebook.stem}.png"), full_page=False)
    page.evaluate("() => window.jupyterapp && window.jupyterapp.commands.execute('kernelmenu:shutdown')")
    ok = finished and not errors and not widgets["failed"] and moved is not False
    return {"notebook": notebook.name, "seconds": round(seconds, 1), "finished": finished, "errors": errors,
            "widgets": widgets["rendered"], "widgets_failed": widgets["failed"], "slider_moved": moved, "ok": ok}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "browser", help="screenshots and the log")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per notebook")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists() or shutil.which("jupyter") is None and not _has("jupyterlab"):
        print("needs Debian's chromium (apt-get install chromium) and jupyterlab (pip install jupyterlab)")
        return 2
    from playwright.sync_api import sync_playwright

    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    args.out.mkdir(parents=True, exist_ok=True)
    port, token = _free_port(), secrets.token_hex(16)
    results = []
    with open(args.out / "jupyterlab.log", "w") as log:
        lab = start_lab(port, token, log, args.out / "lab-settings")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                for nb in notebooks:
                    try:
                        r = check_notebook(page, f"http://127.0.0.1:{port}", token, nb, args.timeout, args.out)
                    except Exception as exc:  # noqa: BLE001 - report and go on to the next notebook
                        r = {"notebook": nb.name, "seconds": 0.0, "finished": False, "errors": [repr(exc)],
                             "widgets": 0, "widgets_failed": 0, "slider_moved": None, "ok": False}
                    results.append(r)
                    moved = {None: "no slider", True: "output changed", False: "NO CHANGE"}[r["slider_moved"]]
                    print(f"{r['notebook']:34s} {'ok  ' if r['ok'] else 'FAIL'} {r['seconds']:6.1f} s  "
                          f"all cells ran: {r['finished']}  errors: {len(r['errors'])}  "
                          f"widgets rendered: {r['widgets']} (not rendered: {r['widgets_failed']})  "
                          f"slider: {moved}", flush=True)
                    for e in r["errors"]:
                        print("    " + e.strip().splitlines()[-1][:300])
                browser.close()
        finally:
            lab.terminate()
            try:
                lab.wait(timeout=20)
            except subprocess.TimeoutExpired:
                lab.kill()
    return 0 if all(r["ok"] for r in results) else 1


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    sys.exit(main())
