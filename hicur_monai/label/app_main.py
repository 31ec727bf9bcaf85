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

Safe by default (:mod:`hicur_monai.label.guard`): ids, tags and uploads are checked and kept
inside the studies folder, sessions are off, inference runs on datastore ids only, and the
model, logs, training and deletions need the admin token of the environment variable
``HICUR_LABEL_ADMIN_TOKEN`` (off without it). See ``docs/security.md``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fastapi import HTTPException
from monai.transforms import SaveImaged
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask

from hicur_monai.label.guard import SafeLocalDatastore, install_guard
from hicur_monai.label.safety import RequestRefused, check_id, check_inside
from hicur_monai.segmentation.output import SaveSegmentationd

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

    def init_datastore(self) -> SafeLocalDatastore:
        """MONAI Label's local datastore with every client name checked (a DICOMweb URL is refused)."""
        if self.studies.startswith(("http://", "https://")):
            raise ValueError(f"{self.studies}: this app serves a local studies folder only")
        return SafeLocalDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _load_sessions(self, load: bool = False) -> None:
        return None  # sessions take client uploads and archives; off in this app

    def on_init_complete(self) -> None:
        super().on_init_complete()
        install_guard()  # raises if it cannot: the server never runs unguarded

    def infer(self, request: dict, datastore: Any = None) -> dict:
        """Inference on a datastore image only: an unknown id is a 404, an unreadable file a 422, with the reason."""
        image = request.get("image")
        store = datastore or self.datastore()
        try:
            check_id(image)
            path = store.get_image_uri(image)
            if not path or not os.path.isfile(path):
                raise RequestRefused(404, "")
            check_inside(path, self.studies)
        except RequestRefused:
            raise HTTPException(status_code=404,
                                detail=f"image {str(image)[:80]!r} is not in the studies folder") from None
        from hicur_monai.transforms import LoadMedicalImage

        try:
            LoadMedicalImage()(path)
        except Exception as err:
            reason = str(err).replace(path, str(image))  # no server paths in answers
            raise HTTPException(status_code=422, detail=f"image {image!r} cannot be read: {reason}") from err
        # the resolved path, not the id: MONAI Label would take an id that names a file in its working folder
        # as that file
        result = super().infer(dict(request, image=path), store)
        if request.get("save_label") and result.get("file"):
            tag = request.get("label_tag") or "original"
            result["label"] = store.save_label(image, result["file"], tag, {"model": request.get("model")})
            result["tag"] = tag
        return result

    def init_infers(self) -> dict:
        # the bundle's writers would save files on the server: MONAI Label returns the mask instead
        task = BundleInferTask(self.bundle_path, self.conf, type="segmentation",
                               post_filter=[SaveImaged, SaveSegmentationd])
        if not task.is_valid():
            logger.warning(f"{self.bundle_path}: bundle has no models/model.pt; inference is unavailable")
            return {}
        return {BUNDLE_NAME: task}

    def init_trainers(self) -> dict:
        task = BundleTrainTask(self.bundle_path, self.conf)
        return {BUNDLE_NAME: task} if task.is_valid() else {}

    def init_strategies(self) -> dict:
        return {"random": Random(), "first": First()}
