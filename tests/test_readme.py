"""The README's quick start runs as written."""
import os
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_quick_start_runs(capsys):
    text = open(os.path.join(ROOT, "README.md")).read()
    code = text.split("## Quick start", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    ns = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, "README.md", "exec"), ns)
    assert ns["sel"].best == "independence"                   # geepack's choice on dietox
    assert abs(ns["res"].llf - (-871.814135979976)) < 1e-6    # lme4's REML log-likelihood
    assert abs(ns["g"].fe_params.iloc[0] - (-1.3992237278292)) < 0.002 * 0.2335   # lme4 nAGQ=25
    assert abs(1 / ns["nb"].alpha - 2.05221924308852) < 0.01                       # glmer.nb theta
    assert abs(ns["o"].llf - (-81.5324607116916)) < 1e-3                           # clmm nAGQ=10
    out = capsys.readouterr().out
    assert "Random effects" in out and "independence" in out
