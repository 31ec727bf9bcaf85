"""Time-to-event models with one lifelines-like interface: Cox PH and DeepSurv.

Both fitters take a DataFrame with covariate columns plus a duration and an event column
(``fit(df, duration_col, event_col)``), and predict a risk score (higher = earlier event)
and survival curves ``S(t | x)`` at chosen times, so every metric and report treats them
alike.

* :class:`CoxModel` wraps lifelines' :class:`~lifelines.CoxPHFitter` (Efron ties, optional
  ridge/elastic-net penalty, stratification) on standardised covariates, checks that the fit
  converged (retrying with smaller Newton-Raphson steps, else :class:`FitError` naming the
  cause) and adds the hazard-ratio table (on the user's scale) and the baseline survival.
* :class:`DeepSurv` trains :class:`~hicur_monai.networks.prognosis.DeepSurvNet` with the
  Efron negative partial log-likelihood (:mod:`hicur_monai.survival.losses`), full batch,
  Adam, inputs standardised on the training data, L2 on the output layer, early stopping on
  an internal validation split, an ensemble over several seeds, and a Breslow baseline
  hazard so it predicts survival curves; a non-finite loss raises :class:`FitError`.
"""

from __future__ import annotations

import copy
import logging
import os
import time as _time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hicur_monai.data.clinical import check_collinearity
from hicur_monai.networks.prognosis import DeepSurvNet
from hicur_monai.survival.losses import EfronPartialLikelihood, cox_efron_loss
from hicur_monai.utils.io import atomic_save_torch

__all__ = ["FitError", "CoxModel", "DeepSurv", "breslow_baseline", "save_model", "load_model", "MODEL_FACTORIES"]

logger = logging.getLogger(__name__)


def _check_frame(df: pd.DataFrame, covariates: Sequence[str], where: str) -> None:
    missing = [c for c in covariates if c not in df.columns]
    if missing:
        raise KeyError(f"{where}: covariate columns missing: {missing}")
    bad = df[list(covariates)].isna().any()
    if bad.any():
        rows = df.index[df[list(covariates)].isna().any(axis=1)][:10].tolist()
        raise ValueError(f"{where}: missing values in covariates {bad[bad].index.tolist()} (rows {rows}...); "
                         "drop or impute them first (the workflow drops incomplete rows and reports how many)")
    values = df[list(covariates)].apply(pd.to_numeric, errors="coerce").astype(float)
    inf = np.isinf(values).any()
    if inf.any():
        raise ValueError(f"{where}: infinite values in covariates {inf[inf].index.tolist()}")


def _check_outcome(time: np.ndarray, event: np.ndarray, where: str) -> None:
    if not np.all(np.isfinite(time)) or np.any(time < 0):
        raise ValueError(f"{where}: durations must be finite and >= 0")
    if not np.isin(event, (0, 1)).all():
        raise ValueError(f"{where}: events must be 0/1")
    if event.sum() == 0:
        raise ValueError(f"{where}: no events; a survival model cannot be fitted")


