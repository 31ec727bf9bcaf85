"""MONAI Label app serving the HiCur-NPC segmentation bundle (copied to ``<app>/main.py`` by ``hicur label-app``).

Layout of an exported app::

    <app>/main.py                         this file
    <app>/model/npc_segmentation/         the self-contained bundle (configs/, models/model.pt)

Start it (in the environment made by ``make label``)::

    monailabel start_server --app <app> --studies <folder of volumes> --host 127.0.0.1 --port 8000 \\
        --conf zoo_source github --conf sam2 false

Inference: ``POST /infer/npc_segmentation?image=<id>`` runs the bundle's ``inference.json``
(whole-volume slice inference) on a study of the studies folder. Training:
``POST /train/npc_segmentation`` runs ``train.json`` on the labels annotators saved (MONAI
Label replaces ``train#dataset#data``).
"""

from __future__ import annotations

import logging
import os

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask

logger = logging.getLogger(__name__)

BUNDLE_NAME = "npc_segmentation"


class HiCurNPCApp(MONAILabelApp):
    """One model: the ``npc_segmentation`` bundle, for inference and training."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundle_path = os.path.join(app_dir, "model", BUNDLE_NAME)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="hicur-npc-segmentation",
            description="HiCur-NPC nasopharyngeal carcinoma MRI segmentation (fusion U-Net bundle)",
            version="0.1.0",
        )

    def infer(self, request: dict, datastore=None) -> dict:
        """Check the study before inference: an unknown id is a 404, an unreadable file a 422, with the reason."""
        image = request.get("image")
        path = image if isinstance(image, str) and os.path.exists(image) else None
        if path is None and isinstance(image, str) and image:
            try:
                path = (datastore or self.datastore()).get_image_uri(image)
            except Exception:  # the datastore raises various errors for unknown ids
                path = None
        if not path or not os.path.exists(path):
            raise HTTPException(status_code=404, detail=f"image {image!r} is not in the studies folder")
        from hicur_monai.transforms import LoadMedicalImage

        try:
            LoadMedicalImage()(path)
        except Exception as err:
            raise HTTPException(status_code=422, detail=f"image {image!r} cannot be read: {err}") from err
        return super().infer(request, datastore)

    def init_infers(self) -> dict:
        task = BundleInferTask(self.bundle_path, self.conf, type="segmentation")
        if not task.is_valid():
            logger.warning(f"{self.bundle_path}: bundle has no models/model.pt; inference is unavailable")
            return {}
        return {BUNDLE_NAME: task}

    def init_trainers(self) -> dict:
        task = BundleTrainTask(self.bundle_path, self.conf)
        return {BUNDLE_NAME: task} if task.is_valid() else {}

    def init_strategies(self) -> dict:
        return {"random": Random(), "first": First()}
