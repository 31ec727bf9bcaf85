"""The demo cohort: everything every bundle needs to train, evaluate and infer offline.

``generate_demo_cohort(DIR)`` writes, deterministically from one seed:

* ``clinical/clinical.csv`` + ``clinical/truth.json``: the 37-column prognosis table
  (499 patients by default) and the proportional-hazards model its event times came from,
  including the image-borne factor (a necrotic core, ``truth["image_covariates"]``);
* ``mri/<study>/{T1,T2,T1C,mask}.nii.gz``: one synthetic axial head-and-neck MRI study per
  patient (:mod:`.volumes`);
* ``reports/mri/<study>.txt`` + ``.json``: its radiology report and ground truth (:mod:`.mri_report`);
* ``ct/<study>/{CT,mask}.nii.gz``: CT of the same anatomy for the first patients;
* ``endoscopy/<id>.png`` + ``reports/<id>.txt`` + ``reports/<id>.json``: one or more
  nasopharyngoscopy frames per patient, their free-text reports and ground-truth findings
  (:mod:`.endoscopy`); the sidecar's ``patient`` / ``study`` link the frame to its patient;
* ``real/``: real sample images shipped by installed packages, with provenance;
* ``datalist.json``: MONAI-style data lists per modality, paths relative to DIR, plus
  ``mri_reports`` and ``patients`` (each patient's study, report, frames and clinical row);
* ``cohort.json`` + ``README.txt``: what was generated, from which seed, and what is synthetic.

The cohort is linked: every patient (a clinical row) has one MRI study, its radiology report
and one or more endoscopy frames, all following one :class:`~.tumour.TumourSpec` drawn from
the patient's T/N, skull-base and nodal columns (side, walls, extension, size, necrosis).
The necrotic core enters the hazard with the log HR declared in ``truth.json`` before any
model runs; models never read ``truth.json`` nor the ``.json`` ground-truth sidecars.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hicur_monai import __version__
from hicur_monai.data.demo.endoscopy import write_frame
from hicur_monai.data.demo.mri_report import measure_tumour, mri_report
from hicur_monai.data.demo.samples import copy_real_samples
from hicur_monai.data.demo.tumour import TumourSpec, draw_tumour, endoscopy_findings
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
        n_endoscopy: nasopharyngoscopy frames with reports, at least one per patient (the extra
            ones go to random patients); ``None``: one per patient plus a second for about 20%.
    """

    n_patients: int = 499
    mri_shape: tuple[int, int, int] = (64, 64, 16)
    fov_mm: tuple[float, float, float] = (200.0, 200.0, 120.0)
    n_ct: int = 20
    n_endoscopy: int | None = None