def breslow_baseline(risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Breslow estimate of the baseline cumulative hazard for relative risks ``exp(risk)``.

    Returns ``(event_times, cumulative_hazard)`` (step function, right-continuous).
    """
    order = np.argsort(time, kind="stable")
    t, e, r = time[order], event[order].astype(float), np.exp(risk[order] - risk.max())
    uniq = np.unique(t[e > 0])
    at_risk = np.array([r[t >= u].sum() for u in uniq])
    deaths = np.array([e[t == u].sum() for u in uniq])
    return uniq, np.cumsum(deaths / at_risk) * np.exp(-risk.max())


def _step(x_grid: np.ndarray, y: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Value of a right-continuous step function (0 before the first step) at ``at``."""
    idx = np.searchsorted(x_grid, at, side="right") - 1
    return np.where(idx >= 0, y[np.clip(idx, 0, None)], 0.0)


def _ensemble_risk(nets: Sequence[torch.nn.Module], x: torch.Tensor) -> np.ndarray:
    """Mean log relative hazard of ``x`` over the networks of an ensemble."""
    with torch.no_grad():
        return torch.stack([net(x) for net in nets]).mean(0).double().cpu().numpy()


class FitError(RuntimeError):
    """A survival fit that did not converge; the message names the cause (covariates, check).

    ``attempts`` lists what each try found (Cox: one entry per Newton-Raphson step size).
    """

    def __init__(self, message: str, attempts: Sequence[Mapping[str, Any]] = ()):
        super().__init__(message)
        self.attempts = [dict(a) for a in attempts]


#: lifelines warnings that mean the Newton-Raphson result is not a maximum
_NOT_CONVERGED = ("failed to converge", "suspiciously close to 0", "norm(delta) is still high")


class CoxModel:
    """Cox proportional-hazards model through lifelines (Efron ties), fitted on standardised covariates.

    Covariates are centred and scaled (training mean and standard deviation) before
    lifelines sees them, so Newton-Raphson works on unit-scale columns whatever the units
    of the table (days, mg/dl, calendar years); coefficients, hazard ratios and their CIs are
    reported on the user's scale (``coef = coef_std / sd``; z and p are unchanged).
    lifelines scales by the SD itself, so ``penalizer`` means the same as in lifelines.

    A fit counts as converged only when lifelines raised no ``ConvergenceError``, emitted no
    non-convergence warning (failed to converge, log-likelihood near 0 with a large step,
    norm(delta) still high), every coefficient is finite and at most ``max_abs_coef`` per
    standard deviation (and between the levels of a 0/1 covariate) and every standard error at
    most ``max_se`` per standard deviation (a category without events has an infinite estimate
    that Newton-Raphson stops at, e.g. -21 with SE 23,000). Otherwise it is retried with smaller Newton-Raphson steps
    (``step_sizes``, lifelines' ``fit_options["step_size"]``); when every attempt fails,
    :class:`FitError` names the covariates with non-finite or huge coefficients, the
    columns lifelines suspects of complete separation and the check that failed.
    ``convergence_`` records the attempts of a successful fit.

    Args:
        penalizer: penalty strength (lifelines' ``penalizer``; 0 = unpenalised).
        l1_ratio: elastic-net mix (0 = ridge).
        strata: columns to stratify on (a baseline hazard per stratum).
        alpha: 1 - confidence level of the hazard-ratio intervals.
        step_sizes: initial Newton-Raphson step of each attempt (step halving).
        max_steps: Newton-Raphson iterations per attempt.
        max_abs_coef: largest plausible |log hazard ratio| per standard deviation of a covariate
            (and between the two levels of a 0/1 covariate).
        max_se: largest plausible standard error of a coefficient per standard deviation.
    """

    name = "cox"

    def __init__(self, penalizer: float = 0.01, l1_ratio: float = 0.0, strata: Sequence[str] | None = None,
                 alpha: float = 0.05, step_sizes: Sequence[float] = (0.95, 0.5, 0.25, 0.125),
                 max_steps: int = 500, max_abs_coef: float = 7.0, max_se: float = 10.0):
        self.penalizer = float(penalizer)
        self.l1_ratio = float(l1_ratio)
        self.strata = list(strata) if strata else None
        self.alpha = float(alpha)
        self.step_sizes = tuple(float(s) for s in step_sizes)
        self.max_steps = int(max_steps)
        self.max_abs_coef = float(max_abs_coef)
        self.max_se = float(max_se)
        if not self.step_sizes or min(self.step_sizes) <= 0:
            raise ValueError(f"step_sizes must be positive, got {step_sizes}")
        self.covariates: list[str] = []
        self.mean_: pd.Series | None = None
        self.scale_: pd.Series | None = None
        self.binary_: list[str] = []
        self.fitter_: Any = None  # a lifelines CoxPHFitter once fitted
        self.convergence_: dict[str, Any] = {}
        self.fit_seconds_ = float("nan")

    def params(self) -> dict[str, Any]:
        return {"penalizer": self.penalizer, "l1_ratio": self.l1_ratio, "strata": self.strata, "ties": "efron",
                "standardised": True, "step_sizes": list(self.step_sizes), "max_abs_coef": self.max_abs_coef,
                "max_se": self.max_se}

    def standardise(self, df: pd.DataFrame) -> pd.DataFrame:
        """``df`` with the covariates centred and scaled as in training (other columns unchanged)."""
        if self.mean_ is None:
            raise RuntimeError("CoxModel is not fitted; call fit() first")
        out = df.copy()
        out[self.covariates] = (df[self.covariates].astype(float) - self.mean_) / self.scale_
        return out

    def fit(self, df: pd.DataFrame, duration_col: str = "time", event_col: str = "event") -> CoxModel:
        self.covariates = [c for c in df.columns if c not in (duration_col, event_col, *(self.strata or []))]
        check_collinearity(self.covariates)
        _check_frame(df, self.covariates, "CoxModel.fit")
        _check_outcome(df[duration_col].to_numpy(float), df[event_col].to_numpy(), "CoxModel.fit")
        x = df[self.covariates].astype(float)
        sd = x.std()
        constant = sd.index[~(sd > 0)].tolist()
        if constant:
            raise ValueError(f"CoxModel.fit: covariates {constant} are constant in the training data "
                             "(no information; a Cox model cannot estimate their effect); drop them")
        self.mean_, self.scale_ = x.mean(), sd
        self.binary_ = [c for c in self.covariates if set(np.unique(x[c].to_numpy())) <= {0.0, 1.0}]
        frame = self.standardise(df[[*self.covariates, *(self.strata or []), duration_col, event_col]])
        t0 = _time.perf_counter()
        attempts: list[dict[str, Any]] = []
        for step in self.step_sizes:
            fitter, problems = self._attempt(frame, duration_col, event_col, step)
            attempts.append({"step_size": step, "problems": problems})
            if not problems:
                self.fitter_ = fitter
                break
        else:
            self.fitter_ = None
            raise FitError(self._failure_message(attempts, self._separation_suspects(frame, event_col)), attempts)
        self.fit_seconds_ = _time.perf_counter() - t0
        self.convergence_ = {"converged": True, "attempts": len(attempts), "step_size": attempts[-1]["step_size"],
                             "log_likelihood": float(self.fitter_.log_likelihood_),
                             "earlier_attempts": [a["problems"] for a in attempts[:-1]]}
        if len(attempts) > 1:
            logger.info("Cox fit converged on attempt %d (step size %g) after: %s", len(attempts),
                        attempts[-1]["step_size"], attempts[:-1])
        return self

    def _attempt(self, frame: pd.DataFrame, duration_col: str, event_col: str,
                 step: float) -> tuple[Any, list[str]]:
        """One lifelines fit; returns ``(fitter, problems)`` (no problems = converged)."""
        from lifelines import CoxPHFitter
        from lifelines.exceptions import ConvergenceError, ConvergenceWarning

        fitter = CoxPHFitter(penalizer=self.penalizer, l1_ratio=self.l1_ratio, strata=self.strata, alpha=self.alpha)
        problems: list[str] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            warnings.simplefilter("ignore", RuntimeWarning)  # overflow on the way to a failure we report
            try:
                fitter.fit(frame, duration_col=duration_col, event_col=event_col,
                           fit_options={"step_size": step, "max_steps": self.max_steps})
            except (ConvergenceError, np.linalg.LinAlgError) as err:
                problems.append(f"lifelines stopped: {str(err).splitlines()[0].split(' Please see')[0]}")
        messages = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
        problems += [f"lifelines: {m.split('. ')[0].strip()}" for m in messages if any(k in m for k in _NOT_CONVERGED)]
        for m in messages:  # advisory warnings of a fit that passes every check: kept in the log
            if not problems and not any(k in m for k in _NOT_CONVERGED):
                logger.warning("lifelines (step size %g): %s", step, m.strip().splitlines()[0])
        if not problems:
            problems += self._implausible(fitter)
        return fitter, problems

    def _implausible(self, fitter: Any) -> list[str]:
        """Coefficients that mean the likelihood has no finite maximum (or is flat) in some direction."""
        coef = fitter.params_.reindex(self.covariates)  # per SD: lifelines saw standardised columns
        se = fitter.standard_errors_.reindex(self.covariates)
        raw = coef / self.scale_
        problems = []
        bad = coef.index[~np.isfinite(coef) | ~np.isfinite(se)].tolist()
        if bad:
            problems.append(f"non-finite coefficients or standard errors for {bad}")
        lim = self.max_abs_coef
        huge = [c for c in self.covariates
                if np.isfinite(coef[c]) and (abs(coef[c]) > lim or (c in self.binary_ and abs(raw[c]) > lim))]
        if huge:
            problems.append(f"coefficients above the plausibility limit |log HR| <= {self.max_abs_coef:g} per SD "
                            "(or between the two levels of a 0/1 covariate): "
                            + ", ".join(f"{c} ({raw[c]:+.3g}, {coef[c]:+.3g} per SD)" for c in huge))
        flat = [c for c in self.covariates if np.isfinite(se[c]) and se[c] > self.max_se]
        if flat:
            problems.append(f"standard errors above {self.max_se:g} per SD (a flat likelihood: an infinite estimate, "
                            "e.g. a category without events, or collinear covariates): "
                            + ", ".join(f"{c} (coef {raw[c]:+.3g}, SE {se[c]:.3g} per SD)" for c in flat))
        return problems

    def _separation_suspects(self, frame: pd.DataFrame, event_col: str) -> list[str]:
        """Covariates (nearly) constant among the patients with an event or among those without."""
        ev = frame[event_col].to_numpy().astype(bool)
        x = frame[self.covariates]
        low = (x[ev].var() < 1e-4) | (x[~ev].var() < 1e-4)
        return low.index[low.to_numpy()].tolist()

    def _failure_message(self, attempts: Sequence[Mapping[str, Any]], suspects: Sequence[str]) -> str:
        steps = ", ".join(f"{a['step_size']:g}" for a in attempts)
        last = attempts[-1]
        msg = (f"CoxModel.fit: the Cox model did not converge in {len(attempts)} attempts "
               f"(Newton-Raphson step sizes {steps}, {self.max_steps} steps each, covariates standardised): "
               + "; ".join(last["problems"]))
        if suspects:
            msg += (". Possible complete separation (constant among the patients with an event or among those "
                    f"without): {list(suspects)}")
        return msg + (". Remove or merge the named covariates, or raise the penalizer "
                      f"(now {self.penalizer:g}).")

    def _need_fit(self) -> Any:
        if self.fitter_ is None:
            raise RuntimeError("CoxModel is not fitted; call fit() first")
        return self.fitter_

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Models saved before standardisation was added were fitted on the raw columns: identity scaling."""
        self.__dict__.update(state)
        if "mean_" not in state and state.get("fitter_") is not None:
            self.mean_ = pd.Series(0.0, index=self.covariates)
            self.scale_ = pd.Series(1.0, index=self.covariates)
            self.binary_, self.convergence_ = [], {"converged": None, "note": "saved by an older version"}

    def _lifelines_input(self, df: pd.DataFrame, where: str) -> pd.DataFrame:
        self._need_fit()
        _check_frame(df, self.covariates, where)
        return self.standardise(df[[*self.covariates, *(self.strata or [])]])

    def predict_risk(self, df: pd.DataFrame) -> np.ndarray:
        """Log partial hazard relative to the training means (higher = earlier event)."""
        x = self._lifelines_input(df, "CoxModel.predict_risk")
        return np.asarray(self.fitter_.predict_log_partial_hazard(x), dtype=np.float64).reshape(-1)

    def predict_survival(self, df: pd.DataFrame, times: Sequence[float]) -> np.ndarray:
        """``S(t | x)``, shape ``(n, len(times))``."""
        x = self._lifelines_input(df, "CoxModel.predict_survival")
        return np.asarray(self.fitter_.predict_survival_function(x, times=list(times)), dtype=np.float64).T

    def baseline_survival(self, times: Sequence[float]) -> np.ndarray:
        """Baseline survival at ``times`` (covariates at their training means, lifelines' convention)."""
        f = self._need_fit()
        if self.strata:
            raise ValueError("a stratified model has one baseline per stratum; see fitter_.baseline_survival_")
        h = f.baseline_cumulative_hazard_
        return np.exp(-_step(h.index.to_numpy(float), h.iloc[:, 0].to_numpy(float), np.asarray(times, float)))

    def hazard_ratios(self) -> pd.DataFrame:
        """Coefficient, HR with CI, z, p per covariate, on the user's scale (per unit of each covariate)."""
        s = self._need_fit().summary.reindex(self.covariates)
        assert self.scale_ is not None  # fit() sets it with fitter_
        sd = self.scale_.reindex(self.covariates)
        level = f"{100 * (1 - self.alpha):.0f}%"
        coef, lo, hi = s["coef"] / sd, s[f"coef lower {level}"] / sd, s[f"coef upper {level}"] / sd
        out = pd.DataFrame({"coef": coef, "se": s["se(coef)"] / sd, "coef_lo": lo, "coef_hi": hi,
                            "hr": np.exp(coef), "hr_lo": np.exp(lo), "hr_hi": np.exp(hi), "z": s["z"], "p": s["p"]})
        out.index.name = "covariate"
        return out


class DeepSurv:
    """DeepSurv: an MLP Cox model trained with the Efron partial likelihood.

    Args:
        hidden: hidden layer widths.
        dropout: dropout probability.
        lr: Adam learning rate.
        epochs: maximum epochs (full-batch steps when ``batch_size`` is None).
        l2_output: L2 penalty on the output layer's weights.
        weight_decay: Adam weight decay on all layers (0 by default).
        n_seeds: networks in the ensemble (risk = mean log-risk over seeds).
        val_fraction: share of the training data held out (stratified by event) for early
            stopping; 0 trains for ``epochs`` without early stopping.
        patience: epochs without validation improvement before stopping.
        batch_size: mini-batch size; None = full batch (default; the partial likelihood
            couples all patients, full batch is the exact objective).
        seed: base random seed.
        progress: show a tqdm bar over epochs.
        device: torch device.
    """

    name = "deepsurv"

    def __init__(self, hidden: Sequence[int] = (32, 32), dropout: float = 0.2, lr: float = 1e-3,
                 epochs: int = 500, l2_output: float = 1e-2, weight_decay: float = 0.0, n_seeds: int = 3,
                 val_fraction: float = 0.2, patience: int = 50, batch_size: int | None = None, seed: int = 0,
                 progress: bool = False, device: str = "cpu"):
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)
        self.lr = float(lr)
        self.epochs = int(epochs)
        self.l2_output = float(l2_output)
        self.weight_decay = float(weight_decay)
        self.n_seeds = int(n_seeds)
        self.val_fraction = float(val_fraction)
        self.patience = int(patience)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.progress = bool(progress)
        self.device = device
        self.covariates: list[str] = []
        self.nets_: list[DeepSurvNet] = []
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.baseline_: tuple[np.ndarray, np.ndarray] | None = None
        self.history_: list[dict[str, Any]] = []
        self.convergence_: dict[str, Any] = {}
        self.fit_seconds_ = float("nan")

    def params(self) -> dict[str, Any]:
        keys = ("hidden", "dropout", "lr", "epochs", "l2_output", "weight_decay", "n_seeds", "val_fraction",
                "patience", "batch_size", "seed")
        return {k: getattr(self, k) for k in keys} | {"activation": "SELU", "optimizer": "Adam",
                                                      "loss": "Efron partial likelihood"}

    def _x(self, df: pd.DataFrame) -> torch.Tensor:
        x = (df[self.covariates].to_numpy(float) - self.mean_) / self.scale_
        return torch.as_tensor(x, dtype=torch.float32, device=self.device)

    def fit(self, df: pd.DataFrame, duration_col: str = "time", event_col: str = "event") -> DeepSurv:
        self.covariates = [c for c in df.columns if c not in (duration_col, event_col)]
        check_collinearity(self.covariates)
        _check_frame(df, self.covariates, "DeepSurv.fit")
        time_np, event_np = df[duration_col].to_numpy(float), df[event_col].to_numpy(int)
        _check_outcome(time_np, event_np, "DeepSurv.fit")
        t0 = _time.perf_counter()
        xs = df[self.covariates].to_numpy(float)
        self.mean_ = xs.mean(axis=0)
        self.scale_ = np.where(xs.std(axis=0) > 0, xs.std(axis=0), 1.0)
        x = self._x(df)
        t = torch.as_tensor(time_np, dtype=torch.float32, device=self.device)
        e = torch.as_tensor(event_np, dtype=torch.bool, device=self.device)
        # a fit that fails leaves the model unfitted, not with new networks next to an old baseline
        self.nets_, self.history_, self.baseline_ = [], [], None
        nets: list[DeepSurvNet] = []
        for k in range(self.n_seeds):
            net, hist = self._fit_one(x, t, e, self.seed + k)
            nets.append(net)
            self.history_.append(hist)
        risk = _ensemble_risk(nets, x)
        if not np.isfinite(risk).all():
            raise FitError(f"DeepSurv.fit: the trained networks predict non-finite risks for "
                           f"{int((~np.isfinite(risk)).sum())} training patients")
        self.nets_, self.baseline_ = nets, breslow_baseline(risk, time_np, event_np)
        self.fit_seconds_ = _time.perf_counter() - t0
        self.convergence_ = {"converged": True, "loss": "finite at every epoch",
                             "epochs_run": [h["epochs_run"] for h in self.history_],
                             "best_epoch": [h["best_epoch"] for h in self.history_],
                             "early_stopped": [h["epochs_run"] < self.epochs for h in self.history_]}
        return self

    def _check_loss(self, value: float, what: str, epoch: int, seed: int) -> None:
        if not np.isfinite(value):
            raise FitError(f"DeepSurv.fit: non-finite {what} loss ({value}) at epoch {epoch} of the network with "
                           f"seed {seed} (lr {self.lr:g}, l2_output {self.l2_output:g}): the training diverged; "
                           "lower the learning rate or look for extreme covariate values",
                           [{"seed": seed, "epoch": epoch, what: value}])

    def _split(self, e: torch.Tensor, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n = len(e)
        if self.val_fraction <= 0:
            return np.arange(n), np.array([], dtype=int)
        ev = e.cpu().numpy()
        val: list[int] = []
        for flag in (True, False):
            idx = np.flatnonzero(ev == flag)
            rng.shuffle(idx)
            val.extend(idx[: int(round(self.val_fraction * len(idx)))])
        val_arr = np.sort(np.array(val, dtype=np.int64))
        return np.setdiff1d(np.arange(n), val_arr), val_arr

    def _fit_one(self, x: torch.Tensor, t: torch.Tensor, e: torch.Tensor, seed: int) -> tuple[DeepSurvNet, dict]:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        tr, va = self._split(e, rng)
        net = DeepSurvNet(x.shape[1], self.hidden, self.dropout).to(self.device)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        tr_t = torch.as_tensor(tr, device=self.device)
        va_t = torch.as_tensor(va, device=self.device)
        best, best_state, best_epoch, bad = float("inf"), None, 0, 0
        hist: dict[str, Any] = {"seed": seed, "train_loss": [], "val_loss": []}
        iterator = range(self.epochs)
        if self.progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc=f"DeepSurv seed {seed}", leave=False)
        bs = self.batch_size or len(tr)
        full_batch = bs >= len(tr)
        # full batch: the tie structure of the training and validation sets is fixed, build it once
        train_lik = EfronPartialLikelihood(t[tr_t], e[tr_t]).to(self.device) if full_batch else None
        val_lik = EfronPartialLikelihood(t[va_t], e[va_t]).to(self.device) if len(va_t) else None
        x_tr = x[tr_t]
        for epoch in iterator:
            net.train()
            if train_lik is not None:  # full batch
                opt.zero_grad(set_to_none=True)
                loss = train_lik.loss(net(x_tr)) + self.l2_output * net.out.weight.pow(2).sum()
                loss.backward()
                opt.step()
            else:
                perm = tr_t[torch.randperm(len(tr_t), device=self.device)]
                for start in range(0, len(perm), bs):
                    idx = perm[start: start + bs]
                    opt.zero_grad(set_to_none=True)
                    loss = cox_efron_loss(net(x[idx]), t[idx], e[idx]) + \
                        self.l2_output * net.out.weight.pow(2).sum()
                    loss.backward()
                    opt.step()
            hist["train_loss"].append(loss.item())
            self._check_loss(hist["train_loss"][-1], "training", epoch, seed)
            if val_lik is not None:
                net.eval()
                with torch.no_grad():
                    vl = val_lik.loss(net(x[va_t])).item()
                self._check_loss(vl, "validation", epoch, seed)
                hist["val_loss"].append(vl)
                if vl < best - 1e-6:
                    best, best_state, best_epoch, bad = vl, copy.deepcopy(net.state_dict()), epoch, 0
                else:
                    bad += 1
                    if bad >= self.patience:
                        break
        if best_state is not None:
            net.load_state_dict(best_state)
        hist["best_epoch"] = best_epoch if len(va_t) else self.epochs - 1
        hist["epochs_run"] = len(hist["train_loss"])
        net.eval()
        return net, hist

    def _need_fit(self) -> tuple[np.ndarray, np.ndarray]:
        """The Breslow baseline ``(times, cumulative hazard)``; raises unless fit() completed."""
        if not self.nets_ or self.baseline_ is None:
            raise RuntimeError("DeepSurv is not fitted; call fit() first")
        return self.baseline_

    def predict_risk(self, df: pd.DataFrame) -> np.ndarray:
        """Mean log relative hazard over the ensemble."""
        self._need_fit()
        _check_frame(df, self.covariates, "DeepSurv.predict_risk")
        return _ensemble_risk(self.nets_, self._x(df))

    def predict_survival(self, df: pd.DataFrame, times: Sequence[float]) -> np.ndarray:
        """``S(t | x) = exp(-H0(t) exp(risk))`` with the Breslow baseline, shape ``(n, len(times))``."""
        h0 = _step(*self._need_fit(), np.asarray(times, float))
        return np.exp(-np.outer(np.exp(self.predict_risk(df)), h0))

    def baseline_survival(self, times: Sequence[float]) -> np.ndarray:
        """Baseline survival ``exp(-H0(t))`` (risk 0, i.e. the standardised mean patient for a linear net)."""
        return np.exp(-_step(*self._need_fit(), np.asarray(times, float)))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["nets_"] = [copy.deepcopy(n).cpu() for n in self.nets_]
        state["device"] = "cpu"
        return state


#: name -> class, for configs and the workflow
MODEL_FACTORIES: dict[str, type] = {"cox": CoxModel, "deepsurv": DeepSurv}


def save_model(model: Any, path: str | os.PathLike, **extra: Any) -> Path:
    """Save a fitted model (and ``extra`` metadata) atomically with :func:`torch.save`."""
    return atomic_save_torch({"format": "hicur-survival-model/1", "model": model, **extra}, path)


def load_model(path: str | os.PathLike) -> dict[str, Any]:
    """Load what :func:`save_model` wrote. Only load files you produced: this unpickles objects."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no model file {p}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = torch.load(p, map_location="cpu", weights_only=False)
    if not isinstance(obj, dict) or obj.get("format") != "hicur-survival-model/1":
        raise ValueError(f"{p} is not a hicur survival model file")
    return obj
