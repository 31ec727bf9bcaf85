"""Prognosis networks: DeepSurv MLP, the released binary image+text head, the hashed text encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hicur_monai.networks.prognosis import (
    DeepSurvNet,
    HashedBagOfWordsEncoder,
    SliceTextPrognosisConfig,
    SliceTextPrognosisNet,
    pool_slice_features,
)
from hicur_monai.registry import get


def test_hashed_encoder_is_deterministic_and_registered():
    enc = get("text_encoders", "hashed_bow")(dim=16)
    a, ma = enc.encode(["T2 N1 EBV high", "no nodes"])
    b, _ = HashedBagOfWordsEncoder(dim=16).encode(["T2 N1 EBV high", "no nodes"])
    assert a.shape == (2, 4, 16) and ma.tolist() == [[True] * 4, [True, True, False, False]]
    assert torch.equal(a, b)
    assert not torch.allclose(a[0, 0], a[0, 1])
    with pytest.raises(TypeError):
        enc.encode("one string")


def test_networks_shapes_and_masks():
    assert DeepSurvNet(5, (8, 8))(torch.randn(7, 5)).shape == (7,)
    net = SliceTextPrognosisNet(SliceTextPrognosisConfig(feature_dim=12, text_dim=16, d_model=32, n_heads=4))
    net.eval()
    slices, text = torch.randn(3, 5, 12), torch.randn(3, 6, 16)
    smask = torch.ones(3, 5, dtype=torch.bool)
    smask[0, 3:] = False
    tmask = torch.ones(3, 6, dtype=torch.bool)
    out = net(slices, smask, text, tmask)
    assert out.shape == (3, 2)
    changed = slices.clone()
    changed[0, 3:] = 100.0  # padded slices must not matter
    assert torch.allclose(net(changed, smask, text, tmask)[0], out[0], atol=1e-5)
    with pytest.raises(ValueError, match="at most 32"):
        net(torch.randn(1, 40, 12), None, text[:1], None)
    assert pool_slice_features(torch.randn(4, 8, 3, 3)).shape == (4, 8)
    assert pool_slice_features(torch.randn(4, 10, 8)).shape == (4, 8)


@pytest.mark.slow
def test_binary_baseline_learns(tmp_path):
    from hicur_monai.survival.binary import binary_auc, fit_binary_baseline, load_slice_features, predict_binary

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, s, f = 96, 6, 8
    death = rng.random(n) < 0.4
    meta = rng.random(n) < 0.4
    feats = rng.normal(size=(n, s, f)).astype(np.float32)
    feats[:, :, 0] += 1.5 * death[:, None]  # death is visible in the images
    texts = [f"EBV {'high' if m else 'low'} stage III" for m in meta]  # metastasis in the text
    ids = np.array([f"S{i}" for i in range(n)])
    np.savez(tmp_path / "slices.npz", ids=ids, features=feats)
    x, mask, found = load_slice_features(tmp_path / "slices.npz", list(ids[:80]) + ["missing"])
    assert found.sum() == 80 and not found[-1] and x.shape == (80, s, f)
    y = torch.tensor(np.stack([death, meta], 1)[:80])
    net, enc, hist = fit_binary_baseline(x[:64], mask[:64], texts[:64], y[:64], epochs=25, lr=3e-3,
                                         d_model=32, n_heads=4, dropout=0.0)
    assert hist[-1] < hist[0]
    auc = binary_auc(predict_binary(net, enc, x[64:], mask[64:], texts[64:80]), y[64:])
    assert auc["death"] > 0.75 and auc["metastasis"] > 0.75, auc
