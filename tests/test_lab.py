"""A chapter in JupyterLab, in Debian's Chromium: open it, run its cells up to the explorer (slow cells skipped), move a
slider of the `interact` widget, and check that the figure changes."""
import json, os, secrets, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest
from test_site import CHROMIUM, CHROMIUM_ARGS, chromium_or_fail

ROOT = Path(__file__).resolve().parent.parent
CHAPTER, EXPLORER = '05_explore.ipynb', 'explore_noised('      # the chapter, and the call that shows its widget


def chapter_until_explorer(src, call):
    "The chapter's cells up to the first that calls `call` (the explorer), without `#| slow` cells (`strip_slow`), outputs cleared."
    from dmlearn.docs import strip_slow
    nb = strip_slow(src, until=call)
    n_slow = len(strip_slow(src, flags=(), until=call)['cells']) - len(nb['cells'])   # the slow cells it left out
    for c in nb['cells']:
        if c['cell_type'] == 'code': c['outputs'], c['execution_count'] = [], None
    nb['metadata']['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3 (ipykernel)', 'language': 'python'}
    nb['metadata'].pop('widgets', None)
    return nb, n_slow


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def test_explorer_slider_changes_figure(tmp_path):
    chromium_or_fail()
    from playwright.sync_api import sync_playwright
    nb, n_slow = chapter_until_explorer(ROOT / 'nbs' / CHAPTER, EXPLORER)
    (tmp_path / CHAPTER).write_text(json.dumps(nb), encoding='utf-8')
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'JUPYTER_CONFIG_DIR': str(tmp_path / '.jupyter'),
           'JUPYTER_RUNTIME_DIR': str(tmp_path / '.runtime'), 'MPLBACKEND': 'module://matplotlib_inline.backend_inline'}
    log = open(tmp_path / 'lab.log', 'w')
    lab = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--allow-root', '--ip', '127.0.0.1',
                            f'--port={port}', f'--ServerApp.token={token}', f'--ServerApp.root_dir={tmp_path}',
                            '--LabApp.expose_app_in_browser=True', '--LabApp.news_url=',
                            '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate'],
                           cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    t0 = time.time()
    try:
        url = f'http://127.0.0.1:{port}'
        while True:
            try: urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=2); break
            except Exception:
                if lab.poll() is not None or time.time() - t0 > 90:
                    pytest.fail(f"jupyter lab did not start:\n{(tmp_path / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = b.new_page(viewport={'width': 1400, 'height': 1000})
            page.goto(f'{url}/lab/tree/{CHAPTER}?token={token}')
            page.wait_for_function("() => window.jupyterapp && jupyterapp.shell.currentWidget && "
                                   "jupyterapp.shell.currentWidget.sessionContext && "
                                   "jupyterapp.shell.currentWidget.sessionContext.session && "
                                   "jupyterapp.shell.currentWidget.sessionContext.session.kernel && "
                                   "jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'", timeout=90000)
            t_idle = time.time()
            page.evaluate("() => jupyterapp.commands.execute('notebook:run-all-cells')")
            slider = page.locator('.widget-interact .widget-hslider .noUi-target, .widget-interact .widget-hslider .slider').first
            slider.wait_for(timeout=120000)
            page.wait_for_function("() => jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle' && "
                                   "document.querySelector('.widget-interact .widget-output img')", timeout=120000)
            errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]:has-text("Error")').count()
            assert errors == 0, "a cell raised an error:\n" + page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').first.inner_text()[:1500]
            src_js = "() => { const i = document.querySelector('.widget-interact .widget-output img'); return i ? i.src : null; }"
            before, stable_since = page.evaluate(src_js), time.time()
            while time.time() - stable_since < 1.5:                 # the explorer cell re-renders once itself: wait until still
                page.wait_for_timeout(250)
                now = page.evaluate(src_js)
                if now != before: before, stable_since = now, time.time()
            readout = "() => document.querySelector('.widget-interact .widget-hslider .widget-readout').innerText"
            readout_before = page.evaluate(readout)
            slider.scroll_into_view_if_needed()
            box = slider.bounding_box()
            page.mouse.click(box['x'] + box['width'] * 0.85, box['y'] + box['height'] / 2)   # click at 85% of the slider
            page.wait_for_function("(s) => { const i = document.querySelector('.widget-interact .widget-output img');"
                                   " return i && i.src !== s; }", arg=before, timeout=60000)
            after, readout_after = page.evaluate(src_js), page.evaluate(readout)
            b.close()
        print(f"\nJupyterLab: {len(nb['cells'])} cells run up to the explorer ({n_slow} slow skipped), kernel idle after "
              f"{t_idle - t0:.0f} s; slider σ {readout_before} -> {readout_after}, figure changed "
              f"({len(before)} -> {len(after)} chars of PNG); {time.time() - t0:.0f} s in all")
        assert readout_after != readout_before
        assert before.startswith('data:image/png') and after.startswith('data:image/png') and after != before
    finally:
        lab.terminate()
        try: lab.wait(20)
        except subprocess.TimeoutExpired: lab.kill()
        log.close()
