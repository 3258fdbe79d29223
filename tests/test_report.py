"""glue / read_glue: same bundle as myst-nb, valid nbformat, exact round trip, renders in a book."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from mtlc import report
from mtlc.notebooks import NotebookExecutionError, discover, execute

ROOT = Path(__file__).resolve().parents[1]


def _capture(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict, dict]]:
    """Replace IPython's display with a recorder of (data, metadata) bundles."""
    import IPython.display

    seen: list[tuple[dict, dict]] = []

    def fake_display(obj, raw=False, metadata=None):
        assert raw is True
        seen.append((obj, metadata or {}))

    monkeypatch.setattr(IPython.display, "display", fake_display)
    return seen


def _notebook_from(bundles: list[tuple[dict, dict]], path: Path) -> Path:
    cell = new_code_cell("glue(...)")
    # new_output validates against the nbformat schema: this is what nbclient does in a kernel.
    cell.outputs = [new_output("display_data", data=d, metadata=m) for d, m in bundles]
    nb = new_notebook(cells=[cell])
    nbformat.validate(nb)
    nbformat.write(nb, str(path))
    return path


@pytest.mark.parametrize("display", [True, False])
def test_bundle_matches_myst_nb(monkeypatch, display):
    seen = _capture(monkeypatch)
    report.glue("n", np.int64(244), display=display)
    ((data, meta),) = seen
    prefix = "" if display else report.GLUE_PREFIX
    assert meta["scrapbook"] == {"name": "n", "mime_prefix": prefix}
    assert data == {prefix + "text/plain": "244"}  # numpy scalar shown as a plain int
    assert report.GLUE_PREFIX == "application/papermill.record/"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_floats_round_trip(tmp_path, monkeypatch, dtype):
    seen = _capture(monkeypatch)
    x = dtype(0.1)
    report.glue("x", x, display=False)
    report.glue("arr0", np.array(3, dtype=dtype))
    got = report.read_glue(_notebook_from(seen, tmp_path / "nb.ipynb"))
    assert got["x"] == float(x)  # exact: the float32 value widened, not re-rounded
    assert got["arr0"] == 3.0


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(value=json_values, display=st.booleans())
def test_round_trip_any_json_value(tmp_path_factory, value, display):
    import IPython.display

    seen: list = []
    orig = IPython.display.display
    IPython.display.display = lambda obj, raw=False, metadata=None: seen.append((obj, metadata))
    try:
        report.glue("v", value, display=display)
    finally:
        IPython.display.display = orig
    path = _notebook_from(seen, tmp_path_factory.mktemp("g") / "nb.ipynb")
    assert report.read_glue(path)["v"] == value


def test_non_json_values(tmp_path, monkeypatch):
    seen = _capture(monkeypatch)
    report.glue("nan", float("nan"))
    report.glue("tup", (1, 2.5, "a"))
    report.glue("obj", object())
    got = report.read_glue(_notebook_from(seen, tmp_path / "nb.ipynb"))
    assert math.isnan(got["nan"])
    assert got["tup"] == [1, 2.5, "a"]  # JSON copy wins: tuples come back as lists
    assert isinstance(got["obj"], str) and got["obj"].startswith("<object object")


def test_later_glue_wins_and_plain_outputs_ignored(tmp_path, monkeypatch):
    seen = _capture(monkeypatch)
    report.glue("k", 1)
    report.glue("k", 2)
    seen.append(({"text/plain": "'not glued'"}, {}))
    assert report.read_glue(_notebook_from(seen, tmp_path / "nb.ipynb")) == {"k": 2}


def test_repo_root_found_from_subfolder(tmp_path):
    assert report.repo_root(ROOT / "notebooks") == ROOT
    assert report.repo_root(tmp_path) == ROOT  # falls back to the package's own checkout


# ----------------------------------------------------------------- real kernel and book


def _write_nb(path: Path, cells: list) -> None:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


