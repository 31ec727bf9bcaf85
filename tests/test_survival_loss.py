"""The Efron Cox partial likelihood against lifelines (rossi anchor: -658.748)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

lifelines = pytest.importorskip("lifelines")
from lifelines.datasets import load_rossi  # noqa: E402

from hicur_monai.survival.losses import EfronPartialLikelihood, cox_efron_loss, cox_partial_log_likelihood  # noqa: E402

ROSSI_BETA = {"fin": -0.3794, "age": -0.0574, "race": 0.3139, "wexp": -0.1498, "mar": -0.4337, "paro": -0.0849,
              "prio": 0.0915}


@pytest.fixture(scope="module")
def rossi():
    df = load_rossi()
    cph = lifelines.CoxPHFitter().fit(df, "week", "arrest")
    x = torch.tensor(df[list(cph.params_.index)].to_numpy(float), dtype=torch.float64)
    lp = x @ torch.tensor(cph.params_.to_numpy(), dtype=torch.float64)
    return df, cph, lp


def _sort_and_cumsum(lp: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> float:
    """The original DeepSurv / pycox loss: ignores ties (the wrong one); stable descending sort."""
    order = torch.as_tensor(np.argsort(-time.numpy(), kind="stable"))
    lp, event = lp[order], event[order]
    return float(((lp - torch.logcumsumexp(lp, 0)) * event).sum())


def test_lifelines_anchor(rossi):
    _, cph, _ = rossi
    for k, v in ROSSI_BETA.items():
        assert cph.params_[k] == pytest.approx(v, abs=1e-4)
    assert cph.log_likelihood_ == pytest.approx(-658.748, abs=1e-3)


def test_efron_equals_lifelines_on_rossi(rossi):
    df, cph, lp = rossi
    t, e = torch.tensor(df["week"].to_numpy(float)), torch.tensor(df["arrest"].to_numpy())
    ours = EfronPartialLikelihood(t, e)(lp)
    assert float(ours) == pytest.approx(cph.log_likelihood_, abs=1e-6)
    assert float(cox_partial_log_likelihood(lp, t, e)) == pytest.approx(-658.748, abs=2e-3)  # torchsurv (float32)
    wrong = _sort_and_cumsum(lp, t, e.double())
    assert wrong == pytest.approx(-655.97, abs=0.05)  # ties ignored: a different, wrong value
    assert abs(wrong - float(ours)) > 2.0


def test_gradients_match_torchsurv_and_loss_scaling():
    g = torch.Generator().manual_seed(0)
    n = 200
    t = torch.randint(1, 30, (n,), generator=g).double()  # month-like times: heavy ties
    e = torch.rand(n, generator=g) < 0.5
    lp = torch.randn(n, generator=g, dtype=torch.float64, requires_grad=True)
    lik = EfronPartialLikelihood(t, e)
    ga = torch.autograd.grad(lik(lp), lp)[0]
    gb = torch.autograd.grad(cox_partial_log_likelihood(lp, t, e), lp)[0]
    assert torch.allclose(ga, gb.double(), atol=1e-4)
    assert float(lik.loss(lp)) == pytest.approx(-float(lik(lp)) / int(e.sum()))
    assert float(cox_efron_loss(lp, t, e)) == pytest.approx(float(lik.loss(lp)), rel=1e-5)


def test_no_ties_is_the_exact_cox_likelihood():
    df = load_rossi()
    rng = np.random.default_rng(0)
    df["week"] = df["week"] + rng.uniform(0, 0.5, len(df))  # break every tie
    cph = lifelines.CoxPHFitter().fit(df, "week", "arrest")
    lp = torch.tensor(df[list(cph.params_.index)].to_numpy(float)) @ torch.tensor(cph.params_.to_numpy())
    t, e = torch.tensor(df["week"].to_numpy()), torch.tensor(df["arrest"].to_numpy())
    assert float(EfronPartialLikelihood(t, e)(lp)) == pytest.approx(cph.log_likelihood_, abs=1e-6)
    assert _sort_and_cumsum(lp, t, e.double()) == pytest.approx(cph.log_likelihood_, abs=1e-6)


def test_strata_and_no_events():
    g = torch.Generator().manual_seed(1)
    t = torch.randint(1, 10, (60,), generator=g).double()
    e = torch.rand(60, generator=g) < 0.5
    lp = torch.randn(60, generator=g, dtype=torch.float64)
    s = torch.arange(60) % 2
    both = float(cox_partial_log_likelihood(lp, t, e, strata=s))
    parts = sum(float(EfronPartialLikelihood(t[s == k], e[s == k])(lp[s == k])) for k in (0, 1))
    assert both == pytest.approx(parts, abs=1e-3)
    none = EfronPartialLikelihood(t, torch.zeros(60, dtype=torch.bool))
    assert float(none(lp)) == 0.0
