"""The book: sources are clean, the table of contents matches the notebooks, and
``jupyter-book build -W`` (warnings are errors, execution off) passes on the executed copies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in [toc, *toc.get("parts", [])]:
        for ch in part.get("chapters", []):
            files.append(ch["file"])
            files += [s["file"] for s in ch.get("sections", [])]
    return files


def test_config_is_offline_and_unexecuted():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["execute"]["execute_notebooks"] == "off"
    assert cfg["only_build_toc_files"] is True
    for folder in [".venv", "_build", "notebooks", "data", "tests", "benchmarks"]:
        assert folder in cfg["exclude_patterns"]
    assert cfg["html"]["use_repository_button"] is False
    assert not cfg["launch_buttons"]["binderhub_url"] and not cfg["launch_buttons"]["colab_url"]
    assert "http" not in (ROOT / "_config.yml").read_text()  # no remote assets at build time


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_source_is_clean(path):
    nb = nbformat.read(str(path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), (
        f"{path.name} has outputs: commit sources without outputs (executed copies go to book/executed)"
    )
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    assert 'profile = "smoke"' in params[0].source
    assert not any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in code)


def _tracked(paths: list[Path]) -> list[Path]:
    """The committed ones among ``paths`` (all of them outside a git checkout): a notebook
    still being written may wait for its _toc.yml line until it is committed."""
    proc = subprocess.run(
        ["git", "ls-files", "notebooks"], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        return paths
    tracked = set(proc.stdout.split())
    return [p for p in paths if str(p.relative_to(ROOT)) in tracked]


def test_toc_points_at_executed_copies():
    files = _toc_files()
    for nb in _tracked(NOTEBOOKS):
        assert f"book/executed/{nb.stem}" in files, (
            f"{nb.name} is committed but not a chapter: add `  - file: book/executed/{nb.stem}` "
            "to _toc.yml"
        )
    for f in files:
        if f.startswith("book/executed/"):
            assert (ROOT / "notebooks" / f"{Path(f).name}.ipynb").exists(), f"{f}: no source"
        else:
            assert (ROOT / f"{f}.md").exists() or (ROOT / f"{f}.ipynb").exists(), f


def test_book_builds_with_warnings_as_errors(tmp_path, in_ci):
    missing = [
        f
        for f in _toc_files()
        if f.startswith("book/executed/") and not (ROOT / f"{f}.ipynb").exists()
    ]
    if missing:
        msg = f"not executed yet: {missing}; run `make executed`"
        if in_ci:
            pytest.fail(msg)
        pytest.skip(msg)
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run(
        [str(jb), "build", "-W", "--keep-going", "--path-output", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    log = proc.stdout + proc.stderr
    problems = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
    assert proc.returncode == 0, "\n".join(problems) or log[-4000:]
    html = tmp_path / "_build" / "html"
    for f in _toc_files():
        page = html / f"{f}.html"
        assert page.exists() and page.stat().st_size > 1000, page
    assert (html / "index.html").exists()
    data = (html / "book" / "executed" / "01_data.html").read_text()
    assert data.count("<img") >= 4  # the data chapter's figures are in the page
    assert 'class="pasted-text">244<' in data or "dataset" in data  # glued numbers rendered
    assert "{glue" not in data  # no unrendered roles
    method = (html / "book" / "method.html").read_text()
    for section in ["Training", "Curve fitting", "TAG", "kiba244", "ECFP4"]:
        assert section in method


def test_cli_names_unknown_notebook():
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("mtlc")), "book", "execute", "99_nope"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "99_nope" in proc.stderr and "available:" in proc.stderr
    assert "Traceback" not in proc.stderr


def _headline_map() -> dict[str, tuple[str, str]]:
    """The findings page's HEADLINE dict ({name: (chapter, key)}), read from its source."""
    import ast

    nb = nbformat.read(str(ROOT / "notebooks" / "06_findings.ipynb"), as_version=4)
    for cell in nb.cells:
        for node in ast.walk(ast.parse(cell.source)) if cell.cell_type == "code" else ():
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "HEADLINE":
                return ast.literal_eval(node.value)
    raise AssertionError("06_findings.ipynb defines no HEADLINE dict")


