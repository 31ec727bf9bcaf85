"""The demo cohort: everything every bundle needs to train, evaluate and infer offline.

``generate_demo_cohort(DIR)`` writes, deterministically from one seed:

* ``clinical/clinical.csv`` + ``clinical/truth.json``: the 37-column prognosis table
  (499 patients by default) and the proportional-hazards model its event times came from;
* ``mri/<study>/{T1,T2,T1C,mask}.nii.gz``: one synthetic MRI study per patient, the
  tumour sized by the patient's T stage (:mod:`.volumes`);
* ``ct/<study>/{CT,mask}.nii.gz``: CT of the same anatomy for the first patients;
* ``endoscopy/<id>.png`` + ``reports/<id>.txt`` + ``reports/<id>.json``: nasopharyngoscopy
  frames, their free-text reports and ground-truth findings (:mod:`.endoscopy`);
* ``real/``: real sample images shipped by installed packages, with provenance;
* ``datalist.json``: MONAI-style data lists per modality, paths relative to DIR;
* ``cohort.json`` + ``README.txt``: what was generated, from which seed, and what is synthetic.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hicur_monai import __version__
from hicur_monai.data.demo.samples import copy_real_samples
from hicur_monai.data.demo.volumes import make_phantom, render, study_fields, write_study
from hicur_monai.utils.io import atomic_write_json, atomic_write_text

__all__ = ["CohortPreset", "PRESETS", "generate_demo_cohort", "load_datalist", "parse_t_stage"]

log = logging.getLogger(__name__)

MRI_SEQUENCES = ("T1", "T2", "T1C")


@dataclass(frozen=True)
class CohortPreset:
    """Sizes of a demo cohort.

    Attributes:
        n_patients: rows of the clinical table; every patient has an MRI study.
        mri_shape: voxel grid (X, Y, Z) of each MRI/CT study.
        fov_mm: field of view of each study in mm.
        n_ct: patients (the first ones) that also get a CT of the same anatomy.
        n_endoscopy: nasopharyngoscopy frames with reports.
    """

    n_patients: int = 499
    mri_shape: tuple[int, int, int] = (64, 64, 16)
    fov_mm: tuple[float, float, float] = (200.0, 200.0, 120.0)
    n_ct: int = 20
    n_endoscopy: int = 60


PRESETS: dict[str, CohortPreset] = {
    "default": CohortPreset(),
    "small": CohortPreset(n_patients=60, n_ct=8, n_endoscopy=24),
    "tiny": CohortPreset(n_patients=12, mri_shape=(48, 48, 12), n_ct=3, n_endoscopy=8),
}

def parse_t_stage(value: object, default: int = 2) -> int:
    """T stage 1-4 as the clinical loader reads it (``"T3"``, ``"III"``, ``"3"``), sub-stages (``"T4a"``)
    folded; ``default`` when missing or unreadable (the phantom needs some tumour size)."""
    from hicur_monai.data.clinical import normalise_t_stage

    text = re.sub(r"(?i)(\d|[iv])[a-c]$", r"\1", str(value).strip()) if value is not None else ""
    try:
        stage = normalise_t_stage(text)
    except ValueError:
        return default
    return default if stage != stage else int(stage)  # NaN: missing


def _study_task(args: tuple) -> dict:
    """Write one patient's MRI study (and CT) in a worker process."""
    out_dir, study, seed_seq, t_stage, shape, fov, with_ct = args
    rng = np.random.default_rng(seed_seq)
    phantom = make_phantom(rng, shape=shape, fov_mm=fov, t_stage=t_stage)
    paths = write_study(Path(out_dir) / "mri" / study, phantom, MRI_SEQUENCES, rng)
    result = {"study": study, "mri": {k: str(v) for k, v in paths.items()}, "tumour_voxels": int(phantom.mask.sum())}
    if with_ct:
        import nibabel as nib

        ct_dir = Path(out_dir) / "ct" / study
        ct_dir.mkdir(parents=True, exist_ok=True)
        for name, arr in (("CT", render(phantom, "CT", rng, study_fields(phantom, rng))), ("mask", phantom.mask)):
            tmp = ct_dir / f".{name}.tmp.nii.gz"
            nib.save(nib.Nifti1Image(arr, phantom.affine), tmp)
            tmp.replace(ct_dir / f"{name}.nii.gz")
        result["ct"] = {"CT": str(ct_dir / "CT.nii.gz"), "mask": str(ct_dir / "mask.nii.gz")}
    return result


