"""The published course in a real browser: build the site once (offline), serve it on 127.0.0.1, and read every page
with Debian's Chromium driven by playwright (never `playwright install`)."""
import functools, http.server, os, json, re, socketserver, threading, time, urllib.request
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urldefrag
import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = Path(os.environ.get('DMLEARN_NBS', ROOT / 'nbs'))       # the notebooks the site is built from
CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                 '--disable-sync', '--no-first-run', '--disable-dev-shm-usage']


def chromium_or_fail():
    "The playwright module and Debian's Chromium, or a failure that says how to install them (CI installs both)."
    try: import playwright.sync_api  # noqa: F401
    except ImportError: pytest.fail('playwright is not installed: pip install -e ".[dev]" (the Python package only; '
                                    'never `playwright install`)', pytrace=False)
    if not Path(CHROMIUM).exists():
        pytest.fail(f'{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)', pytrace=False)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass


@pytest.fixture(scope='module')   # the module's: its browser stops before another file starts one
def built(tmp_path_factory):
    "The site, built once per session into a temporary folder with the same function `dmlearn docs` calls."
    from dmlearn.docs import build_site, missing_docs_tools
    if missing_docs_tools(): pytest.fail(f'docs tools missing ({missing_docs_tools()}): pip install -e ".[dev]"', pytrace=False)
    if os.environ.get('DMLEARN_SITE'):                        # a site built before (developers: reuse one build)
        site = Path(os.environ['DMLEARN_SITE'])
        return {'out': site, 'pages': [p.stem for p in sorted(site.glob('*.html')) if p.stem not in ('genindex', 'search')],
                'size_mb': sum(f.stat().st_size for f in site.rglob('*') if f.is_file()) / 2**20, 'seconds': 0,
                'process_seconds': 0, 'warnings': []}
    res = build_site(tmp_path_factory.mktemp('site') / '_docs', nbs_path=NBS)
    print(f"\nsite: {len(res['pages'])} pages, {res['size_mb']:.1f} MB, built in {res['seconds']:.0f} s "
          f"(nbdev processing {res['process_seconds']:.0f} s), {len(res['warnings'])} Sphinx warnings")
    for w in res['import_warnings']: print(f"  notebook fix: {w}")
    return res


def test_build_clean(built):
    "The build produced every page, and Sphinx had nothing to warn about (a warning is markup the page gets wrong)."
    print(f"\n{len(built['pages'])} pages, {built['size_mb']:.1f} MB; Sphinx warnings: {built['warnings']}")
    missing = [p for p in built['pages'] if not (Path(built['out']) / f'{p}.html').exists()]
    assert not missing, f"pages not written: {missing}"
    assert not built['warnings'], f"Sphinx warnings: {built['warnings'][:10]}"


@pytest.fixture(scope='module')   # the module's: its browser stops before another file starts one
def server(built):
    "An HTTP server for the site on 127.0.0.1 at a free port; yields the base URL, stops at the end of the session."
    handler = functools.partial(_Quiet, directory=str(built['out']))
    httpd = socketserver.ThreadingTCPServer(('127.0.0.1', 0), handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True); t.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown(); httpd.server_close()


@pytest.fixture(scope='module')   # the module's: its browser stops before another file starts one
def browser():
    chromium_or_fail()
    from playwright.sync_api import sync_playwright
    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield b
    b.close(); pw.stop()


