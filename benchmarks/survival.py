"""Survival benchmarks: cross-validated C-index on public data, DeepSurv fit time vs references.

Part 1 (``--part cv``): scikit-survival's ``load_whas500()`` and ``load_gbsg2()``, fixed
stratified 5-fold cross-validation (seed 0), linear Cox (lifelines, penalizer 0.01) and
DeepSurv (our defaults) on the same folds: Harrell's C per fold, pooled out-of-fold C with
a patient-level bootstrap 95% CI, and fit time per fold.

Part 2 (``--part speed``): DeepSurv training time, same data (whas500), same architecture
(our ``DeepSurvNet``), same optimiser, epochs and full batch, no early stopping:
ours (:class:`hicur_monai.survival.models.DeepSurv`, Efron loss with the tie structure
precomputed) vs the torchsurv reference loop (``neg_partial_log_likelihood`` every step,
as in torchsurv's examples) vs pycox's ``CoxPH.fit`` (sort-and-cumsum loss, torchtuples
loop) when pycox is installed (``pip install pycox``).

Part 3 (``--part flchain``): scikit-survival's ``load_flchain()`` (7,874 patients, unscaled
covariates, categoricals one-hot, ``chapter`` dropped, creatinine imputed with the training
median), 70/30 split (seed 0): test Harrell's C and fit time of our Cox (standardised
covariates, convergence checked) against scikit-survival's ``CoxPHSurvivalAnalysis`` on the
same split, and the attempts our fit needed.

Usage::

    python benchmarks/survival.py              # every part
    python benchmarks/survival.py --part speed --epochs 300 --repeats 3
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
import torch


def load(name: str) -> pd.DataFrame:
    """A scikit-survival dataset as one numeric frame with ``time`` and ``event`` columns."""
    from sksurv.column import encode_categorical
    from sksurv.datasets import load_gbsg2, load_whas500

    x, y = {"whas500": load_whas500, "gbsg2": load_gbsg2}[name]()
    x = encode_categorical(x).astype(float)
    df = x.copy()
    names = y.dtype.names
    df["event"] = y[names[0]].astype(int)
    df["time"] = y[names[1]].astype(float)
    return df


def part_cv(n_boot: int) -> None:
    from hicur_monai.survival.metrics import Outcome, bootstrap_ci, harrell_c
    from hicur_monai.survival.workflow import cross_validate

    print("== 5-fold CV (stratified, seed 0), Harrell's C ==")
    print(f"{'dataset':8s} {'n':>4s} {'events':>6s} {'model':9s} {'pooled OOF C (95% CI)':>24s} "
          f"{'fold C mean±sd':>15s} {'fit s/fold':>10s}")
    for name in ("whas500", "gbsg2"):
        df = load(name)
        cv = cross_validate(df, {"cox": {}, "deepsurv": {}}, n_folds=5, seed=0, progress=False)
        out = Outcome(df["time"], df["event"])
        for model, r in cv["models"].items():
            risk = r["risk"]
            est, lo, hi = bootstrap_ci(lambda idx, risk=risk, out=out: harrell_c(out.subset(idx), risk[idx]), len(df),
                                       n_boot=n_boot)
            fc = np.asarray(r["fold_c"])
            print(f"{name:8s} {len(df):4d} {int(df['event'].sum()):6d} {model:9s} "
                  f"{est:.3f} ({lo:.3f}-{hi:.3f})".ljust(55) +
                  f" {fc.mean():.3f}±{fc.std():.3f}   {np.mean(r['fit_seconds']):8.2f}")


def _torchsurv_loop(x: torch.Tensor, t: torch.Tensor, e: torch.Tensor, epochs: int, lr: float, seed: int) -> float:
    from hicur_monai.networks.prognosis import DeepSurvNet
    from hicur_monai.survival.losses import cox_efron_loss

    torch.manual_seed(seed)
    net = DeepSurvNet(x.shape[1], (32, 32), 0.2)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    t0 = time.perf_counter()
    for _ in range(epochs):
        net.train()
        opt.zero_grad()
        loss = cox_efron_loss(net(x), t, e) + 0.01 * net.out.weight.pow(2).sum()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def _pycox_loop(x: torch.Tensor, t: torch.Tensor, e: torch.Tensor, epochs: int, lr: float, seed: int) -> float:
    import torchtuples as tt
    from pycox.models import CoxPH

    from hicur_monai.networks.prognosis import DeepSurvNet

    torch.manual_seed(seed)

    class Net(DeepSurvNet):
        def forward(self, z):  # pycox wants (B, 1)
            return super().forward(z).unsqueeze(-1)

    model = CoxPH(Net(x.shape[1], (32, 32), 0.2), tt.optim.Adam(lr=lr))
    xn, tn, en = x.numpy(), t.numpy(), e.numpy().astype("float32")
    t0 = time.perf_counter()
    model.fit(xn, (tn, en), batch_size=len(xn), epochs=epochs, verbose=False)
    return time.perf_counter() - t0


def part_speed(epochs: int, repeats: int) -> None:
    from hicur_monai.survival.models import DeepSurv

    df = load("whas500")
    cols = [c for c in df.columns if c not in ("time", "event")]
    xs = df[cols].to_numpy(float)
    x = torch.tensor((xs - xs.mean(0)) / xs.std(0), dtype=torch.float32)
    t = torch.tensor(df["time"].to_numpy(), dtype=torch.float32)
    e = torch.tensor(df["event"].to_numpy(), dtype=torch.bool)
    lr = 1e-3
    print(f"== DeepSurv fit time: whas500 (n={len(df)}), MLP {len(cols)}-32-32-1 SELU, full batch, Adam, "
          f"{epochs} epochs, best of {repeats} ==")
    results: dict[str, float] = {}

    def ours() -> float:
        m = DeepSurv(hidden=(32, 32), dropout=0.2, lr=lr, epochs=epochs, l2_output=0.01, n_seeds=1,
                     val_fraction=0.0, seed=0)
        m.fit(df[cols + ["time", "event"]])
        return m.fit_seconds_

    runners = {"hicur DeepSurv (Efron, precomputed ties)": ours,
               "torchsurv reference loop (Efron per step)": lambda: _torchsurv_loop(x, t, e, epochs, lr, 0)}
    try:
        import pycox  # noqa: F401

        runners["pycox CoxPH.fit (sort-and-cumsum, ties wrong)"] = lambda: _pycox_loop(x, t, e, epochs, lr, 0)
    except ImportError:
        print("(pycox not installed: pip install pycox to add its reference loop)")
    for name, fn in runners.items():
        fn()  # warm-up
        results[name] = min(fn() for _ in range(repeats))
    for name, s in results.items():
        print(f"{name:50s} {s:7.3f} s  ({1000 * s / epochs:.2f} ms/epoch)")
    ours_s = results["hicur DeepSurv (Efron, precomputed ties)"]
    ref = {k: v for k, v in results.items() if not k.startswith("hicur")}
    for k, v in ref.items():
        print(f"ours vs {k.split(' (')[0]}: {v / ours_s:.2f}x {'faster' if v >= ours_s else 'SLOWER'}")


def part_flchain() -> None:
    from sklearn.impute import SimpleImputer
    from sklearn.model_selection import train_test_split
    from sksurv.datasets import load_flchain
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.preprocessing import OneHotEncoder

    from hicur_monai.survival.metrics import Outcome, harrell_c
    from hicur_monai.survival.models import CoxModel

    x, y = load_flchain()
    x = OneHotEncoder().fit_transform(x.drop(columns=["chapter"]))
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0)
    imp = SimpleImputer(strategy="median").fit(xtr[["creatinine"]])
    xtr, xte = xtr.assign(creatinine=imp.transform(xtr[["creatinine"]])[:, 0]), \
        xte.assign(creatinine=imp.transform(xte[["creatinine"]])[:, 0])
    test = Outcome(yte["futime"], yte["death"])
    print(f"== flchain 70/30 split: {len(xtr)} train, {len(xte)} test, {x.shape[1]} covariates ==")
    t0 = time.perf_counter()
    sk = CoxPHSurvivalAnalysis(ties="efron").fit(xtr, ytr)
    sk_s = time.perf_counter() - t0
    print(f"{'scikit-survival CoxPHSurvivalAnalysis (efron)':48s} test C {harrell_c(test, sk.predict(xte)):.4f}  "
          f"fit {sk_s:.2f} s")
    ours = CoxModel().fit(xtr.assign(time=ytr["futime"], event=ytr["death"].astype(int)))
    ours_c = harrell_c(test, ours.predict_risk(xte))
    print(f"{'hicur CoxModel (penalizer 0.01, standardised)':48s} test C {ours_c:.4f}  "
          f"fit {ours.fit_seconds_:.2f} s  converged on attempt {ours.convergence_['attempts']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("all", "cv", "speed", "flchain"), default="all")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--boot", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    if args.part in ("all", "speed"):
        part_speed(args.epochs, args.repeats)
    if args.part in ("all", "cv"):
        part_cv(args.boot)
    if args.part in ("all", "flchain"):
        part_flchain()


if __name__ == "__main__":
    main()
