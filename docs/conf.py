"""Sphinx configuration for the mlmext documentation.

Build (warnings are errors, as in CI)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Everything needed at build time is installed by ``pip install ".[docs]"``; the build needs no
network (no intersphinx; the theme's fonts and icons are bundled), and the tutorials, the front
page's example and the Plots page run with matplotlib's Agg backend.
"""
import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")
import matplotlib  # noqa: E402

matplotlib.use("Agg")

# Document the checkout this directory belongs to, even if another mlmext is installed
# (a copy of docs/ elsewhere, as the test suite makes, uses the installed package).
_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
if os.path.isfile(os.path.join(_ROOT, "mlmext", "__init__.py")):
    sys.path.insert(0, _ROOT)

import mlmext  # noqa: E402

# Local extensions (docs/_ext): the front page's example, run at build time.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ext"))

# -- Project -------------------------------------------------------------------------------
project = "mlmext"
author = "mlmext developers"
copyright = "mlmext developers, BSD-3-Clause"
version = mlmext.__version__
release = mlmext.__version__

# -- General -------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "sphinx_design",                  # the front page's grid and cards
    "matplotlib.sphinxext.plot_directive",  # the Plots page runs each plot call
    "frontpage",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "tutorials", "_frontpage", "_generated", "Thumbs.db", ".DS_Store",
                    "**.ipynb_checkpoints",
                    "auto_tutorials/*.ipynb", "auto_tutorials/*.py", "auto_tutorials/*.zip"]
templates_path = []

# -- MyST (the user-guide pages are Markdown) ---------------------------------------------
myst_heading_anchors = 3          # "[Validation](#validation)" links to headings in a page

# -- autodoc / autosummary / napoleon ------------------------------------------------------
autosummary_generate = False      # the API page documents every object itself (one place each)
autodoc_member_order = "bysource"
autodoc_typehints = "none"        # signatures only; types are in the numpydoc sections
autodoc_default_options = {
    "show-inheritance": True,
}
# Methods and properties that mlmext does not document itself must not pull in the
# docstrings of statsmodels' base classes (their reST is written for statsmodels' own
# numpydoc build and does not render cleanly here).
autodoc_inherit_docstrings = False
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True
napoleon_preprocess_types = False

# -- HTML ----------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"mlmext {release}"
html_show_sourcelink = False
html_static_path = ["_static"]
html_css_files = ["mlmext.css"]    # the front page's layout
html_theme_options = {
    "logo": {"text": "mlmext"},
    # The navbar lists the root toctree's pages: Getting started, User guide, Tutorials, API.
    "navbar_align": "left",
    "header_links_before_dropdown": 6,
    "navbar_end": ["theme-switcher"],      # no icon links: no GitHub or other external URLs
    "navbar_persistent": ["search-button-field"],
    "secondary_sidebar_items": {"**": ["page-toc"], "index": []},
    "show_toc_level": 2,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
}
# The front page and the API reference (one page) have no section pages to navigate.
html_sidebars = {"index": [], "api": []}

# -- Plots page (matplotlib's plot directive) --------------------------------------------
plot_include_source = True        # every figure is shown with the call that drew it
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 100)]

# -- Tutorials gallery (sphinx-gallery) ----------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "tutorials",
    "gallery_dirs": "auto_tutorials",
    "filename_pattern": r".*",                   # execute every script, not only plot_*
    "abort_on_example_error": True,              # a failing tutorial fails the build
    "capture_repr": ("_repr_html_", "__repr__"),  # results render as their HTML summaries
    "within_subsection_order": "FileNameSortKey",  # plot_01_..., plot_02_..., ...
    "image_scrapers": ("matplotlib",),
    "download_all_examples": True,
    "remove_config_comments": True,
    "show_memory": False,
    "plot_gallery": "True",
    # The front page's minigallery of tutorials warns without a backreferences directory.
    "backreferences_dir": "generated/gallery_backreferences",
}
