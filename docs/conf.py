"""Sphinx configuration for aioproc's documentation (MyST Markdown, furo, autodoc)."""

from __future__ import annotations

import sys
from pathlib import Path

# Document this checkout's aioproc, whatever else is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aioproc

project = "aioproc"
author = "the aioproc authors"
copyright = "2026, the aioproc authors"
release = getattr(aioproc, "__version__", "0.1.0")

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
exclude_patterns = ["_build"]

html_theme = "furo"
html_title = "aioproc"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True  # PIPE, not -1
autodoc_default_options = {"members": True, "show-inheritance": True}
