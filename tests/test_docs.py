"""The documentation builds the documented way (warnings are errors) and has real content.

The build command is taken from the README, run on a copy of ``docs/`` (so nothing is written
into the source tree) with matplotlib's Agg backend. It runs every tutorial; on the shared
2-core development machine the whole build takes about 40 s.
"""
import glob
import html
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("sphinx_gallery")
pytest.importorskip("myst_parser")
pytest.importorskip("matplotlib")

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
        "_build", "auto_tutorials", "sg_execution_times.rst", "generated", "__pycache__",
        ".ipynb_checkpoints"))
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


def test_index_links_every_page(built):
    index = read(built, "index.html")
    for page in ["install.html", "quickstart.html", "coming_from.html", "lmm.html", "glmm.html",
                 "ordinal.html", "gee.html", "inference.html", "auto_tutorials/index.html",
                 "api.html"]:
        assert f'href="{page}' in index, page
        read(built, page)


def test_api_reference(built):
    api = read(built, "api.html")
    ids = set(re.findall(r'<dt class="sig sig-object py" id="([^"]+)"', api))
    expected = [
        "mlmext.formula.api.lmer", "mlmext.formula.api.glmer", "mlmext.formula.api.glmer_nb",
        "mlmext.formula.api.clmm", "mlmext.gee.gee_select", "mlmext.gee.qic", "mlmext.gee.GEESelection",
        "mlmext.lmm.LinearMixedModel", "mlmext.lmm.LinearMixedModel.fit",
        "mlmext.glmm.GeneralizedLinearMixedModel", "mlmext.ordinal.OrdinalMixedModel",
        "mlmext.results.MixedResults", "mlmext.results.MixedResults.varcorr",
        "mlmext.results.MixedResults.ranef", "mlmext.results.LMMResults",
        "mlmext.glmm.GLMMResults", "mlmext.ordinal.OrdinalMixedResults",
        # inherited from InferenceMixin
        "mlmext.results.MixedResults.conf_int", "mlmext.results.MixedResults.df_satterthwaite",
        "mlmext.results.MixedResults.r2", "mlmext.results.MixedResults.simulate",
        "mlmext.inference.anova", "mlmext.datasets.load", "mlmext.datasets.names",
        "mlmext.datasets.SOURCES",
    ]
    missing = [name for name in expected if name not in ids]
    assert not missing, missing
    assert any(i.startswith("mlmext.plots.") for i in ids), "mlmext.plots has no documented function"
    # statsmodels' own members are left to statsmodels' documentation
    for name in ["bse", "pvalues", "wald_test", "initialize", "save"]:
        assert f"mlmext.results.MixedResults.{name}" not in ids, name
    assert "Generalized linear mixed model from an lme4-style formula" in text_of(api)


def test_coming_from_page(built):
    text = text_of(read(built, "coming_from.html"))
    for s in ['mf.lmer("y ~ x + (x | g)", data=df).fit()', "res.fe_params", "res.cov_params()",
              "res.varcorr()", "res.ranef(condvar=True)", "REMLcrit(fit)", "res.reml_criterion",
              "res.predict(df, re=False)", "mlmext.anova(m1, m2)", "fit(nagq=25)",
              "mlmext.gee.qic", "re_formula", "vc_formula", "random_effects"]:
        assert s in text, s


def test_quick_start_includes_the_readme(built):
    text = text_of(read(built, "quickstart.html"))
    assert 'mf.lmer("Reaction ~ Days + (Days | Subject)", data=df).fit()' in text
    assert "gee_select" in text


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_rendered_with_figures(built, name):
    page = read(built, f"auto_tutorials/{name}.html")
    images = re.findall(r'<img[^>]+src="\.\./_images/(sphx_glr_' + re.escape(name) + r'_\d{3}\.png)"',
                        page)
    assert images, f"{name}: no figure on the rendered page"
    for img in images:
        assert (built / "_images" / img).is_file(), img
    assert f'href="{name}.html"' in read(built, "auto_tutorials/index.html")
