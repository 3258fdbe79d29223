"""Every number in the book's prose comes from an executed notebook (glue), not from typing.

Scans the markdown cells of ``notebooks/0*.ipynb`` and the pages ``book/*.md`` for numbers
outside glue roles, code, math and links. A number that is a parameter or a definition (a
threshold, a grid start, a fold count, a planted value) is allowed only through the explicit
:data:`ALLOWED` list below, with the reason. Results (counts, AUCs, shares, times) must be
glued: ``{glue:text}`key:fmt``` in a notebook, ``{glue:text}`executed/NN_name.ipynb::key:fmt```
on a page. The glue roles themselves are checked against the executed copies, so a renamed key
fails here with its name rather than as a build warning.

``book/method.md`` is exempt as a whole (:data:`EXEMPT`): it states the method's parameters and
the measurements behind its choices, each with the benchmark or test that produces it.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from mtlc.report import read_glue

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
PAGES = sorted((ROOT / "book").glob("*.md"))

EXEMPT = {
    "book/method.md": "parameters and the measurements behind the method's choices, each named "
    "with the benchmark or test that produces it (benchmarks/, tests/)",
}

# Parameters and definitions that may be typed, per file: {file: {number: reason}}.
ALLOWED: dict[str, dict[str, str]] = {
    "notebooks/01_data.ipynb": {
        "100": "kiba244 recipe threshold (measured compounds)",
        "10": "kiba244 recipe thresholds (actives, inactives)",
        "3.0": "KIBA activity threshold (raw score)",
        "16": "smallest size of the learning-curve grid",
    },
    "notebooks/02_learning_curves.ipynb": {
        "1": "enumeration",
        "2": "enumeration",
        "0.5": "chance level of ROC-AUC",
    },
    "notebooks/03_curve_fits.ipynb": {
        "1000": "unit of the sample sizes",
        "0.1": "definition of the non_monotone flag (AUC drop)",
        "60": "extrapolation protocol: share of sizes fitted",
        "4": "extrapolation protocol: minimum points fitted",
        "0": "n_S = 0 for the single-task points (definition)",
        "95": "95 % band (definition)",
        "0.05": "significance level of the BH q-values",
    },
    "notebooks/04_pairwise_and_tag.ipynb": {
        "0.97": "planted relatedness inside a synthetic group (parameter)",
        "0": "planted relatedness between groups; partner size 0 (definitions)",
        "5": "TAG probe interval in steps (parameter)",
        "0.05": "significance level of the BH q-values",
        "1": "ranking AUC scale: 1 is perfect",
        "0.5": "ranking AUC scale: 0.5 is chance",
    },
    "notebooks/05_foundation_context.ipynb": {
        "0.83": "planted same-group relatedness (parameter)",
        "0.28": "planted relatedness through the shared factor (parameter)",
        "3": "smoke protocol: synthetic folds (parameter)",
        "2": "smoke protocol: folds run; partners measured; METHOD section number",
        "300": "minimum optimizer steps of a fine-tuned network (parameter)",
        "16": "smallest size of the grid",
        "95": "95 % t-intervals (definition)",
        "1": "additivity scale: 1 means purely pairwise (definition)",
        "30": "partner choice: minimum shared compounds (parameter)",
        "0": "partner choice: |phi| close to 0 (definition); test folds 0-2",
        "10": "scaffold folds (parameter)",
        "20": "KIBA targets of the full profile (parameter)",
        "5": "top-5 partners in KIBA selection (parameter)",
        "15": "epoch budget of target training (parameter)",
        "60": "pretraining epoch budget (parameter)",
        "100": "minimum optimizer steps (parameter)",
        "128": "largest size of the smoke selection (parameter)",
        "02": "chapter number",
        "04": "chapter number",
    },
    "notebooks/06_findings.ipynb": {
        "02": "chapter number",
        "03": "chapter number",
    },
    "book/intro.md": {
        "1": "additivity scale: 1 means purely pairwise (definition)",
    },
    "book/paper_comparison.md": {
        "3.0": "KIBA activity threshold (raw score)",
        "10": "fold count; kiba244 recipe thresholds (parameters)",
        "100": "kiba244 recipe threshold; minimum optimizer steps (parameters)",
        "0": "bound of the asymptote c (definition)",
        "1": "bound of the asymptote c (definition)",
        "128": "trunk width (parameter)",
        "256": "the width it was compared with (parameter)",
        "02": "chapter number",
        "03": "chapter number",
        "04": "chapter number",
        "05": "chapter number",
    },
    "book/reproduce.md": {
        "3.11": "Python version",
        "02": "chapter number",
        "03": "chapter number",
        "04": "chapter number",
        "05": "chapter number",
    },
}

_NUMBER = re.compile(r"(?<![\w.\-/])\d+(?:[.,]\d+)*%?(?![\w/])")
_STRIP = [
    re.compile(r"^(```|~~~).*?^\1", re.S | re.M),  # fenced code and directives
    re.compile(r"<!--.*?-->", re.S),
    re.compile(r"\$\$.*?\$\$", re.S),  # display math
    re.compile(r"\{[\w:.-]+\}`[^`]*`"),  # MyST roles: glue, doc, cite, ...
    re.compile(r"`[^`]*`"),  # inline code
    re.compile(r"\$[^$\n]+\$"),  # inline math
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"^\([\w-]+\)=\s*$", re.M),  # MyST labels
]
_GLUE = re.compile(r"\{glue(?::\w+)?\}`([^`]*)`")


def _prose(text: str) -> str:
    for pattern in _STRIP:
        text = pattern.sub(" ", text)
    return text


def _typed_numbers(text: str) -> list[str]:
    return [m.group().rstrip("%") for m in _NUMBER.finditer(_prose(text))]


def _markdown(path: Path) -> str:
    if path.suffix == ".md":
        return path.read_text()
    nb = nbformat.read(str(path), as_version=4)
    return "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


SOURCES = [p for p in NOTEBOOKS + PAGES if str(p.relative_to(ROOT)) not in EXEMPT]


def test_scanner_finds_typed_results_and_ignores_glue():
    text = (
        "AUC 0.743 on 1,234 pairs (12 %), {glue:text}`auc:.3f` and `code 7` and $n = 16$,\n"
        "EXP3 on ECFP4 and kiba244, t02, [link](a/b5.html), {cite:p}`fifty2021`\n"
        "```python\nx = 99\n```\n"
    )
    assert _typed_numbers(text) == ["0.743", "1,234", "12"]


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_prose_numbers_are_glued_or_allowed(path):
    key = str(path.relative_to(ROOT))
    allowed = ALLOWED.get(key, {})
    typed = _typed_numbers(_markdown(path))
    unexplained = sorted(set(typed) - set(allowed))
    assert not unexplained, (
        f"{key}: typed numbers {unexplained} in the prose. Glue results from the notebook "
        "(mtlc.report.glue + {glue:text}`key:fmt`); a parameter or definition goes into "
        "ALLOWED in tests/test_prose_numbers.py with its reason"
    )


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_allow_list_has_no_stale_entries(path):
    # an allowance nobody uses any more would let a future typed result through unnoticed
    key = str(path.relative_to(ROOT))
    stale = sorted(set(ALLOWED.get(key, {})) - set(_typed_numbers(_markdown(path))))
    assert not stale, f"{key}: remove {stale} from ALLOWED (no longer in the prose)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_glue_roles_name_glued_keys(path, executed):
    text = _markdown(path)
    assert "`{glue" not in text, f"{path.name}: a glue role inside inline code is not rendered"
    glued = read_glue(executed(path.stem))
    roles = [r for r in _GLUE.findall(text) if "::" not in r]  # local glue only
    missing = sorted({r.split(":", 1)[0] for r in roles} - set(glued))
    assert not missing, f"{path.name}: the prose pastes {missing}, which the notebook never glues"


@pytest.mark.parametrize("path", PAGES, ids=[p.name for p in PAGES])
def test_page_glue_roles_name_glued_keys(path, executed):
    missing = []
    for role in _GLUE.findall(path.read_text()):
        assert "::" in role, f"{path.name}: `{role}` needs the notebook path (path::key:fmt)"
        doc, rest = role.split("::", 1)
        # myst-nb splits the format at the last colon: without one the key would be cut
        assert ":" in rest, f"{path.name}: `{role}` needs a format spec (e.g. `:s`, `:.3f`)"
        key = rest.rsplit(":", 1)[0]
        if key not in read_glue(executed(Path(doc).stem)):
            missing.append(role)
    assert not missing, f"{path.name}: glue keys not found in the executed notebooks: {missing}"


CHAPTERS = [p for p in NOTEBOOKS if p.stem != "06_findings"]


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_opens_with_its_question_and_closes_with_its_findings(path):
    nb = nbformat.read(str(path), as_version=4)
    first, last = nb.cells[0], nb.cells[-1]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert len(first.source.split()) >= 40, f"{path.name}: say what the chapter shows"
    assert last.cell_type == "markdown" and last.source.startswith("## What we found"), (
        f"{path.name}: close with a '## What we found' markdown cell"
    )
    assert len(_GLUE.findall(last.source)) >= 3, f"{path.name}: findings need glued numbers"
