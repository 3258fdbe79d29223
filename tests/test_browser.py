"""The built book in a real browser (Debian chromium via playwright): every image loads, the
data chapter shows its figures, and no internal link is broken.

Serves ``_build/html`` (made by ``make html``) on 127.0.0.1. Skips when chromium or the built
book is absent locally; in CI (``CI=true``) both are required and their absence fails.
"""

from __future__ import annotations

import functools
import http.server
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
]

pytestmark = pytest.mark.browser


def _need(cond: bool, msg: str, in_ci: bool) -> None:
    if not cond:
        if in_ci:
            pytest.fail(msg)
        pytest.skip(msg)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture(scope="module")
def site(in_ci):
    _need((HTML / "index.html").exists(), "_build/html missing: run `make html`", in_ci)
    handler = functools.partial(_Quiet, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def page(in_ci):
    _need(CHROMIUM.exists(), "Debian chromium missing: apt-get install -y chromium", in_ci)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        pg = browser.new_page()
        yield pg
        browser.close()


def _check_page(page, url: str, base: str) -> dict:
    """Open ``url``; return image and link facts. Fails on HTTP errors of the page itself."""
    resp = page.goto(url, wait_until="load")
    assert resp is not None and resp.ok, f"{url}: HTTP {resp and resp.status}"
    imgs = page.eval_on_selector_all(
        "img",
        "els => els.map(e => ({src: e.currentSrc || e.src, w: e.naturalWidth, done: e.complete}))",
    )
    hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
    broken_imgs = [i["src"] for i in imgs if not (i["done"] and i["w"] > 0)]
    internal = set()
    for h in hrefs:
        target = urldefrag(urljoin(page.url, h))[0]
        if urlparse(target).netloc == urlparse(base).netloc and target:
            internal.add(target)
    broken_links = []
    for target in sorted(internal):
        try:
            with urllib.request.urlopen(target, timeout=10) as r:
                if r.status != 200:
                    broken_links.append((target, r.status))
        except urllib.error.HTTPError as exc:
            broken_links.append((target, exc.code))
    return {
        "imgs": imgs,
        "broken_imgs": broken_imgs,
        "links": internal,
        "broken_links": broken_links,
    }


def test_index_loads_with_working_links(site, page):
    # index.html is jupyter-book's redirect to the root page
    page.goto(site + "index.html")
    page.wait_for_url("**/book/intro.html", timeout=10_000)
    facts = _check_page(page, page.url, site)
    assert "Multi-task learning curves" in page.title()
    assert not facts["broken_imgs"], facts["broken_imgs"]
    assert not facts["broken_links"], facts["broken_links"]
    assert any(link.endswith("method.html") for link in facts["links"])
    assert any(link.endswith("01_data.html") for link in facts["links"])


def test_data_chapter_figures_and_links(site, page):
    if not (HTML / "book" / "executed" / "01_data.html").exists():
        pytest.skip("data chapter not built: run `make book`")
    facts = _check_page(page, site + "book/executed/01_data.html", site)
    figures = [i for i in facts["imgs"] if "_images/" in i["src"]]
    assert len(figures) >= 4, f"expected the chapter's figures, got {facts['imgs']}"
    assert all(i["w"] >= 200 for i in figures)  # real plots, not icons
    assert not facts["broken_imgs"], facts["broken_imgs"]
    assert not facts["broken_links"], facts["broken_links"]
    text = page.inner_text("main")
    assert "{glue" not in text and "The data" in text