_PAGE_JS = r"""async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  await Promise.all([...document.images].map(i => i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; })));
  const math = [...document.querySelectorAll('span.math, div.math')];
  const clone = document.body.cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, mjx-container, .highlight, textarea').forEach(e => e.remove());
  const text = clone.innerText;
  const raw = [];
  for (const re of [/\$\$/g, /\\\(/g, /\\\[/g, /\\begin\{/g, /\$[^$\n]{0,80}?[\\^_][^$\n]{0,80}?\$/g])
    for (const m of text.matchAll(re)) raw.push(text.slice(Math.max(0, m.index - 30), m.index + 40));
  const imgs = [...document.querySelectorAll('img')].map(i => ({src: i.currentSrc.slice(0, 80), ok: i.complete && i.naturalWidth > 0}));
  return {
    math: math.length, typeset: math.filter(e => e.querySelector('mjx-container')).length,
    merror: document.querySelectorAll('mjx-merror').length, raw, imgs,
    hrefs: [...document.querySelectorAll('a[href]')].map(a => a.href),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id),
    sidebar: [...document.querySelectorAll('.bd-sidebar-primary nav a.reference.internal')].map(a => a.getAttribute('href')),
    animations: document.querySelectorAll('div.animation').length,
    fa_icons: document.querySelectorAll('i.fa, [class^="fa fa-"]').length,
    widget_notes: document.querySelectorAll('.widget-note').length,
    widget_views: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"], .jupyter-widgets').length,
    text_len: document.body.innerText.length,
  };
}"""


def _is_local(url, base):
    u = urlsplit(url)
    return u.scheme in ('data', 'blob', 'about') or (u.scheme in ('http', 'https') and u.netloc == urlsplit(base).netloc)


@pytest.fixture(scope='module')   # the module's: its browser stops before another file starts one
def crawl(built, server, browser):
    "Every page of the site read once in Chromium: console errors, requests, math, images, links, animations."
    ctx = browser.new_context()
    pages = {}
    for name in built['pages']:
        rec = {'console': [], 'failed': [], 'requests': [], 'bad_status': []}
        page = ctx.new_page()
        page.on('console', lambda m, r=rec: r['console'].append(m.text) if m.type == 'error' else None)
        page.on('pageerror', lambda e, r=rec: r['console'].append(f'page error: {e}'))
        page.on('requestfailed', lambda q, r=rec: r['failed'].append(f'{q.url} ({q.failure})'))
        page.on('request', lambda q, r=rec: r['requests'].append(q.url))
        page.on('response', lambda s, r=rec: r['bad_status'].append(f'{s.status} {s.url}') if s.status >= 400 else None)
        page.goto(server + f'{name}.html', wait_until='load')
        rec.update(page.evaluate(_PAGE_JS))
        rec['anim_advanced'] = []
        for i in range(rec['animations']):                       # play each animation; its frame must change
            anim = page.locator('div.animation').nth(i)
            anim.scroll_into_view_if_needed()
            img = anim.locator('img').first
            before = img.get_attribute('src')
            anim.locator('button[title="Pause"]').click()
            anim.locator('button[title="First frame"]').click()
            first = img.get_attribute('src')
            anim.locator('button[title="Play"]').click()
            try:
                page.wait_for_function('([el, s]) => el.src !== s', arg=[img.element_handle(), first], timeout=8000)
                moved = True
            except Exception: moved = False
            anim.locator('button[title="Pause"]').click()
            labels = anim.locator('.anim-buttons button').all_inner_texts()
            rec['anim_advanced'].append({'moved': moved, 'had_frame': bool(before), 'labels': labels})
        page.wait_for_timeout(200)                               # late requests still count
        page.close()
        pages[name] = rec
    ctx.close()
    return pages


def test_pages_load_clean(crawl, server):
    "Every page: zero console errors, zero failed requests, no HTTP error, zero requests to a non-local host."
    n_req = sum(len(r['requests']) for r in crawl.values())
    print(f"\n{len(crawl)} pages, {n_req} requests, all to {urlsplit(server).netloc} or data: URIs")
    for name, r in crawl.items():
        assert r['text_len'] > 200, f"{name}.html is (almost) empty"
        assert not r['console'], f"{name}.html: console errors {r['console'][:5]}"
        assert not r['failed'], f"{name}.html: failed requests {r['failed'][:5]}"
        assert not r['bad_status'], f"{name}.html: HTTP errors {r['bad_status'][:5]}"
        remote = [u for u in r['requests'] if not _is_local(u, server)]
        assert not remote, f"{name}.html requested non-local hosts: {remote[:5]}"


