"""Run the front page's example when the docs are built.

``index.rst`` shows ``_frontpage/sleepstudy.py`` and, next to it, what that script printed and
the figure it left in ``fig``: this extension runs the script before Sphinx reads the sources
and writes both into ``_generated/`` in the source directory, so the front page shows the
current version's output, not a pasted copy.
"""
import contextlib
import io
import os
import runpy

import matplotlib.pyplot as plt

SCRIPT = os.path.join("_frontpage", "sleepstudy.py")
SUMMARY = os.path.join("_generated", "sleepstudy_summary.txt")
FIGURE = os.path.join("_generated", "sleepstudy_caterpillar.png")


def _write_if_changed(path, data):
    # An unchanged file keeps its mtime, so an incremental build does not re-read index.rst.
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            if fh.read() == data:
                return
    with open(path, "wb") as fh:
        fh.write(data)


def run_example(app):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        namespace = runpy.run_path(os.path.join(app.srcdir, SCRIPT), run_name="__main__")
    os.makedirs(os.path.join(app.srcdir, "_generated"), exist_ok=True)
    _write_if_changed(os.path.join(app.srcdir, SUMMARY), out.getvalue().encode("utf-8"))
    fig = namespace["fig"]
    png = io.BytesIO()
    # No timestamp or software metadata: the bytes change only when the figure does.
    fig.savefig(png, format="png", dpi=150, bbox_inches="tight", metadata={"Software": None})
    _write_if_changed(os.path.join(app.srcdir, FIGURE), png.getvalue())
    plt.close(fig)


def setup(app):
    app.connect("builder-inited", run_example)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