def generate_demo_cohort(
    out_dir: str | os.PathLike,
    seed: int = 0,
    preset: str | CohortPreset = "default",
    workers: int | None = None,
    progress: bool = True,
    **overrides: object,
) -> Path:
    """Generate the demo cohort into ``out_dir`` and return ``out_dir``.

    Args:
        out_dir: destination folder (created; existing files are overwritten).
        seed: the one seed everything is derived from (same seed, same bytes of content).
        preset: ``"default"`` (499 patients), ``"small"``, ``"tiny"`` (tests) or a :class:`CohortPreset`.
        workers: processes for the MRI/CT studies (default: all CPU cores, at most 8).
        progress: show a progress bar.
        overrides: any :class:`CohortPreset` field, e.g. ``n_patients=100``.
    """
    from hicur_monai.data.demo.clinical import generate_clinical_table, write_clinical_table
    from hicur_monai.data.demo.endoscopy import generate_endoscopy

    t0 = time.time()
    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    if overrides:
        cfg = replace(cfg, **overrides)  # type: ignore[arg-type]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(seed)
    clin_seq, mri_seq, endo_seq = root.spawn(3)

    # 1. clinical table: patients and their T stage (which sizes the synthetic tumours)
    study_ids = [f"IMG{i + 1:04d}" for i in range(cfg.n_patients)]
    table, truth = generate_clinical_table(cfg.n_patients, int(clin_seq.generate_state(1)[0]), study_ids)
    clinical_paths = write_clinical_table(out / "clinical", table, truth)
    t_stages = [parse_t_stage(v) for v in table["7th T Stage"]]
    patients = [str(v) for v in table["Filename"]]

    # 2. one MRI study per patient (+ CT for the first n_ct), in parallel, deterministic per study
    study_seeds = mri_seq.spawn(cfg.n_patients)
    tasks = [
        (str(out), study_ids[i], study_seeds[i], t_stages[i], tuple(cfg.mri_shape), tuple(cfg.fov_mm), i < cfg.n_ct)
        for i in range(cfg.n_patients)
    ]
    n_workers = workers or min(8, os.cpu_count() or 1)
    results: list[dict] = []
    bar = tqdm(total=len(tasks), desc="MRI/CT studies", unit="study", disable=not progress)
    if n_workers > 1 and len(tasks) > 4:
        with ProcessPoolExecutor(n_workers) as pool:
            for res in pool.map(_study_task, tasks, chunksize=4):
                results.append(res)
                bar.update()
    else:
        for task in tasks:
            results.append(_study_task(task))
            bar.update()
    bar.close()

    # 3. endoscopy frames + reports + ground-truth findings
    endo_entries = generate_endoscopy(out, cfg.n_endoscopy, int(endo_seq.generate_state(1)[0]))

    # 4. real samples from installed packages
    real_entries = copy_real_samples(out)

    rel = lambda p: str(Path(p).relative_to(out))  # noqa: E731
    mri_list, ct_list = [], []
    for i, res in enumerate(results):
        for seq in MRI_SEQUENCES:
            mri_list.append({
                "image": rel(res["mri"][seq]), "label": rel(res["mri"]["mask"]), "modality": "mri",
                "sequence": seq, "patient": patients[i], "study": res["study"], "t_stage": t_stages[i],
            })
        if "ct" in res:
            ct_list.append({
                "image": rel(res["ct"]["CT"]), "label": rel(res["ct"]["mask"]), "modality": "ct",
                "patient": patients[i], "study": res["study"], "t_stage": t_stages[i],
            })
    datalist = {"mri": mri_list, "ct": ct_list, "endoscopy": endo_entries, "real": real_entries,
                "clinical": clinical_paths}
    atomic_write_json(out / "datalist.json", datalist)
    manifest = {
        "generator": f"hicur-monai {__version__} demo cohort",
        "seed": seed,
        "preset": asdict(cfg),
        "counts": {"patients": cfg.n_patients, "mri_studies": len(results), "mri_images": len(mri_list),
                   "ct_studies": len(ct_list), "endoscopy_frames": len(endo_entries), "real_samples": len(real_entries)},
        "synthetic": ["clinical/", "mri/", "ct/", "endoscopy/", "reports/"],
        "real": [e["image"] for e in real_entries],
        "seconds": round(time.time() - t0, 2),
    }
    atomic_write_json(out / "cohort.json", manifest)
    atomic_write_text(out / "README.txt", _README.format(**manifest["counts"], seed=seed))
    log.info("demo cohort written to %s in %.1f s: %s", out, manifest["seconds"], json.dumps(manifest["counts"]))
    return out


def load_datalist(cohort_dir: str | os.PathLike, key: str) -> list[dict]:
    """A data list of the cohort (``"mri"``, ``"ct"``, ``"endoscopy"``, ``"real"``) with absolute paths."""
    root = Path(cohort_dir)
    path = root / "datalist.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; generate the cohort with `hicur demo-data {root}`")
    data = json.loads(path.read_text())
    if key not in data:
        raise KeyError(f"{path}: no data list {key!r}; available: {sorted(data)}")
    out = []
    for item in data[key]:
        item = dict(item)
        for k in ("image", "label", "report", "findings"):
            if isinstance(item.get(k), str):
                item[k] = str(root / item[k])
        out.append(item)
    return out


_README = """\
hicur-monai demo cohort (seed {seed})
=====================================

SYNTHETIC, NOT PATIENT DATA. Generated by `hicur demo-data` so that every bundle can run
offline on a fresh machine. Real NPC images, reports and clinical tables are not public.

- clinical/clinical.csv ({patients} patients): the 37 columns of the HiCur-NPC prognosis
  table; event times drawn from a known proportional-hazards model (clinical/truth.json).
- mri/ ({mri_studies} studies, T1/T2/T1C + tumour mask): procedural phantoms with an
  NPC-like tumour, sized by T stage.
- ct/ ({ct_studies} studies): CT in Hounsfield units of the same phantoms.
- endoscopy/ + reports/ ({endoscopy_frames} frames): drawn nasopharyngoscopy-like frames,
  free-text reports and ground-truth findings per region.
- real/ ({real_samples} files): REAL sample images shipped by installed packages (pydicom,
  pydicom-data, nibabel, scikit-image); provenance in datalist.json. Their headers carry
  test identities (names, IDs, dates), which makes them de-identification test material.
"""