PRESETS: dict[str, CohortPreset] = {
    "default": CohortPreset(),
    "small": CohortPreset(n_patients=60, n_ct=8),
    "tiny": CohortPreset(n_patients=12, mri_shape=(48, 48, 12), n_ct=3),
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
    """Write one patient's MRI study, its radiology report (and CT) in a worker process."""
    out_dir, study, seed_seq, t_stage, shape, fov, with_ct, spec, report_seed, patient = args
    rng = np.random.default_rng(seed_seq)
    phantom = make_phantom(rng, shape=shape, fov_mm=fov, t_stage=t_stage, tumour=spec)
    paths = write_study(Path(out_dir) / "mri" / study, phantom, MRI_SEQUENCES, rng)
    result = {"study": study, "mri": {k: str(v) for k, v in paths.items()}, "tumour_voxels": int(phantom.mask.sum())}
    measured = measure_tumour(phantom.mask, phantom.affine, phantom.regions["necrosis"])
    measured["landmarks_mm"] = phantom.landmarks
    text, truth = mri_report(spec, measured, np.random.default_rng(report_seed), study=study, patient=patient)
    rdir = Path(out_dir) / "reports" / "mri"
    atomic_write_text(rdir / f"{study}.txt", text)
    atomic_write_json(rdir / f"{study}.json", truth)
    result["report"] = {"report": str(rdir / f"{study}.txt"), "findings": str(rdir / f"{study}.json")}
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


def _frame_task(args: tuple) -> dict:
    """Write one linked endoscopy frame in a worker process."""
    out_dir, index, seed, grid, patient, study = args
    return write_frame(Path(out_dir), index, seed, grid=grid, patient=patient, study=study)


def _run_task(task: tuple) -> dict:
    kind, args = task
    return _study_task(args) if kind == "study" else _frame_task(args)


def _draw_tumours(base: dict, tumour_seq: np.random.SeedSequence) -> tuple[list[TumourSpec], list[dict], list]:
    """Each patient's tumour, endoscopy findings and report seed, from the clinical baseline."""
    specs, grids, report_seeds = [], [], []
    for i, seq in enumerate(tumour_seq.spawn(len(base["t_stage"]))):
        spec_seq, grid_seq, report_seq = seq.spawn(3)
        spec = draw_tumour(
            np.random.default_rng(spec_seq), int(base["t_stage"][i]), int(base["n_stage"][i]),
            skull_base=bool(base["skull_base"][i]), intracranial=bool(base["intracranial"][i]),
            rp_node_sides=int(base["rp_sides"][i]), neck_node_sides=int(base["neck_sides"][i]),
            nodal_necrosis=bool(base["necrosis"][i]), lower_neck=bool(base["lower_neck"][i]))
        specs.append(spec)
        grids.append(endoscopy_findings(spec, np.random.default_rng(grid_seq)))
        report_seeds.append(report_seq)
    return specs, grids, report_seeds


def _frames_per_patient(n_patients: int, n_endoscopy: int | None, seq: np.random.SeedSequence) -> np.ndarray:
    """How many endoscopy frames each patient gets (at least one)."""
    rng = np.random.default_rng(seq)
    if n_endoscopy is not None and n_endoscopy < n_patients:
        raise ValueError(f"n_endoscopy={n_endoscopy}: every one of the {n_patients} patients needs at least one "
                         "endoscopy frame (use n_endoscopy=None for the default)")
    extra = int(rng.binomial(n_patients, 0.2)) if n_endoscopy is None else n_endoscopy - n_patients
    counts = np.ones(n_patients, int)
    np.add.at(counts, rng.choice(n_patients, size=extra, replace=extra > n_patients), 1)
    return counts


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
        workers: processes for the MRI/CT studies and endoscopy frames (default: all CPU cores, at most 8).
        progress: show a progress bar.
        overrides: any :class:`CohortPreset` field, e.g. ``n_patients=100``.
    """
    from hicur_monai.data.demo.clinical import clinical_baseline, generate_clinical_table, write_clinical_table

    t0 = time.time()
    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    if overrides:
        cfg = replace(cfg, **overrides)  # type: ignore[arg-type]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(seed)
    clin_seq, mri_seq, endo_seq, tumour_seq = root.spawn(4)  # the first three as before the cohort was linked
    clin_seed = int(clin_seq.generate_state(1)[0])

    # 1. clinical baseline -> each patient's tumour (the one truth the images and reports follow)
    study_ids = [f"IMG{i + 1:04d}" for i in range(cfg.n_patients)]
    base = clinical_baseline(cfg.n_patients, clin_seed)
    specs, grids, report_seeds = _draw_tumours(base, tumour_seq)
    # 2. clinical table: event times from the clinical covariates and the image-borne necrotic core
    image = {"tumour_necrosis": np.array([float(s.necrosis) for s in specs])}
    table, truth = generate_clinical_table(cfg.n_patients, clin_seed, study_ids, image_covariates=image)
    clinical_paths = write_clinical_table(out / "clinical", table, truth)
    t_stages = [parse_t_stage(v) for v in table["7th T Stage"]]
    patients = [str(v) for v in table["Filename"]]

    # 3. MRI study + report per patient (+ CT for the first n_ct) and the endoscopy frames, in parallel
    (out / "endoscopy").mkdir(parents=True, exist_ok=True)
    (out / "reports" / "mri").mkdir(parents=True, exist_ok=True)
    tasks = _cohort_tasks(out, cfg, mri_seq, endo_seq, study_ids, patients, specs, grids, report_seeds)
    results = _run_tasks(tasks, workers, progress)
    endo_entries = [r for r in results if "image" in r]
    results = [r for r in results if "mri" in r]

    # 4. real samples from installed packages
    real_entries = copy_real_samples(out)

    def rel(p: str | os.PathLike) -> str:
        return str(Path(p).relative_to(out))

    mri_list, ct_list = _image_lists(results, patients, t_stages, rel)
    report_list, patient_list = _linked_lists(results, endo_entries, patients, study_ids, specs, rel)
    datalist = {"mri": mri_list, "ct": ct_list, "endoscopy": endo_entries, "real": real_entries,
                "clinical": clinical_paths, "mri_reports": report_list, "patients": patient_list}
    atomic_write_json(out / "datalist.json", datalist)
    counts = {"patients": cfg.n_patients, "mri_studies": len(results), "mri_images": len(mri_list),
              "ct_studies": len(ct_list), "endoscopy_frames": len(endo_entries), "real_samples": len(real_entries),
              "mri_reports": len(report_list)}
    manifest = {
        "generator": f"hicur-monai {__version__} demo cohort",
        "seed": seed,
        "preset": asdict(cfg),
        "counts": counts,
        "synthetic": ["clinical/", "mri/", "ct/", "endoscopy/", "reports/"],
        "real": [e["image"] for e in real_entries],
        "seconds": round(time.time() - t0, 2),
    }
    atomic_write_json(out / "cohort.json", manifest)
    atomic_write_text(out / "README.txt", _README.format(**manifest["counts"], seed=seed))
    log.info("demo cohort written to %s in %.1f s: %s", out, manifest["seconds"], json.dumps(manifest["counts"]))
    return out


def _cohort_tasks(out: Path, cfg: CohortPreset, mri_seq: np.random.SeedSequence, endo_seq: np.random.SeedSequence,
                  study_ids: list[str], patients: list[str], specs: list[TumourSpec], grids: list,
                  report_seeds: list) -> list[tuple]:
    """One ``("study", args)`` task per patient, then one ``("frame", args)`` task per endoscopy frame."""
    study_seeds = mri_seq.spawn(cfg.n_patients)
    endo_seed, frame_seq = int(endo_seq.generate_state(1)[0]), endo_seq.spawn(1)[0]
    tasks = [("study", (str(out), study_ids[i], study_seeds[i], specs[i].t_stage, tuple(cfg.mri_shape),
                        tuple(cfg.fov_mm), i < cfg.n_ct, specs[i], report_seeds[i], patients[i]))
             for i in range(cfg.n_patients)]
    owners = np.repeat(np.arange(cfg.n_patients), _frames_per_patient(cfg.n_patients, cfg.n_endoscopy, frame_seq))
    tasks += [("frame", (str(out), j, endo_seed, grids[i], patients[i], study_ids[i])) for j, i in enumerate(owners)]
    return tasks


def _image_lists(results: list[dict], patients: list[str], t_stages: list, rel: Callable[[str], str],
                 ) -> tuple[list[dict], list[dict]]:
    """The ``mri`` (one entry per sequence) and ``ct`` data lists of the generated studies."""
    mri_list, ct_list = [], []
    for i, res in enumerate(results):
        for seq in MRI_SEQUENCES:
            mri_list.append({
                "image": rel(res["mri"][seq]), "label": rel(res["mri"]["mask"]), "modality": "mri",
                "sequence": seq, "patient": patients[i], "study": res["study"], "t_stage": t_stages[i],
                "report": rel(res["report"]["report"]),
            })
        if "ct" in res:
            ct_list.append({
                "image": rel(res["ct"]["CT"]), "label": rel(res["ct"]["mask"]), "modality": "ct",
                "patient": patients[i], "study": res["study"], "t_stage": t_stages[i],
            })
    return mri_list, ct_list


def _linked_lists(results: list[dict], endo_entries: list[dict], patients: list[str], study_ids: list[str],
                  specs: list[TumourSpec], rel) -> tuple[list[dict], list[dict]]:
    """The ``mri_reports`` and ``patients`` data lists (each patient's study, report, frames, clinical row)."""
    frames: dict[str, list[str]] = {}
    for e in endo_entries:
        frames.setdefault(e["patient"], []).append(e["image"])
    report_list = [{"report": rel(r["report"]["report"]), "findings": rel(r["report"]["findings"]), "modality": "mri",
                    "patient": patients[i], "study": r["study"]} for i, r in enumerate(results)]
    patient_list = [{"patient": patients[i], "study": study_ids[i], "clinical_row": i, "t_stage": specs[i].t_stage,
                     "n_stage": specs[i].n_stage, "side": specs[i].side, "mri": f"mri/{study_ids[i]}",
                     "mri_report": report_list[i]["report"], "endoscopy": frames.get(patients[i], [])}
                    for i in range(len(patients))]
    return report_list, patient_list


def _run_tasks(tasks: list[tuple], workers: int | None, progress: bool) -> list[dict]:
    """Run study and frame tasks (in order of the results) on a process pool or in this process."""
    n_workers = workers or min(8, os.cpu_count() or 1)
    results: list[dict] = []
    bar = tqdm(total=len(tasks), desc="MRI studies + endoscopy frames", unit="item", disable=not progress)
    if n_workers > 1 and len(tasks) > 4:
        with ProcessPoolExecutor(n_workers) as pool:
            for res in pool.map(_run_task, tasks, chunksize=4):
                results.append(res)
                bar.update()
    else:
        for task in tasks:
            results.append(_run_task(task))
            bar.update()
    bar.close()
    return results


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
- mri/ ({mri_studies} studies, T1/T2/T1C + tumour mask): procedural axial head-and-neck
  phantoms with an NPC-like tumour; its side, walls and extension follow T/N.
- reports/mri/ ({mri_reports} reports): free-text radiology reports + ground-truth JSON.
- ct/ ({ct_studies} studies): CT in Hounsfield units of the same phantoms.
- endoscopy/ + reports/ ({endoscopy_frames} frames, one or more per patient): drawn
  nasopharyngoscopy-like frames showing that patient's tumour, free-text reports and
  ground-truth findings per region.
- clinical/truth.json also declares the image-borne prognostic factor (necrotic core).
- real/ ({real_samples} files): REAL sample images shipped by installed packages (pydicom,
  pydicom-data, nibabel, scikit-image); provenance in datalist.json. Their headers carry
  test identities (names, IDs, dates), which makes them de-identification test material.
"""