def test_math_typeset(crawl):
    "MathJax (served from the site) typeset every math element, and no raw TeX is left in the text."
    n = sum(r['math'] for r in crawl.values())
    print(f"\n{n} math elements on {sum(1 for r in crawl.values() if r['math'])} pages, all typeset")
    assert n > 100, f"only {n} math elements on the whole site: is dollar math parsed?"
    for name, r in crawl.items():
        assert r['typeset'] == r['math'], f"{name}.html: {r['math'] - r['typeset']} of {r['math']} math elements not typeset"
        assert r['merror'] == 0, f"{name}.html: {r['merror']} MathJax errors"
        assert not r['raw'], f"{name}.html: raw TeX left in the text: {r['raw'][:3]}"


def test_images_load(crawl):
    "Every image on every page loaded (naturalWidth > 0), figures and animation frames alike."
    imgs = [(name, i) for name, r in crawl.items() for i in r['imgs']]
    print(f"\n{len(imgs)} images, all loaded")
    assert len(imgs) > 50, f"only {len(imgs)} images on the site"
    bad = [(name, i['src']) for name, i in imgs if not i['ok']]
    assert not bad, f"images that did not load: {bad[:5]}"


def test_animations_play_offline(crawl):
    "Every jshtml animation advances when played, and its player icons are plain symbols (no CDN icon font)."
    anims = [(name, a) for name, r in crawl.items() for a in r['anim_advanced']]
    print(f"\n{len(anims)} animations on {sum(1 for r in crawl.values() if r['animations'])} pages, all advanced when played")
    assert anims, "no jshtml animation on the site (the explorers' static versions are missing)"
    for name, a in anims:
        assert a['had_frame'], f"{name}.html: an animation showed no frame before play"
        assert a['moved'], f"{name}.html: an animation did not advance within 8 s of Play"
        assert all(l.strip() for l in a['labels']), f"{name}.html: a player button has no visible label {a['labels']}"
    assert all(r['fa_icons'] == 0 for r in crawl.values()), "Font Awesome icon elements remain (they need the CDN font)"


def test_widgets_static(crawl):
    "No widget JavaScript or widget view on the static pages; each page with an explorer widget also has its animation."
    notes = {name: r['widget_notes'] for name, r in crawl.items() if r['widget_notes']}
    print(f"\nwidget notes on {notes}; widget views rendered: {sum(r['widget_views'] for r in crawl.values())}")
    assert notes, "no explorer widget found on the site (the notebooks' interact outputs should be replaced by a note)"
    for name, r in crawl.items():
        assert r['widget_views'] == 0, f"{name}.html renders a widget view (needs widget JavaScript)"
        assert not [u for u in r['requests'] if 'jupyter-widgets' in u or 'html-manager' in u], f"{name}.html loads widget JS"
    for name in notes: assert crawl[name]['animations'] > 0, f"{name}.html has a widget but no animation (its static version)"


def test_sidebar_course_order(crawl, built):
    "The sidebar lists the pages in course order, the same order as nbdev's own sidebar.yml for Quarto."
    import io, contextlib, yaml
    from nbdev.quarto import nbdev_sidebar
    from dmlearn.docs import course_pages, _page_name
    def order(name):                                          # pages in sidebar order ('#x' and '' are the page itself)
        hs = [h.split('#')[0].removesuffix('.html') or name for h in crawl[name]['sidebar']]
        return [h for i, h in enumerate(hs) if h not in hs[:i]]
    side = order('index')
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): nbdev_sidebar.__wrapped__(path=NBS, printit=True, force=True)
    nbdev_order = [_page_name(f) for f in yaml.safe_load(buf.getvalue())['website']['sidebar']['contents']]
    course = [p['page'] for p in course_pages(NBS)]
    print(f"\nsidebar: {' > '.join(side)}")
    assert side == course, f"sidebar {side} != course order {course}"
    assert course == nbdev_order, f"course order {course} != nbdev's sidebar.yml order {nbdev_order}"
    for name in crawl: assert order(name) == side, f"{name}.html shows another sidebar: {order(name)}"


