"""ICC with F-tests and confidence intervals against Shrout & Fleiss (1979); p-value formatting."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hicur_monai.evaluation.agreement import ICC_FORMS, icc, icc_table
from hicur_monai.utils.formatting import format_p

pytest.importorskip("scipy")

#: Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges
SHROUT_FLEISS = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
#: the paper's ICCs (two decimals) ...
PUBLISHED_ICC = {"ICC(1,1)": 0.17, "ICC(2,1)": 0.29, "ICC(3,1)": 0.71,
                 "ICC(1,k)": 0.44, "ICC(2,k)": 0.62, "ICC(3,k)": 0.91}
#: ... its mean squares (BMS 11.24, WMS 6.26, EMS 1.02) give the F-tests: BMS/WMS and BMS/EMS
PUBLISHED_F = {"one-way": (11.24 / 6.26, 5, 18), "two-way": (11.24 / 1.02, 5, 15)}
#: 95% intervals of R psych::ICC on the same table (its documented example, ``ICC(sf)``),
#: p of the F-tests 0.16477 (one-way) and 0.00013 (two-way)
PSYCH_CI = {"ICC(1,1)": (-0.133, 0.72), "ICC(2,1)": (0.019, 0.76), "ICC(3,1)": (0.342, 0.95),
            "ICC(1,k)": (-0.884, 0.91), "ICC(2,k)": (0.071, 0.93), "ICC(3,k)": (0.676, 0.99)}


def test_icc_table_matches_shrout_fleiss():
    t = icc_table(SHROUT_FLEISS)
    assert list(t.index) == list(ICC_FORMS)
    for form in ICC_FORMS:
        r = t.loc[form]
        assert r["icc"] == pytest.approx(PUBLISHED_ICC[form], abs=0.005)
        assert r["icc"] == pytest.approx(icc(SHROUT_FLEISS)[form])
        f, df1, df2 = PUBLISHED_F["one-way" if form.startswith("ICC(1") else "two-way"]
        assert r["F"] == pytest.approx(f, rel=5e-3) and (r["df1"], r["df2"]) == (df1, df2)
        lo, hi = PSYCH_CI[form]
        assert r["ci_low"] == pytest.approx(lo, abs=0.0015) and r["ci_high"] == pytest.approx(hi, abs=0.005)
        assert r["ci_low"] <= r["icc"] <= r["ci_high"]
    assert t.loc["ICC(1,1)", "p"] == pytest.approx(0.16477, abs=5e-5)
    assert t.loc["ICC(3,1)", "p"] == pytest.approx(0.00013, abs=5e-6)


def test_icc_table_edge_cases():
    perfect = icc_table([[1, 1], [2, 2], [3, 3]])
    assert perfect.loc["ICC(2,1)", "icc"] == pytest.approx(1.0) and np.isnan(perfect.loc["ICC(2,1)", "ci_low"])
    with pytest.raises(ValueError, match="complete matrix"):
        icc_table([[1, 2], [3, np.nan]])
    wide = pd.DataFrame(np.random.default_rng(0).normal(size=(30, 3)) + np.arange(30)[:, None] / 10)
    t = icc_table(wide, alpha=0.1)
    assert (t["ci_low"] <= t["icc"]).all() and (t["icc"] <= t["ci_high"]).all()


def test_agreement_table_carries_ci_and_p():
    from hicur_monai.evaluation.aggregate import agreement_table

    rows = [{"item_id": f"i{i}", "system": "s", "criterion": "accuracy", "rater": f"r{j}", "score": float(v)}
            for i, ratings in enumerate(SHROUT_FLEISS) for j, v in enumerate(ratings)]
    ag = agreement_table(None, pd.DataFrame(rows), pd.DataFrame()).set_index("measure")
    r = ag.loc["ICC(2,k)"]
    assert r["value"] == pytest.approx(0.6201, abs=1e-4) and r["ci_low"] == pytest.approx(0.071, abs=0.0015)
    assert r["p"] == pytest.approx(0.00013, abs=5e-6)


@pytest.mark.parametrize("p, text", [(0.0, "<0.001"), (1e-12, "<0.001"), (0.0004, "<0.001"), (0.001, "0.001"),
                                     (0.0423, "0.042"), (1.0, "1.000"), (float("nan"), "–"), (None, "–")])
def test_format_p(p, text):
    assert format_p(p) == text
