"""The built book in a real browser (Debian chromium via playwright): every page of the table of
contents loads, shows no broken image, no broken internal link, no unrendered or missing glue,
and each chapter shows its figures or tables.

Serves the built HTML (``_build/html``, made by ``make html``; ``MTLC_BOOK_HTML`` points at
another build) on 127.0.0.1. Skips when chromium or the built book is absent locally; in CI
(``CI=true``) both are required and their absence fails.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("MTLC_BOOK_HTML", ROOT / "_build" / "html"))
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
]

pytestmark = pytest.mark.browser


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in [toc, *toc.get("parts", [])]:
        for ch in part.get("chapters", []):
            files.append(ch["file"])
            files += [s["file"] for s in ch.get("sections", [])]
    return files


PAGES = _toc_files()

# What each page must show at least: figures (plots, at least 200 px wide) and tables.
EXPECT: dict[str, dict[str, int]] = {
    "book/executed/01_data": {"figures": 4, "tables": 1},
    "book/executed/02_learning_curves": {"figures": 3, "tables": 2},
    "book/executed/03_curve_fits": {"figures": 4, "tables": 2},
    "book/executed/04_pairwise_and_tag": {"figures": 2, "tables": 2},
    "book/executed/05_foundation_context": {"figures": 2, "tables": 2},
    "book/executed/06_findings": {"tables": 2},
    "book/reproduce": {"tables": 1},
    "book/paper_comparison": {"tables": 1},
}


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
    _need((HTML / "index.html").exists(), f"{HTML} has no book: run `make html`", in_ci)
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
        # no network: every request that does not go to the local server is aborted and
        # recorded, so a page that needs a CDN (e.g. MathJax) shows it broken here
        pg.route("**/*", _local_only)
        yield pg
        browser.close()


BLOCKED: list[str] = []  # requests to anything but 127.0.0.1, aborted


def _local_only(route) -> None:
    if urlparse(route.request.url).hostname in {"127.0.0.1", "localhost"}:
        route.continue_()
    else:
        BLOCKED.append(route.request.url)
        route.abort()


_LINK_STATUS: dict[str, int] = {}  # each internal target fetched once per session


def _status(url: str) -> int:
    if url not in _LINK_STATUS:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                _LINK_STATUS[url] = r.status
        except urllib.error.HTTPError as exc:
            _LINK_STATUS[url] = exc.code
    return _LINK_STATUS[url]


def _check_page(page, url: str, base: str) -> dict:
    """Open ``url``; return image, link, table and glue facts. Fails on an HTTP error."""
    resp = page.goto(url, wait_until="load")
    assert resp is not None and resp.ok, f"{url}: HTTP {resp and resp.status}"
    imgs = page.eval_on_selector_all(
        "img",
        "els => els.map(e => ({src: e.currentSrc || e.src, w: e.naturalWidth, done: e.complete}))",
    )
    hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
    internal = set()
    for h in hrefs:
        target = urldefrag(urljoin(page.url, h))[0]
        if target and urlparse(target).netloc == urlparse(base).netloc:
            internal.add(target)
    return {
        "imgs": imgs,
        "broken_imgs": [i["src"] for i in imgs if not (i["done"] and i["w"] > 0)],
        "figures": [i for i in imgs if "_images/" in i["src"] and i["w"] >= 200],
        "links": internal,
        "broken_links": [(t, s) for t in sorted(internal) if (s := _status(t)) != 200],
        "tables": page.locator("main table").count(),
        "text": page.inner_text("main"),
        "pasted": page.eval_on_selector_all(
            "main .pasted-text", "els => els.map(e => e.textContent)"
        ),
        "system_messages": page.locator("main .system-message").count(),
    }


def test_index_redirects_to_the_introduction(site, page):
    # index.html is jupyter-book's redirect to the root page
    page.goto(site + "index.html")
    page.wait_for_url("**/book/intro.html", timeout=10_000)
    assert "Multi-task learning curves" in page.title()


@pytest.mark.parametrize("doc", PAGES)
def test_every_page_renders_completely(site, page, doc):
    if not (HTML / f"{doc}.html").exists():
        pytest.fail(f"{doc} is in _toc.yml but {HTML / doc}.html was not built")
    facts = _check_page(page, f"{site}{doc}.html", site)
    assert not facts["broken_imgs"], facts["broken_imgs"]
    assert not facts["broken_links"], facts["broken_links"]
    text = facts["text"]
    assert "{glue" not in text and "{doc}" not in text and "{cite" not in text, (
        f"{doc}: an unrendered role is in the page"
    )
    assert facts["system_messages"] == 0, f"{doc}: docutils error/warning boxes in the page"
    # a value glued as NaN renders as "nan": a chapter did not compute what the prose quotes
    assert not [p for p in facts["pasted"] if p.strip().lower() in {"nan", "none", ""}], (
        f"{doc}: pasted values {facts['pasted']}"
    )
    want = EXPECT.get(doc, {})
    assert len(facts["figures"]) >= want.get("figures", 0), (
        f"{doc}: expected {want['figures']} figures, found {len(facts['figures'])}"
    )
    assert facts["tables"] >= want.get("tables", 0), (
        f"{doc}: expected {want['tables']} tables, found {facts['tables']}"
    )


def test_introduction_links_every_chapter_and_pastes_answers(site, page):
    facts = _check_page(page, site + "book/intro.html", site)
    for doc in PAGES[1:]:
        assert any(link.endswith(f"{doc}.html") for link in facts["links"]), doc
    # the answers are pasted from the executed notebooks (cross-document glue)
    assert len(facts["pasted"]) >= 15, facts["pasted"]


# every executed chapter but the findings page, which is itself the summary
CHAPTERS = [d for d in PAGES if d.startswith("book/executed/") and not d.endswith("_findings")]


@pytest.mark.parametrize("doc", CHAPTERS)
def test_chapters_close_with_findings(site, page, doc):
    page.goto(f"{site}{doc}.html", wait_until="load")
    heading = page.locator("main h2", has_text="What we found")
    assert heading.count() == 1, f"{doc}: no 'What we found' section"
    assert page.locator("main section#what-we-found .pasted-text").count() >= 3


def test_references_resolve(site, page):
    facts = _check_page(page, site + "book/references.html", site)
    for author in ["Millinghoffer", "Fifty", "Padmakumar", "Mohr", "Tang", "Rogers", "RDKit"]:
        assert author in facts["text"], author
    # a citation in the introduction links to its entry on the references page
    page.goto(site + "book/intro.html", wait_until="load")
    cites = page.eval_on_selector_all(
        "main a[href*='references.html#']", "els => els.map(e => e.getAttribute('href'))"
    )
    assert cites, "the introduction cites nothing"


def test_equations_are_typeset_offline(site, page):
    # MathJax comes from the build (_static/mathjax, copied from jupyter-server-mathjax by
    # mtlc.book_mathjax), so with the network blocked the method page's TeX is typeset
    BLOCKED.clear()
    page.goto(site + "book/method.html", wait_until="load")
    n_math = page.locator("main .math").count()
    assert n_math >= 20, f"the method page has only {n_math} formulas"
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            "() => window.MathJax && MathJax.Hub && MathJax.isReady && "
            "!document.querySelector('main').innerText.includes('\\\\(') && "
            "document.querySelectorAll('main .MathJax, main .MathJax_Display').length > 0",
            timeout=30_000,
        )
    except PlaywrightTimeout:
        pytest.fail(f"MathJax did not typeset the method page in 30 s; blocked requests: {BLOCKED}")
    text = page.inner_text("main")
    for raw in ("\\(", "\\)", "\\[", "\\]", "$$", "\\frac", "\\sum"):
        assert raw not in text, f"raw TeX {raw!r} left in the method page"
    typeset = page.locator("main .MathJax, main .MathJax_Display").count()
    assert typeset >= n_math, (typeset, n_math)  # every formula rendered (display ones twice)
    assert page.locator("main .MathJax_Error, main merror").count() == 0
    src = page.eval_on_selector_all(
        "script[src*='MathJax.js']", "els => els.map(e => e.getAttribute('src'))"
    )
    assert src and all("_static/mathjax/" in u for u in src), src
    assert not BLOCKED, f"the method page asked the network for {BLOCKED}"
