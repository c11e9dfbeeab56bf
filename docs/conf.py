"""Sphinx configuration of the skpc documentation.

Build (from the repository root)::

    .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

Set ``SKPC_DOCS_PLOT_GALLERY=0`` to build without executing the gallery
examples (the pages are then generated without their output and figures).
"""

import os
import re
import sys
from pathlib import Path

# Import the package from this checkout even if it is not installed.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import skpc  # noqa: E402

project = "skpc"
author = "the skpc developers"
copyright = "the skpc developers"
version = skpc.__version__
release = skpc.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
# examples/ holds the gallery *sources*; sphinx-gallery renders them into auto_examples/.
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "examples", "auto_examples/*.ipynb", "auto_examples/*.py"]
root_doc = "index"
default_role = "literal"  # `x` renders as code, as in the numpydoc docstrings

# ---------------------------------------------------------------- API pages
autosummary_generate = True
# The class pages list their members themselves (see _templates/autosummary/class.rst);
# numpydoc's own member tables would repeat them.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False


# A numpydoc type description is plain text, but reST reads a word that ends
# in "_" as a hyperlink reference: "ndarray of shape (n_features_in_,)"
# then fails with 'Unknown target name: "n_features_in"'. Such words are
# the fitted attributes of scikit-learn's vocabulary; show them as code.
_PARAM_LINE = re.compile(r"^(\s*[\w*][\w, *]* : )(.+)$")
_TRAILING_UNDERSCORE = re.compile(r"(?<![`\w])([A-Za-z]\w*_)(?=[,)\s]|$)")


def _literal_attribute_names_in_types(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        match = _PARAM_LINE.match(line)
        if match:
            head, kind = match.groups()
            lines[i] = head + _TRAILING_UNDERSCORE.sub(r"``\1``", kind)


def _skip_metadata_request_methods(app, what, name, obj, skip, options):
    # scikit-learn generates set_<method>_request methods for metadata
    # routing; they are not part of skpc's API and their docstrings point
    # into scikit-learn's own documentation.
    if re.fullmatch(r"set_\w+_request", name):
        return True
    return None


def setup(app):
    # Before numpydoc (priority 500) turns the sections into reST.
    app.connect("autodoc-process-docstring", _literal_attribute_names_in_types, priority=400)
    app.connect("autodoc-skip-member", _skip_metadata_request_methods)


# ------------------------------------------------------------------- gallery
def _plot_gallery():
    value = os.environ.get("SKPC_DOCS_PLOT_GALLERY", "1").strip().lower()
    return value not in ("0", "false", "no", "off")


sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "plot_gallery": _plot_gallery(),
    "backreferences_dir": "gen_modules/backreferences",
    "doc_module": ("skpc",),
    "reference_url": {"skpc": None},
    "download_all_examples": False,
    "remove_config_comments": True,
    "capture_repr": (),
    "image_scrapers": ("matplotlib",),
    # Alphabetical by file name, so the order does not change with run times.
    "within_subsection_order": "FileNameSortKey",
}

# ---------------------------------------------------------------------- HTML
try:
    import pydata_sphinx_theme  # noqa: F401

    html_theme = "pydata_sphinx_theme"
    html_theme_options = {
        "navigation_with_keys": False,
        "show_toc_level": 2,
    }
except ImportError:  # the docs still build with Sphinx's default theme
    html_theme = "alabaster"
    html_theme_options = {}

html_title = f"skpc {release}"
html_static_path = ["_static"]
html_show_sourcelink = False
