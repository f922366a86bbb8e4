"""The documentation builds the documented way (warnings are errors) and has real content.

The build command is taken from the README, run on a copy of ``docs/`` (so nothing is written
into the source tree) with matplotlib's Agg backend. It runs every tutorial, the front page's
example and the Plots page; on the shared 2-core development machine the whole build takes
about 45 s.
"""
import glob
import html
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("sphinx_gallery")
pytest.importorskip("myst_parser")
pytest.importorskip("matplotlib")
pytest.importorskip("pydata_sphinx_theme")
pytest.importorskip("sphinx_design")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
TUTORIALS = sorted(os.path.splitext(os.path.basename(p))[0]
                   for p in glob.glob(os.path.join(DOCS, "tutorials", "plot_*.py")))


def documented_command():
    """The README's build command, as a list of arguments."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    found = re.findall(r"python -m sphinx [^\n`#]*", readme)
    assert found, "the README does not show the documentation build command"
    args = found[0].split()
    assert args[-2:] == ["docs", "docs/_build/html"], args
    assert "-W" in args and "--keep-going" in args, args
    return args


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build a copy of docs/ (and the README it includes) with the documented command."""
    tmp = tmp_path_factory.mktemp("docs_build")
    src = tmp / "docs"
    shutil.copytree(DOCS, src, ignore=shutil.ignore_patterns(
        "_build", "auto_tutorials", "sg_execution_times.rst", "generated", "_generated",
        "__pycache__", ".ipynb_checkpoints"))
    shutil.copy(os.path.join(ROOT, "README.md"), tmp / "README.md")
    out = tmp / "html"
    args = documented_command()
    cmd = [sys.executable] + args[1:-2] + [str(src), str(out)]
    env = dict(os.environ, MPLBACKEND="Agg")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    elapsed = time.perf_counter() - start
    print(f"documentation build: {elapsed:.1f} s")
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed with exit code {proc.returncode} after {elapsed:.0f} s\n"
        f"--- stderr ---\n{proc.stderr[-20000:]}\n--- stdout (end) ---\n{proc.stdout[-5000:]}")
    return out


def read(out, page):
    path = out / page
    assert path.is_file(), f"{page} was not built"
    return path.read_text(encoding="utf-8")


def text_of(page_html):
    """The visible text of a page (code blocks are split into highlighting spans)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page_html))


def png_size(path):
    """(width, height) of a PNG, from its IHDR chunk."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_index_links_every_page(built):
    index = read(built, "index.html")
    for page in ["getting_started.html", "user_guide.html", "install.html", "quickstart.html",
                 "coming_from.html", "lmm.html", "glmm.html", "ordinal.html", "gee.html",
                 "inference.html", "plots.html", "auto_tutorials/index.html", "api.html"]:
        assert f'href="{page}' in index, page
        read(built, page)
    for name in TUTORIALS:  # the front page's mini-gallery
        assert f'href="auto_tutorials/{name}.html' in index, name


