"""The LMM build's shared ``[exog y]``: the response check's QR factors a copy of the model's
own ``_XY``, which stays the exact ``[exog, endog - offset]``; a check from the stored design
gives the same answer as one from a fresh stack."""
import numpy as np
import pytest

from mlmext import datasets
from mlmext.formula import api as mf


@pytest.fixture(scope="module")
def sleep():
    return datasets.load("sleepstudy")


@pytest.mark.parametrize("weights", [None, "w"])
def test_xy_is_exact_and_unchanged_by_the_check(sleep, weights):
    d = sleep.assign(w=np.linspace(0.5, 2.0, len(sleep)), off=np.arange(len(sleep)) % 7 * 0.25)
    m = mf.lmer("Reaction ~ Days + (Days | Subject)", d, weights=weights, offset="off")
    XY = np.column_stack([m.exog, np.asarray(m.endog, dtype=float) - m.offset])
    np.testing.assert_array_equal(m._XY, XY)
    before = m._XY.copy()
    y = XY[:, -1]
    m._check_response(y, m._XY)                     # with the stacked design
    m._check_response(y)                            # and stacking its own
    np.testing.assert_array_equal(m._XY, before)


def test_exact_fit_still_refused_with_the_shared_stack(sleep):
    d = sleep.assign(yy=2.0 + 3.0 * sleep["Days"])
    with pytest.raises(ValueError, match="fit the response .* exactly"):
        mf.lmer("yy ~ Days + (1 | Subject)", d)