def _is_nan(x) -> bool:
    return isinstance(x, float) and x != x


def test_findings_page_repeats_the_chapters_exactly(executed):
    from mtlc.report import read_glue

    findings = read_glue(executed("06_findings"))
    names = {"01": "01_data", "02": "02_learning_curves", "03": "03_curve_fits"}
    names |= {"04": "04_pairwise_and_tag", "05": "05_foundation_context"}
    chapters = {ch: read_glue(executed(name)) for ch, name in names.items()}
    headline = _headline_map()
    assert len(headline) >= 30
    assert findings["n_absent_keys"] == 0, "a chapter no longer glues a key the findings quote"
    stale = "stale findings page: run `mtlc book execute 06` after re-executing a chapter"
    for name, (ch, key) in headline.items():
        want, got = chapters[ch][key], findings[name]
        same = got == want or (_is_nan(got) and _is_nan(want))  # kinase200 keys in smoke
        assert same, (name, ch, key, got, want, stale)
    # kinase200 answers: present exactly when chapter 02 read the stored study
    assert findings["have_kinase200"] == chapters["02"]["have_kinase200"]
    if findings["have_kinase200"]:
        assert findings["k200_tasks"] == 198
        gain = chapters["02"]["k200_mtl_gain_scaffold"]
        assert findings["k200_mtl_word_scaffold"] == ("raises" if gain > 0 else "lowers")
    # the direction words follow the numbers they summarise
    gap = chapters["02"]["auc_compound_mean"] - chapters["02"]["auc_scaffold_mean"]
    assert findings["split_word"] == ("harder" if gap > 0 else "easier" if gap < 0 else "as hard")
    assert (findings["mtl_word"] == "raises") == (chapters["02"]["mtl_gain_scaffold"] > 0)
    ratio = chapters["04"]["power_random_design_backward"] / chapters["04"]["power_tag_backward"]
    assert findings["rd_cost_ratio"] == pytest.approx(ratio)
    assert (findings["cost_claim"] == "Matches") == (ratio > 1)  # the paper: MTLCs cost more
    rd, tag = (chapters["04"][f"power_{m}_ranking_auc"] for m in ("random_design", "tag"))
    assert (findings["power_claim"] == "Reproduced") == (rd >= tag)  # ... and have more power
    # run times and profiles come from papermill's record in each executed chapter
    for ch, name in names.items():
        meta = nbformat.read(str(executed(name)), as_version=4).metadata["papermill"]
        assert findings[f"seconds_{ch}"] == pytest.approx(meta["duration"]), stale
        assert meta["parameters"]["profile"] in findings["chapter_profiles"]


def test_notebooks_declare_their_parameters():
    from mtlc.notebooks import declared_parameters

    for nb in NOTEBOOKS:
        assert "profile" in declared_parameters(nb), nb.name
    # the findings page reads the executed copies of its own run (mtlc book execute sets it)
    assert "executed_dir" in declared_parameters(ROOT / "notebooks" / "06_findings.ipynb")
    assert "executed_dir" not in declared_parameters(
        ROOT / "notebooks" / "02_learning_curves.ipynb"
    )


def test_mathjax_is_copied_from_the_pinned_package(tmp_path):
    from mtlc import book_mathjax

    dst = book_mathjax.copy_mathjax(tmp_path)
    assert dst == tmp_path / "_static" / "mathjax"
    assert (dst / "MathJax.js").stat().st_size > 10_000
    assert (dst / "config" / f"{book_mathjax.MATHJAX_CONFIG}.js").exists()
    # the web fonts the configuration names (_config.yml: HTML-CSS webFont STIX-Web)
    assert (dst / "jax" / "output" / "HTML-CSS" / "fonts" / "STIX-Web" / "fontdata.js").exists()
    stamp = (dst / ".copied-from").stat().st_mtime_ns
    book_mathjax.copy_mathjax(tmp_path)  # a second build does not copy again
    assert (dst / ".copied-from").stat().st_mtime_ns == stamp
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]
    assert "mtlc.book_mathjax" in cfg["extra_extensions"]
    assert cfg["config"]["mathjax_path"] == (
        f"mathjax/MathJax.js?config={book_mathjax.MATHJAX_CONFIG}"
    )
