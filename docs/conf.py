"""Sphinx configuration of zpool's documentation site: ``tox -e docs`` (warnings are errors).

The pages are the Markdown files of this directory (MyST); the API reference
(``api.md``) is generated from the numpydoc docstrings; the examples page
shows the scripts of ``examples/`` with the pictures they make.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import zpool  # noqa: E402

project = "zpool"
author = "the zpool developers"
copyright = "2026, the zpool developers"  # noqa: A001
release = version = zpool.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "numpydoc",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc sections say the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "furo"
html_title = f"zpool {release}"
html_static_path: list[str] = []