def test_theme(built):
    index = read(built, "index.html")
    assert "_static/styles/pydata-sphinx-theme.css" in index
    assert "alabaster" not in index
    # the navbar's sections, in order
    nav = re.search(r'<ul class="bd-navbar-elements navbar-nav">(.*?)</ul>', index, re.S)
    assert nav, "no navbar"
    assert re.findall(r">\s*([^<>]+?)\s*</a>", nav.group(1)) == [
        "Getting started", "User guide", "Tutorials", "API reference"]
    # nothing fetched from the network but MathJax (sphinx.ext.mathjax's CDN default)
    external = set(re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', index))
    assert all("mathjax" in url for url in external), external


def test_front_page_runs_its_example(built):
    """The front page shows the sleepstudy summary printed during this build, and its figure."""
    from mlmext import datasets
    from mlmext.formula import api as mf

    index = read(built, "index.html")
    text = text_of(index)
    assert 'res = mf.lmer("Reaction ~ Days + (Days | Subject)", df).fit()' in text
    res = mf.lmer("Reaction ~ Days + (Days | Subject)", datasets.load("sleepstudy")).fit()
    summary = str(res.summary())
    assert "Mixed Model Results: Reaction ~ Days + (Days | Subject)" in summary
    for line in summary.splitlines():
        assert line.strip() in text, line
    assert "10.467" in text and "251.405" in text  # lme4: 251.405, 10.467
    # the figure sits in the same grid row as the summary (side by side on wide screens)
    row = index[index.index('class="sd-row'):]
    img = re.search(r'<img[^>]+src="(_images/sleepstudy_caterpillar[^"]*\.png)"', row)
    assert img, "no caterpillar plot next to the summary"
    assert row.index("Mixed Model Results") < img.start() < row.index("<h2")
    width, height = png_size(built / img.group(1))
    assert width > 600 and height > 400, (width, height)


def test_plots_page_has_an_image_per_function(built):
    import mlmext.plots

    page = read(built, "plots.html")
    assert 'href="plots.html' in read(built, "user_guide.html")
    # the plot directive writes each call as a code block followed by the figure it drew
    blocks = page.split('<div class="highlight-python')[1:]
    shown = {}
    for block in blocks:
        code = text_of(block[block.index("<pre>"):block.index("</pre>")]).strip()
        img = re.search(r'<img[^>]+class="plot-directive"[^>]+src="(_images/[^"]+\.png)"',
                        block)
        call = re.search(r"^plots\.(\w+)\(", code, re.M)
        if call and img:
            shown[call.group(1)] = img.group(1)
    missing = [name for name in mlmext.plots.__all__ if name not in shown]
    assert not missing, f"no figure on the Plots page for {missing}"
    assert len(set(shown.values())) == len(shown), shown  # a separate figure for each
    for name, img in shown.items():
        width, height = png_size(built / img)
        assert width > 200 and height > 150, (name, width, height)


def test_search(built):
    page = read(built, "search.html")
    assert "searchindex.js" in page
    js = read(built, "searchindex.js")
    index = json.loads(js[js.index("(") + 1:js.rindex(")")])
    docs = lambda ids: {index["docnames"][i] for i in ([ids] if isinstance(ids, int) else ids)}
    found = docs(index["terms"]["lmer"]) | docs(index["titleterms"]["lmer"])
    assert {"lmm", "index", "quickstart", "api"} <= found, found
    assert "mlmext.formula.api" in index["objects"]


def test_gallery_cards(built):
    """The tutorials gallery is a grid of cards, each with the figure its script picks."""
    gallery = read(built, "auto_tutorials/index.html")
    assert "Worked examples" in text_of(gallery)
    cards = re.findall(r'<div class="sphx-glr-thumbcontainer"[^>]*><img[^>]+src="\.\./([^"]+)"'
                       r'\s*/>\s*<p><a class="reference internal" href="([^"]+)\.html"', gallery)
    assert [name for _, name in cards] == TUTORIALS
    for thumb, name in cards:
        assert (built / thumb).is_file(), thumb
        with open(os.path.join(DOCS, "tutorials", f"{name}.py"), encoding="utf-8") as fh:
            pick = re.search(r"^# sphinx_gallery_thumbnail_number = (\d+)$", fh.read(), re.M)
        assert pick, f"{name} does not choose its thumbnail"
        figure = f"sphx_glr_{name}_{int(pick.group(1)):03d}.png"
        assert f"../_images/{figure}" in read(built, f"auto_tutorials/{name}.html"), figure


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_rendered_with_figures(built, name):
    page = read(built, f"auto_tutorials/{name}.html")
    images = re.findall(r'<img[^>]+src="\.\./_images/(sphx_glr_' + re.escape(name) + r'_\d{3}\.png)"',
                        page)
    assert images, f"{name}: no figure on the rendered page"
    for img in images:
        assert (built / "_images" / img).is_file(), img
    assert f'href="{name}.html"' in read(built, "auto_tutorials/index.html")
