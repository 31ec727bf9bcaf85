"""Experiment tracking with a local MLflow store: ``--tracking hicur_monai/training/mlflow.json`` on the
MONAI training bundles, ``report_to="mlflow"`` on the Stage II Trainer."""

from __future__ import annotations

import pytest

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("sqlalchemy")

pytestmark = pytest.mark.slow


def _runs(uri: str, experiment: str) -> list:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {uri}"
    runs = client.search_runs([exp.experiment_id])
    return [(r, {a.path for a in client.list_artifacts(r.info.run_id)}) for r in runs]


def test_hcmae_bundle_tracks_params_metrics_and_pictures(demo_cohort, repo_root, tmp_path, monkeypatch):
    from monai.bundle import run

    from hicur_monai.training.tracking import MLFLOW_SETTINGS

    monkeypatch.chdir(repo_root)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlruns.db'}"
    (tmp_path / "store").mkdir()
    run(config_file=str(repo_root / "bundles/hcmae_pretrain/configs/train.json"), tracking=MLFLOW_SETTINGS,
        tracking_uri=uri, dataset_dir=str(demo_cohort), output_dir=str(tmp_path / "out"), max_items=8, slice_step=3,
        batch_size=4, augment=False, val_interval=1, epochs=1, cpu_threads=1)
    [(r, artifacts)] = _runs(uri, "hcmae_pretrain")
    assert {"train_loss", "val_recon_loss"} <= set(r.data.metrics)
    assert r.data.params["lr"] == "0.001" and r.data.params["preset"] == "tiny"
    assert {"reconstruction.png", "loss_history.json"} <= artifacts
    assert any(a.startswith("config_") and a.endswith(".json") for a in artifacts)  # the executed config


def test_segmentation_bundle_tracks_metrics_and_contours(demo_cohort, repo_root, tmp_path, monkeypatch):
    from monai.bundle import run

    from hicur_monai.training.tracking import MLFLOW_SETTINGS

    monkeypatch.chdir(repo_root)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = [str(repo_root / "bundles/npc_segmentation/configs" / c) for c in ("train.json", "demo.json")]
    run(config_file=cfg, tracking=MLFLOW_SETTINGS, tracking_uri=uri, experiment_name="seg",
        dataset_dir=str(demo_cohort), output_dir=str(tmp_path / "out"), max_patients=2, val_every=3,
        sequences=["T1C"], augment=False, val_interval=1, epochs=1)
    [(r, artifacts)] = _runs(uri, "seg")
    assert {"train_loss", "val_mean_dice_3d"} <= set(r.data.metrics)
    assert "val_contours.png" in artifacts and r.data.params["use_coarse"] == "True"


def test_vlm_trainer_reports_to_mlflow(tmp_path, monkeypatch):
    from vlm_helpers import TINY_LLM, TINY_VIT, tiny_records

    from hicur_monai.vlm.train import VLMTraining

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "vl")
    records = tiny_records(tmp_path / "img", 2)
    VLMTraining(records, tmp_path / "run", vision=TINY_VIT, llm=TINY_LLM, image_folder=tmp_path / "img",
                max_length=128, batch_size=2, max_steps=2, device="cpu", progress=False, report_to="mlflow").run()
    [(r, _)] = _runs(uri, "vl")
    assert "loss" in r.data.metrics and r.data.params["learning_rate"] == "0.001"
