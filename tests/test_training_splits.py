"""Patient splits (``hicur_monai.data.splits``) and the small stage-I wiring components the bundle JSON calls."""

from __future__ import annotations

import pytest

from hicur_monai.data.splits import patient_folds, split_by_patient
from hicur_monai.training import pretrain_transforms, scalar_outputs


def test_split_by_patient_every_fifth_sorted_patient_is_validation():
    items = [{"patient": f"p{i:02d}", "image": f"{i}.png"} for i in range(10)] + [{"image": "lone.png"}]
    split = split_by_patient(items)
    assert [p for p, s in split.items() if s == "val"] == ["p03", "p08"]  # sorted: lone.png, p00, ...
    assert split["lone.png"] == "train"  # an item without a patient is its own group
    assert split == split_by_patient(list(reversed(items)))  # order of the items does not matter
    with pytest.raises(ValueError, match="val_every"):
        split_by_patient(items, val_every=0)


def test_patient_folds_deal_sorted_patients_round_robin():
    assert patient_folds(["c", "a", "b", "a", "d"], 2) == {"a": 0, "b": 1, "c": 0, "d": 1}
    with pytest.raises(ValueError, match="folds"):
        patient_folds(["a"], 0)


def test_pretrain_transforms_adds_augmentation_only_when_asked():
    from monai.transforms import Compose, Identityd, RandFlipd

    pre, aug, norm = Compose([Identityd(keys="image")]), Compose([RandFlipd(keys="image")]), Identityd(keys="image")
    on = pretrain_transforms(pre, norm, aug, augment=True)
    off = pretrain_transforms(pre, norm, aug, augment=False)
    assert [type(t).__name__ for t in on.transforms] == ["Identityd", "RandFlipd", "Identityd"]  # flat
    assert [type(t).__name__ for t in off.transforms] == ["Identityd", "Identityd"]


def test_scalar_outputs_picks_floats():
    pick = scalar_outputs(["loss", "loss_mae"])
    assert pick({"loss": 1, "loss_mae": 0.5, "image": None}) == {"loss": 1.0, "loss_mae": 0.5}