def test_search_finds_a_word(built, server, browser):
    "The site's search finds a page by a word from its title, and finds nothing for a word on no page."
    from dmlearn.docs import course_pages
    pages = course_pages(NBS)
    target = next(p for p in pages[1:] if re.search(r'[A-Za-z]{7,}', p['title']))
    word = max(re.findall(r'[A-Za-z]{7,}', target['title']), key=len)
    page = browser.new_page()
    def results(q):
        page.goto(server + f'search.html?q={q}', wait_until='load')
        page.wait_for_function("() => { const s = document.querySelector('#search-results .search-summary, p.search-summary');"
                               " return s && /found|did not match/i.test(s.innerText); }", timeout=20000)
        return [a.split('/')[-1].split('#')[0].split('?')[0] for a in
                page.eval_on_selector_all('#search-results ul.search li a', 'els => els.map(a => a.href)')]
    found, none = results(word), results('zqxjvbwk')
    page.close()
    print(f"\nsearch {word!r}: {len(found)} results, {target['page']}.html among them; a nonsense word: {len(none)}")
    assert f"{target['page']}.html" in found, f"search for {word!r} did not list {target['page']}.html: {found[:10]}"
    assert none == [], f"a word on no page found {none}"


def test_internal_links_resolve(crawl, server):
    "Every local href on every page answers 200, and every #anchor it names exists on its target page."
    local = {urldefrag(h)[0] for r in crawl.values() for h in r['hrefs'] if _is_local(h, server) and h.startswith('http')}
    bad = []
    for u in sorted(local):
        try: urllib.request.urlopen(u, timeout=10).read(1)
        except Exception as e: bad.append(f'{u}: {e}')
    anchors = [(n, h) for n, r in crawl.items() for h in r['hrefs'] if _is_local(h, server) and '#' in h and urldefrag(h)[1]]
    ids = {f'{n}.html': set(r['ids']) for n, r in crawl.items()}
    missing = sorted({h.replace(server, '') for n, h in anchors
                      if (p := urlsplit(h).path.lstrip('/') or 'index.html') in ids and urldefrag(h)[1] not in ids[p]})
    print(f"\n{len(local)} local link targets, all 200; {len(anchors)} links to anchors, {len(missing)} missing")
    assert not bad, f"local links that do not resolve: {bad[:10]}"
    assert not missing, f"links to anchors that are not on their page: {missing}"


def test_docs_command(tmp_path, monkeypatch, capsys):
    "`dmlearn docs` through the CLI hook: its options, a refused --out, and the one-line message without the docs tools."
    import argparse
    import dmlearn.docs as docs
    parser = argparse.ArgumentParser(prog='dmlearn'); docs.add_commands(parser.add_subparsers(dest='command'))
    a = parser.parse_args(['docs'])
    assert (a.out, a.nbs, a.workers, a.run) == ('_docs', None, 2, docs._run_docs)
    (tmp_path / 'notes.txt').write_text('not a site')
    a = parser.parse_args(['docs', '--out', str(tmp_path)])
    assert a.run(a, parser) == 1 and 'not an earlier site build' in capsys.readouterr().err
    assert (tmp_path / 'notes.txt').exists()
    monkeypatch.setattr(docs, 'missing_docs_tools', lambda: ['sphinx'])
    assert a.run(a, parser) == 2
    err = capsys.readouterr().err
    print(f"\nwithout the docs tools: {err.strip()}")
    assert err.count('\n') == 1 and 'pip install -e ".[docs]"' in err
