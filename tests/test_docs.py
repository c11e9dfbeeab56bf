"""The documentation: its code snippets run, and the Sphinx build passes with -W.

The snippet tests need only skpc's own dependencies. The build test needs
the ``docs`` extra (sphinx, sphinx-gallery, numpydoc, matplotlib) and skips
cleanly without it. It builds a copy of ``docs/`` into ``tmp_path`` so that
sphinx-gallery's generated files never land in the checkout; set
``SKPC_DOCS_PLOT_GALLERY=0`` to skip executing the gallery examples.
"""

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p for p in [DOCS / "index.rst", *DOCS.glob("user_guide/*.rst")] if p.exists())

pytestmark = pytest.mark.skipif(not DOCS.is_dir(), reason="no docs/ folder in this checkout")


def python_blocks(text):
    """The bodies of the ``.. code-block:: python`` directives of a reST page, dedented.

    Returns
    -------
    list of (int, str)
        1-based line number of each directive and its code.
    """
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = re.match(r"^(\s*)\.\. code-block:: python\s*$", lines[i])
        if not match:
            i += 1
            continue
        start, indent = i + 1, len(match.group(1))
        i += 1
        body = []
        while i < len(lines):
            line = lines[i]
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            body.append(line)
            i += 1
        # Drop option lines (":linenos:") and dedent the block.
        body = [b for b in body if not re.match(r"^\s+:\w[\w-]*:", b)]
        width = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
        blocks.append((start, "\n".join(b[width:] for b in body).strip("\n")))
    return blocks


def test_python_blocks_parses_a_page():
    text = "Intro\n\n.. code-block:: python\n\n    x = 1\n    if x:\n        y = 2\n\nAfter.\n"
    assert python_blocks(text) == [(3, "x = 1\nif x:\n    y = 2")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_snippets_run(page, tmp_path, monkeypatch):
    """Every python block of a page runs, in order, in one namespace (as a reader would)."""
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    if not blocks:
        pytest.skip(f"{page.name} has no python code blocks")
    monkeypatch.chdir(tmp_path)  # a snippet that writes files writes them here
    namespace = {"__name__": "__docs__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning of short demo fits
        for line, code in blocks:
            try:
                exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
            except Exception as exc:  # name the block that failed
                raise AssertionError(f"the code block at {page.relative_to(ROOT)}:{line} failed: {exc!r}") from exc


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("sphinx_gallery")
    pytest.importorskip("numpydoc")
    pytest.importorskip("matplotlib")
    source = tmp_path / "docs"
    shutil.copytree(
        DOCS,
        source,
        ignore=shutil.ignore_patterns("_build", "auto_examples", "gen_modules", "sg_execution_times.rst"),
    )
    out = tmp_path / "html"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MPLBACKEND", "agg")
    plot_gallery = env.get("SKPC_DOCS_PLOT_GALLERY", "1").strip().lower() not in ("0", "false", "no", "off")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", str(source), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"sphinx failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"

    api = (out / "api.html").read_text(encoding="utf-8")
    for name in ("EinsumNetworkDensity", "CircuitOutlierDetector", "EinsumNetworkClassifier", "RegionGraph"):
        assert name in api
        page = out / "gen_modules" / f"skpc.{name}.html"
        assert page.is_file(), f"no API page for {name}"
    density = (out / "gen_modules" / "skpc.EinsumNetworkDensity.html").read_text(encoding="utf-8")
    for documented in ("score_conditional", "n_repetitions", "pd_vertical_only"):
        assert documented in density

    gallery = out / "auto_examples"
    assert (gallery / "index.html").is_file()
    examples = sorted(p.name for p in gallery.glob("plot_*.html"))
    expected = sorted(p.stem + ".html" for p in (DOCS / "examples").glob("plot_*.py"))
    assert examples == expected and len(examples) >= 1
    if plot_gallery:
        # Every example made at least one figure.
        for name in expected:
            stem = name[: -len(".html")]
            assert list((out / "_images").glob(f"sphx_glr_{stem}_001.png")), f"{stem} made no figure"