@pytest.fixture(scope="module")
def glue_book(tmp_path_factory) -> Path:
    """A two-page book: a papermill-executed notebook that glues, and a page that pastes."""
    top = tmp_path_factory.mktemp("book")
    _write_nb(
        top / "src" / "01_glue.ipynb",
        [
            new_markdown_cell("# Glued"),
            new_code_cell('profile = "smoke"', metadata={"tags": ["parameters"]}),
            new_code_cell(
                "import numpy as np\nfrom mtlc.report import glue\n"
                "glue('n_tasks', np.int64(201))\nglue('auc', 0.87654, display=False)\n"
                "glue('prof', profile)\nimport os, sys\nglue('exe', sys.executable)\n"
                "glue('cwd', os.getcwd())"
            ),
            new_markdown_cell("In page: {glue:text}`n_tasks` tasks."),
        ],
    )
    execute(
        notebooks_dir=top / "src",
        output_dir=top / "executed",
        cwd=top,
        profile="full",
        log=None,
    )
    (top / "_config.yml").write_text(
        'title: t\nonly_build_toc_files: true\nexecute:\n  execute_notebooks: "off"\n'
        "exclude_patterns: [src]\n"
    )
    (top / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nchapters:\n  - file: executed/01_glue\n"
    )
    (top / "intro.md").write_text(
        "# Intro\n\nCross: {glue:text}`executed/01_glue.ipynb::n_tasks:d` tasks, "
        "AUC {glue:text}`executed/01_glue.ipynb::auc:.3f`.\n"
    )
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run(
        [str(jb), "build", "-W", "--keep-going", str(top)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return top


def test_kernel_round_trip(glue_book):
    got = report.read_glue(glue_book / "executed" / "01_glue.ipynb")
    exe, cwd = got.pop("exe"), got.pop("cwd")
    assert got == {"n_tasks": 201, "auc": 0.87654, "prof": "full"}  # papermill injected profile
    assert Path(exe).parent == Path(sys.executable).parent  # the venv's python runs notebooks
    assert Path(cwd) == glue_book  # kernel started in the requested working directory
    assert not (glue_book / "src" / "01_glue.ipynb").read_text().count("injected-parameters")


def test_executed_code_collapsed(glue_book):
    nb = nbformat.read(str(glue_book / "executed" / "01_glue.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all("hide-input" in c.metadata.get("tags", []) for c in code)
    src = nbformat.read(str(glue_book / "src" / "01_glue.ipynb"), as_version=4)
    assert all(
        "hide-input" not in c.metadata.get("tags", []) for c in src.cells
    )  # source untouched


def test_glue_text_renders_in_book(glue_book):
    html = glue_book / "_build" / "html"
    intro = (html / "intro.html").read_text()
    assert '<span class="pasted-text">201</span> tasks' in intro
    assert '<span class="pasted-text">0.877</span>' in intro
    page = (html / "executed" / "01_glue.html").read_text()
    assert '<span class="pasted-text">201</span> tasks' in page


def test_failing_cell_named(tmp_path):
    _write_nb(
        tmp_path / "src" / "02_bad.ipynb",
        [
            new_code_cell("x = 1"),
            new_code_cell("y = 2\nraise ValueError('planted failure')"),
            new_markdown_cell("after"),
        ],
    )
    with pytest.raises(NotebookExecutionError) as info:
        execute(notebooks_dir=tmp_path / "src", output_dir=tmp_path / "out", cwd=tmp_path, log=None)
    msg = str(info.value)
    assert (
        "02_bad.ipynb" in msg
        and "cell 2 (counting markdown cells, from 1; it starts `y = 2`), line 2" in msg
        and "ValueError: planted failure" in msg
    )
    assert "line 2" in msg
    assert (tmp_path / "out" / "02_bad.ipynb").exists()  # the partial copy is kept for reading


def test_discover_by_prefix(tmp_path):
    for n in ("01_data", "02_curves", "10_more"):
        _write_nb(tmp_path / f"{n}.ipynb", [])
    assert [p.stem for p in discover(notebooks_dir=tmp_path)] == ["01_data", "02_curves", "10_more"]
    assert [p.stem for p in discover(["02", "01_data.ipynb"], notebooks_dir=tmp_path)] == [
        "01_data",
        "02_curves",
    ]
    from mtlc.errors import ConfigError

    with pytest.raises(ConfigError, match="available: 01_data, 02_curves, 10_more"):
        discover(["nope"], notebooks_dir=tmp_path)
    with pytest.raises(ConfigError, match="profile"):
        execute(notebooks_dir=tmp_path, profile="huge")


def test_never_in_place(tmp_path):
    _write_nb(tmp_path / "01_x.ipynb", [])
    from mtlc.errors import ConfigError

    with pytest.raises(ConfigError, match="in place"):
        execute(notebooks_dir=tmp_path, output_dir=tmp_path, log=None)
