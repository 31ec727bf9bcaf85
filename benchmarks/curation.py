"""Benchmarks of ``hicur curate``: throughput vs. bare decoding, and peak memory vs. corpus size.

Builds a synthetic hospital-export corpus (uncompressed 2D DICOM CT and MRI slices with
names, IDs and dates in the headers, grouped in series, plus RGB endoscopy JPEG frames; the
CT / MRI / endoscopy mix of the original 755K set: 48 / 34 / 18 %; realistic sizes by default:
CT 512 x 512, MR 256-512, endoscopy 1280 x 1024), then measures:

* ``throughput`` (``--rounds`` interleaved rounds, medians reported): images/s of the full pipeline
  (``curate``: identify, de-identify, QC, normalise, hash, pHash, NPY / PNG write, manifest,
  de-duplication) vs. images/s of the bare read + decode of the same files (pydicom
  ``pixel_array`` / PIL) with the same number of processes -- the physical limit on this
  machine -- and their ratio; plus the projected wall time for 755K images on a 16-core
  machine (linear scaling in cores assumed).
* ``rss``: peak RSS of the main process and of the largest worker when curating N files;
  run it for 1K and 10K files and compare (each size in a fresh process).

Usage (from the repository root)::

    python benchmarks/curation.py throughput --files 600 --workers 2 --rounds 3
    python benchmarks/curation.py throughput --files 300 --workers 2 --image-format png --keep-dicom-header
    python benchmarks/curation.py rss --files 1000 --sizes tiny --workers 2
    python benchmarks/curation.py rss --files 10000 --sizes tiny --workers 2
    python benchmarks/curation.py stages   # CPU ms of each step on one 512x512 CT slice and one endoscopy frame
    python benchmarks/curation.py phash    # pHash distances: copies of one image vs different images (threshold)
    python benchmarks/curation.py volume --side 288            # peak RSS of one 288^3 NIfTI: streamed path
    python benchmarks/curation.py volume --side 288 --no-stream  # ... and through the loader (each in a fresh process)
    python benchmarks/curation.py all      # throughput and both RSS runs, with the RSS ratio
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ORIGINAL_IMAGES = 755_000
SALT = "benchmark-salt"
RULES = "version: 1\nrules:\n  - regex: \"endo/(?P<patient>[^/]+)/\"\n    modality: endoscopy\n"


#: realistic in-plane sizes: CT 512 x 512; MR 256-512 (random per series); endoscopy frames 1280 x 1024 (1.3 MP)
SIZES = {"realistic": {"CT": (512,), "MR": (256, 384, 512), "ENDO": (1280, 1024)},
         "tiny": {"CT": (64,), "MR": (64,), "ENDO": (64, 64)}}


def _phantom(rng: np.random.Generator, size: int, i: int) -> np.ndarray:
    """A head-like slice in [-1, 1]: an ellipse of smooth texture and noise, air (-1) outside."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    inside = ((xx - 0.5) / 0.42) ** 2 + ((yy - 0.5) / 0.36) ** 2 <= 1.0
    tissue = 0.4 * np.sin(6 * xx + i * 0.01) * np.cos(5 * yy + i * 0.013) + rng.normal(0, 0.05, (size, size))
    return np.where(inside, tissue, -1.0)


def make_corpus(root: Path, n_files: int, sizes: str = "realistic", seed: int = 0) -> Path:
    """Write ``n_files`` inputs under ``root/export``: uncompressed DICOM CT / MR slices (series of 20 per
    patient, names / IDs / dates in the headers) and RGB endoscopy JPEG frames, mixed 48 / 34 / 18 % as
    the original 755K set; in-plane sizes from :data:`SIZES`."""
    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(seed)
    src = root / "export"
    templates = {"CT": pydicom.dcmread(get_testdata_file("CT_small.dcm")),
                 "MR": pydicom.dcmread(get_testdata_file("MR_small.dcm"))}
    kinds = rng.choice(["CT", "MR", "ENDO"], size=n_files, p=[0.48, 0.34, 0.18])
    series: dict[str, tuple[str, str, int, int]] = {}
    for i, kind in enumerate(kinds):
        pat = f"{kind}{i // 20:05d}"
        if kind == "ENDO":
            w, h = SIZES[sizes]["ENDO"]
            d = src / "endo" / pat
            d.mkdir(parents=True, exist_ok=True)
            yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
            base = np.sin(6 * xx + i * 0.01) * np.cos(5 * yy + i * 0.013)
            noise = rng.normal(0, 0.04, (h, w))
            rgb = np.stack([0.6 + 0.3 * base + noise, 0.35 + 0.2 * base + noise, 0.3 + 0.2 * base + noise], -1)
            Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(d / f"frame{i:06d}.jpg", quality=90)
            continue
        ds = templates[kind].copy()
        if pat not in series:
            series[pat] = (generate_uid(), generate_uid(), 0, int(rng.choice(SIZES[sizes][kind])))
        study, ser, k, size = series[pat]
        series[pat] = (study, ser, k + 1, size)
        ds.PatientName = f"Doe^Jane{i // 20:05d}"
        ds.PatientID = f"MRN{i // 20:07d}"
        ds.PatientBirthDate = "19600101"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, ser
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.Rows = ds.Columns = size
        ds.SeriesDescription = "T2 TSE axial" if kind == "MR" else "head neck"
        ph = _phantom(rng, size, i)
        px = ph * 1000 + 24 if kind == "CT" else (ph + 1) * 600  # CT: air -1000 HU (+1024 offset stored)
        px = px + (1024 if kind == "CT" else 0)
        ds.PixelData = np.clip(px, 0, 4095).astype(np.int16 if ds.PixelRepresentation else np.uint16).tobytes()
        d = src / kind.lower() / pat
        d.mkdir(parents=True, exist_ok=True)
        ds.save_as(d / f"IM{i:06d}.dcm", enforce_file_format=True)
    return src


def describe_corpus(src: Path) -> str:
    """'N files (CT 512x512: n, MR ...: n, endoscopy 1280x1024: n), X MB' from the files themselves."""
    from collections import Counter

    import pydicom
    from PIL import Image

    c: Counter[str] = Counter()
    nbytes = 0
    for p in sorted(src.rglob("*")):
        if not p.is_file():
            continue
        nbytes += p.stat().st_size
        if p.suffix == ".dcm":
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            c[f"{ds.Modality} {ds.Columns}x{ds.Rows}"] += 1
        else:
            with Image.open(p) as im:
                c[f"endoscopy {im.format} {im.size[0]}x{im.size[1]}"] += 1
    parts = ", ".join(f"{k}: {v}" for k, v in sorted(c.items()))
    return f"{sum(c.values())} files ({parts}), {nbytes / 2**20:.1f} MB"


def _decode(path: str) -> int:
    """Bare read + decode of one file (the reference the pipeline is compared to)."""
    if path.endswith(".dcm"):
        import pydicom

        a = pydicom.dcmread(path).pixel_array
    else:
        from PIL import Image

        with Image.open(path) as im:
            a = np.asarray(im)
    return int(a.size > 0)


def _load_toolkit(path: str) -> int:
    """Read + decode with the toolkit's one loader (LoadMedicalImage, i.e. MONAI's readers)."""
    global _LOADER
    if _LOADER is None:
        import warnings

        from hicur_monai.transforms import LoadMedicalImage

        warnings.filterwarnings("ignore")
        _LOADER = LoadMedicalImage()
    return int(_LOADER(path).numel() > 0)


_LOADER = None


def _cpu() -> float:
    """CPU seconds of this process and its finished children (load-independent cost)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def bare_decode(files: list[str], workers: int, fn=_decode) -> float:
    """Seconds to read + decode ``files`` with ``workers`` processes (fork, warm imports)."""
    import multiprocessing as mp

    import pydicom  # noqa: F401
    from PIL import Image  # noqa: F401

    t = time.perf_counter()
    if workers <= 1:
        for f in files:
            fn(f)
    else:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
            list(ex.map(fn, files, chunksize=16))
    return time.perf_counter() - t


def _curate_kwargs(args: argparse.Namespace) -> dict:
    return {"image_format": args.image_format, "keep_dicom_header": args.keep_dicom_header,
            "batch_size": args.batch_size}


def throughput(args: argparse.Namespace) -> dict:
    """Bare read + decode and the full pipeline, interleaved ``--repeats-throughput`` times on the same files.

    Each round runs the bare decode then the full pipeline (into a fresh output folder), so a change
    in the machine's load affects both alike; the per-round ratios and their median are reported.
    """
    import statistics

    import torch

    from hicur_monai.data.curation import curate

    torch.set_num_threads(1)
    rounds = max(1, args.rounds)
    with tempfile.TemporaryDirectory(prefix="hicur-bench-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        src = make_corpus(root, args.files, args.sizes)
        files = sorted(str(p) for p in src.rglob("*") if p.is_file())
        print(f"corpus ({args.sizes}): {describe_corpus(src)}; written in {time.perf_counter() - t:.1f} s")
        bare_decode(files[:50], args.workers)  # warm the page cache and the imports
        import hicur_monai.transforms  # noqa: F401  (imported before the fork, as curate does)
        from hicur_monai.data.curation.pipeline import _preload

        _preload()
        c = _cpu()
        t_loader = bare_decode(files, args.workers, _load_toolkit)
        c_loader = _cpu() - c
        (root / "rules.yaml").write_text(RULES)
        runs = []
        for r in range(rounds):
            c = _cpu()
            t_bare = bare_decode(files, args.workers)
            c_bare = _cpu() - c
            out = root / f"out{r}"
            c = _cpu()
            t = time.perf_counter()
            summary = curate([src], out, salt=SALT, rules=root / "rules.yaml", workers=args.workers,
                             progress=False, **_curate_kwargs(args))
            t_full = time.perf_counter() - t
            c_full = _cpu() - c
            n_img = summary["images"]["total"]
            run = {"bare_images_per_s": len(files) / t_bare, "pipeline_images_per_s": n_img / t_full,
                   "bare_cpu_ms": 1000 * c_bare / len(files), "pipeline_cpu_ms": 1000 * c_full / n_img}
            run["ratio"] = run["pipeline_images_per_s"] / run["bare_images_per_s"]
            run["ratio_cpu"] = run["bare_cpu_ms"] / run["pipeline_cpu_ms"]
            runs.append(run)
            print(f"round {r + 1}/{rounds}: bare {run['bare_images_per_s']:7.1f} images/s, pipeline "
                  f"{run['pipeline_images_per_s']:7.1f} images/s -> ratio {run['ratio']:.3f}; CPU per image bare "
                  f"{run['bare_cpu_ms']:.2f} ms, pipeline {run['pipeline_cpu_ms']:.2f} ms -> ratio "
                  f"{run['ratio_cpu']:.3f}"
                  f"; load {os.getloadavg()[0]:.2f}")
            if r < rounds - 1:
                shutil.rmtree(out)
        out_mb = sum(p.stat().st_size for p in (out / "images").rglob("*") if p.is_file()) / 2**20
        in_mb = sum(os.path.getsize(f) for f in files) / 2**20

    def med(key: str) -> float:
        return statistics.median(x[key] for x in runs)

    bare_rate, full_rate = med("bare_images_per_s"), med("pipeline_images_per_s")
    loader_rate = len(files) / t_loader
    cpu_loader_ms = 1000 * c_loader / len(files)
    per_core = 1000 / med("pipeline_cpu_ms")  # images per CPU-second: what one core sustains without competing jobs
    proj_s = ORIGINAL_IMAGES / (per_core * 16)
    res = {
        "files": len(files), "images": n_img, "sizes": args.sizes, "workers": args.workers, "rounds": rounds,
        "image_format": args.image_format, "keep_dicom_header": args.keep_dicom_header,
        "ratios": [round(x["ratio"], 3) for x in runs], "ratio_median": round(med("ratio"), 3),
        "ratios_cpu": [round(x["ratio_cpu"], 3) for x in runs], "ratio_cpu_median": round(med("ratio_cpu"), 3),
        "bare_decode_images_per_s_median": round(bare_rate, 1), "pipeline_images_per_s_median": round(full_rate, 1),
        "loader_images_per_s": round(loader_rate, 1), "ratio_vs_loader": round(full_rate / loader_rate, 3),
        "projected_755k_on_16_cores_h": round(proj_s / 3600, 2),
        "accepted": summary["images"]["accepted"], "duplicates": summary["images"]["duplicate"],
        "cpu_ms_per_image_median": {"bare": round(med("bare_cpu_ms"), 2), "loader": round(cpu_loader_ms, 2),
                                    "pipeline": round(med("pipeline_cpu_ms"), 2)},
        "input_mb": round(in_mb, 1), "output_mb": round(out_mb, 1),
        "load_average": os.getloadavg(),
    }
    print(f"bare read+decode : {bare_rate:8.1f} images/s (median of {rounds}, {args.workers} processes)")
    print(f"toolkit loader   : {loader_rate:8.1f} images/s (LoadMedicalImage = MONAI readers, "
          f"{args.workers} processes, once)")
    print(f"full pipeline    : {full_rate:8.1f} images/s (median of {rounds}, {args.workers} workers, "
          f"{args.image_format}"
          f"{', DICOM headers kept' if args.keep_dicom_header else ''})")
    print(f"ratio            : per round {res['ratios']}, median {res['ratio_median']:.3f} vs bare decode "
          f"(target >= 0.5); {res['ratio_vs_loader']:.3f} vs the toolkit loader")
    print(f"CPU per image    : bare {med('bare_cpu_ms'):.2f} ms, loader {cpu_loader_ms:.2f} ms, pipeline "
          f"{med('pipeline_cpu_ms'):.2f} ms -> CPU ratio per round {res['ratios_cpu']}, median "
          f"{res['ratio_cpu_median']:.3f} (load-independent)")
    print(f"disk             : input {in_mb:.1f} MB, curated images {out_mb:.1f} MB")
    print(f"projection       : 755K images on 16 cores ~ {proj_s / 3600:.2f} h "
          f"({per_core:.1f} images per CPU-second, linear scaling over 16 cores assumed)")
    print(f"load average     : {os.getloadavg()}")
    print(json.dumps(res))
    return res


def rss(args: argparse.Namespace) -> dict:
    from hicur_monai.data.curation import curate

    with tempfile.TemporaryDirectory(prefix="hicur-rss-") as tmp:
        root = Path(tmp)
        src = make_corpus(root, args.files, args.sizes)
        (root / "rules.yaml").write_text(RULES)
        from hicur_monai.data.curation.pipeline import _preload

        _preload()  # torch + MONAI imports alone are ~1.1 GB of RSS: report growth above them too
        base_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        summary = curate([src], root / "out", salt=SALT, rules=root / "rules.yaml", workers=args.workers,
                         progress=False, **_curate_kwargs(args))
        dt = time.perf_counter() - t
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    res = {"files": args.files, "sizes": args.sizes, "workers": args.workers, "seconds": round(dt, 1),
           "images": summary["images"]["total"], "peak_rss_main_mb": round(peak_self / 1024, 1),
           "rss_main_after_imports_mb": round(base_self / 1024, 1),
           "growth_main_mb": round((peak_self - base_self) / 1024, 1),
           "peak_rss_worker_mb": round(peak_child / 1024, 1)}
    print(json.dumps(res))
    return res


def _time(fn, n: int) -> float:
    fn()
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n * 1000


def stages(args: argparse.Namespace) -> dict:
    """CPU milliseconds of each step of the pipeline on one CT slice and one endoscopy frame of the corpus."""
    import warnings

    import pydicom
    from PIL import Image

    from hicur_monai.data.curation.deid import Pseudonymizer, deidentify_dataset, header_json, read_header
    from hicur_monai.data.curation.discover import discover
    from hicur_monai.data.curation.hashing import content_hash, file_hash, perceptual_hash
    from hicur_monai.data.curation.normalise import display_slice
    from hicur_monai.data.curation.process import CurateConfig, WorkerState, init_worker, process_file
    from hicur_monai.data.curation.rules import load_rules
    from hicur_monai.data.curation.writer import encode_png, npy_header
    from hicur_monai.transforms import LoadMedicalImage, ScaleIntensityByModality
    from hicur_monai.utils.io import atomic_write_chunks

    warnings.filterwarnings("ignore")
    res: dict[str, float] = {}
    n = args.repeats
    with tempfile.TemporaryDirectory(prefix="hicur-stages-") as tmp:
        root = Path(tmp)
        src = make_corpus(root, 60, args.sizes)
        (root / "rules.yaml").write_text(RULES)
        f = str(sorted((src / "ct").rglob("*.dcm"))[0])
        e = str(sorted((src / "endo").rglob("*.jpg"))[0])
        m = str(sorted((src / "mr").rglob("*.dcm"))[0])
        mimg = pydicom.dcmread(m).pixel_array.astype(np.float32)[None]
        mnorm = ScaleIntensityByModality("mri")
        with Image.open(e) as im:
            esize = im.size
        print(f"CT slice {pydicom.dcmread(f, stop_before_pixels=True).Columns}^2, "
              f"MR slice {pydicom.dcmread(m, stop_before_pixels=True).Columns}^2, endoscopy frame "
              f"{esize[0]}x{esize[1]} JPEG ({args.sizes}), CPU ms per call, mean of {n}")
        loader, norm, pseudo = LoadMedicalImage(), ScaleIntensityByModality("ct"), Pseudonymizer(SALT)
        ds0 = read_header(f)
        img = (ds0.pixel_array.astype(np.float32) + np.float32(ds0.RescaleIntercept))[None]
        normed = np.asarray(norm(img))
        disp = display_slice(None, normed, (1.0, 1.0)).display
        with Image.open(e) as im:
            rgb = np.asarray(im)
        pil = Image.open(e)
        pil.load()
        cfg = CurateConfig(out_dir=str(root / "out"), rules=load_rules(root / "rules.yaml"), salt=SALT)
        init_worker(cfg)
        st = WorkerState(cfg)
        found = {x.path: x for x in discover([src])}
        fresh = iter(range(10**6))

        def same_size(path: str) -> list[str]:  # the files of path's folder and size: what one series is in a run
            if path.endswith(".jpg"):
                return sorted(str(x) for x in Path(path).parent.parent.rglob("*.jpg"))
            size = pydicom.dcmread(path, stop_before_pixels=True).Rows
            return [str(x) for x in sorted(Path(path).parent.glob("*.dcm"))
                    if pydicom.dcmread(x, stop_before_pixels=True).Rows == size]

        series = {p: same_size(p) for p in (f, m, e)}
        calls = dict.fromkeys(series, 0)

        def curate_one(path: str) -> None:
            """Like a run: each call writes a new image (the files of path's series in turn); the output folders are
            made afresh each time the series starts over (real runs write new files, never over old ones)."""
            files, k = series[path], calls[path]
            calls[path] += 1
            if k % len(files) == 0:
                st.cfg.out_dir, st.folders = str(root / f"out{next(fresh)}"), set()
            process_file(found[files[k % len(files)]], st)

        bare_calls = dict.fromkeys(series, 0)

        def bare_one(path: str) -> None:  # the bare decode over the same files in the same order
            files, k = series[path], bare_calls[path]
            bare_calls[path] += 1
            _decode(files[k % len(files)])

        fresh_npy = iter(range(10**6))

        def write_npy(a: np.ndarray) -> None:  # a new file each time, as in a run (the pipeline's atomic write)
            atomic_write_chunks(str(root / f"x{next(fresh_npy)}.npy"), [npy_header(a), a])

        steps = {
            "CT: pydicom dcmread + pixel_array (bare)": lambda: bare_one(f),
            "CT: LoadMedicalImage (MONAI reader, 2nd parse)": lambda: loader(f),
            "CT: file_hash (xxh3-128)": lambda: file_hash(f),
            "CT: read_header (deferred pixels)": lambda: read_header(f),
            "CT: read_header + pixel_array (deferred read)": lambda: read_header(f).pixel_array,
            "CT: ScaleIntensityByModality": lambda: norm(img),
            "CT: quantise to uint16": lambda: display_slice(None, normed, (1.0, 1.0)),
            "CT: content_hash (xxh3-128)": lambda: content_hash(disp),
            "CT: perceptual_hash": lambda: perceptual_hash(disp),
            "CT: write NPY (uncompressed)": lambda: write_npy(disp),
            "CT: encode_png (16-bit, level 1)": lambda: encode_png(disp, {}, 1),
            "CT: deidentify_dataset (--keep-dicom-header)": lambda: deidentify_dataset(read_header(f), pseudo, "P0"),
            "CT: header_json (--keep-dicom-header)": lambda: header_json(ds0),
            "CT: process_file (whole per-file pipeline)": lambda: curate_one(f),
            "MR: pydicom dcmread + pixel_array (bare)": lambda: bare_one(m),
            "MR: ScaleIntensityByModality (percentiles)": lambda: mnorm(mimg),
            "MR: process_file (whole per-file pipeline)": lambda: curate_one(m),
            "endoscopy: PIL decode (bare)": lambda: bare_one(e),
            "endoscopy: perceptual_hash (of the decoded PIL image)": lambda: perceptual_hash(pil),
            "endoscopy: content_hash": lambda: content_hash(rgb),
            "endoscopy: write NPY (uncompressed)": lambda: write_npy(rgb),
            "endoscopy: encode_png (8-bit RGB, level 1)": lambda: encode_png(rgb, {}, 1),
            "endoscopy: process_file (whole per-file pipeline)": lambda: curate_one(e),
        }
        deidentify_dataset(ds0, pseudo, "P0")
        for name, fn in steps.items():
            res[name] = round(_time(fn, n), 2)
            print(f"{name:52s} {res[name]:8.2f} ms CPU")
    sub = res["CT: deidentify_dataset (--keep-dicom-header)"]  # includes a read_header
    print(f"(deidentify_dataset includes a read_header: {sub - res['CT: read_header (deferred pixels)']:.2f} ms "
          "of its own)")
    for kind in ("CT", "MR", "endoscopy"):
        bare = next(v for k, v in res.items() if k.startswith(kind) and "(bare)" in k)
        full = res[f"{kind}: process_file (whole per-file pipeline)"]
        print(f"{kind}: process_file / bare decode = {full / bare:.2f}x the CPU (ratio {bare / full:.3f})")
    return res


def _phash_previous(display: np.ndarray) -> str:
    """The pHash of the previous version (box-reduced to a short side of 64-127, then ``imagehash.phash``'s LANCZOS
    resize to 32 x 32), for comparison."""
    import imagehash
    from PIL import Image

    if display.dtype == np.uint16:
        display = np.ascontiguousarray(display).view(np.uint8)[..., 1::2]
    img = Image.fromarray(np.ascontiguousarray(display))
    factor = min(img.size) // 64
    img = img.reduce(factor) if factor > 1 else img
    return str(imagehash.phash(img.convert("L") if img.mode != "L" else img))


def _real_images() -> dict[str, list[np.ndarray]]:
    """Real pictures installed with the environment, at curated sizes: scikit-image's photographs as 1280 x 1024 RGB
    frames; grey photographs and pydicom / pydicom-data DICOM images as 512 x 512 16-bit slices (min-max scaled)."""
    import warnings

    import pydicom
    import skimage.data as sd
    from PIL import Image
    from pydicom.data import get_testdata_file

    warnings.filterwarnings("ignore")
    rgb, grey = [], []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "hubble_deep_field",
                 "colorwheel", "logo", "skin", "lily"):  # not "cat": the same photograph as "chelsea"
        try:
            a = getattr(sd, name)()
        except Exception:  # noqa: BLE001 - some images need a download (pooch): not used
            continue
        if a.ndim == 3:
            rgb.append(np.asarray(Image.fromarray(a[..., :3]).resize((1280, 1024), Image.Resampling.BICUBIC)))

    def add_grey(a: np.ndarray) -> None:
        a = np.asarray(Image.fromarray(a.astype(np.float32)).resize((512, 512), Image.Resampling.BICUBIC), np.float64)
        lo, hi = a.min(), a.max()
        if hi > lo:
            grey.append(np.round((a - lo) / (hi - lo) * 65535).astype(np.uint16))

    for name in ("camera", "moon", "coins", "page", "text", "horse", "clock", "grass", "gravel", "brick"):
        try:
            a = getattr(sd, name)()
        except Exception:  # noqa: BLE001
            continue
        if a.ndim == 2:
            add_grey(a.astype(np.float64))
    paths = [get_testdata_file(n) for n in ("CT_small.dcm", "MR_small.dcm")]
    try:
        import data_store

        d = Path(data_store.__file__).parent / "data"
        paths += [str(d / n) for n in ("MR-SIEMENS-DICOM-WithOverlays.dcm", "MR2_UNCR.dcm", "RG1_UNCR.dcm",
                                       "RG3_UNCR.dcm", "693_UNCR.dcm", "liver.dcm", "eCT_Supplemental.dcm",
                                       "emri_small.dcm")]
    except ImportError:
        pass
    for p in paths:
        try:
            px = pydicom.dcmread(p).pixel_array
        except Exception:  # noqa: BLE001
            continue
        if px.ndim == 3 and px.shape[-1] not in (3, 4):
            px = px[px.shape[0] // 2]  # a multi-frame volume: its middle slice
        if px.ndim == 2:
            add_grey(px.astype(np.float64))
    return {"rgb": rgb, "grey": grey}


def _variants(a: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Copies a hospital export holds of one image: re-encoded, re-scaled, shifted, brightened, noisier."""
    import io

    from PIL import Image

    out: dict[str, np.ndarray] = {}
    if a.ndim == 3:
        for q in (95, 75):
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, "JPEG", quality=q)
            out[f"JPEG q{q}"] = np.asarray(Image.open(buf))
        out["+10 grey levels"] = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
        out["noise sd 2"] = np.clip(a + rng.normal(0, 2, a.shape), 0, 255).astype(np.uint8)
        size = (a.shape[1], a.shape[0])
    else:
        buf = io.BytesIO()
        Image.fromarray((a >> 8).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out["8-bit JPEG q90"] = np.asarray(Image.open(buf)).astype(np.uint16) * 257
        out["+2 % brightness"] = np.clip(a.astype(np.int64) + 1311, 0, 65535).astype(np.uint16)
        out["noise sd 1 %"] = np.clip(a + rng.normal(0, 655, a.shape), 0, 65535).astype(np.uint16)
        size = (a.shape[1], a.shape[0])
    out["1-pixel shift"] = np.ascontiguousarray(np.roll(a, 1, axis=1))
    small = (int(size[0] * 0.9), int(size[1] * 0.9))
    img = Image.fromarray(a if a.ndim == 3 else a.astype(np.float32))
    back = np.asarray(img.resize(small, Image.Resampling.BICUBIC).resize(size, Image.Resampling.BICUBIC))
    out["resized 0.9x and back"] = back if a.ndim == 3 else np.clip(back, 0, 65535).round().astype(np.uint16)
    return out


def phash_quality(args: argparse.Namespace) -> dict:
    """Hamming distances of the pHash between copies of one image and between different images (real pictures).

    The near-duplicate threshold must sit above the first and below the second; printed for the current
    definition and the previous one.
    """
    import itertools

    from hicur_monai.data.curation.dedup import DEFAULT_NEAR_THRESHOLD
    from hicur_monai.data.curation.hashing import perceptual_hash

    def dist(a: str, b: str) -> int:
        return (int(a, 16) ^ int(b, 16)).bit_count()

    imgs = _real_images()
    rng = np.random.default_rng(0)
    res: dict = {"threshold": DEFAULT_NEAR_THRESHOLD}
    for kind, pics in imgs.items():
        for label, fn in (("current", perceptual_hash), ("previous", _phash_previous)):
            hashes = [fn(p) for p in pics]
            copies: dict[str, list[int]] = {}
            for p, h in zip(pics, hashes):
                for v, b in _variants(p, rng).items():
                    copies.setdefault(v, []).append(dist(h, fn(b)))
            pairs = [dist(a, b) for a, b in itertools.combinations(hashes, 2)]
            key = f"{kind}/{label}"
            res[key] = {"images": len(pics), "copies_max": {v: max(x) for v, x in copies.items()},
                        "copies_mean": {v: round(float(np.mean(x)), 2) for v, x in copies.items()},
                        "distinct_min": min(pairs), "distinct_p5": float(np.percentile(pairs, 5)),
                        "distinct_median": float(np.median(pairs)),
                        "distinct_within_threshold": int(sum(d <= DEFAULT_NEAR_THRESHOLD for d in pairs)),
                        "distinct_pairs": len(pairs)}
            r = res[key]
            print(f"{kind:4s} {label:8s} ({len(pics)} images): copies (max / mean bits) "
                  + ", ".join(f"{v} {r['copies_max'][v]} / {r['copies_mean'][v]}" for v in copies)
                  + f"; different images: min {r['distinct_min']}, 5th percentile {r['distinct_p5']:.0f}, median "
                  f"{r['distinct_median']:.0f}, {r['distinct_within_threshold']} of {r['distinct_pairs']} pairs within "
                  f"{DEFAULT_NEAR_THRESHOLD}")
    return res


def _write_volume(path: str, n: int) -> None:
    import nibabel as nib

    vol = np.random.default_rng(0).integers(0, 1000, (n, n, n), dtype=np.int16)
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 2.0, 1.0])), path)


def volume(args: argparse.Namespace) -> dict:
    """Peak RSS growth (above the imports) of curating one ``side^3`` MRI NIfTI volume (int16 on disk),
    streamed slab by slice (:mod:`hicur_monai.data.curation.volumes`) or, with ``--no-stream``, through the
    toolkit loader; in this process (``--workers 1``), so run each mode in a fresh process."""
    from hicur_monai.data.curation import curate, volumes
    from hicur_monai.data.curation.pipeline import _preload

    with tempfile.TemporaryDirectory(prefix="hicur-volume-") as tmp:
        src = Path(tmp) / "src" / "p0"
        src.mkdir(parents=True)
        n = args.side
        with ProcessPoolExecutor(1) as pool:  # written by another process: its memory is not this one's peak
            pool.submit(_write_volume, str(src / "T2.nii.gz"), n).result()
        rules = Path(tmp) / "rules.yaml"
        rules.write_text('version: 1\nrules:\n  - glob: "*.nii.gz"\n    modality: mri\n    sequence: T2\n')
        if args.no_stream:
            volumes.STREAM_BYTES = 1 << 62
        _preload()
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        summary = curate([src.parent], Path(tmp) / "out", salt=SALT, rules=rules, workers=1, progress=False,
                         max_decoded_mb=max(512, n**3 * 4 / 2**20 + 1))
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mib = n**3 * 4 / 2**20
    res = {"side": n, "streamed": not args.no_stream, "float32_mib": round(mib, 1),
           "rss_growth_mib": round((peak - base) / 1024, 1),
           "growth_per_float32_byte": round((peak - base) / 1024 / mib, 2),
           "images": summary["images"]["total"], "seconds": round(seconds, 2)}
    print(json.dumps(res))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["throughput", "rss", "stages", "phash", "volume", "all"])
    p.add_argument("--files", type=int, default=600)
    p.add_argument("--sizes", choices=sorted(SIZES), default="realistic",
                   help="in-plane sizes of the corpus (realistic: CT 512, MR 256-512, endoscopy 1280x1024)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--image-format", choices=("npy", "png"), default="npy")
    p.add_argument("--keep-dicom-header", action="store_true")
    p.add_argument("--batch-size", type=int, default=8, help="files per worker task")
    p.add_argument("--repeats", type=int, default=20, help="stages: calls per step")
    p.add_argument("--rounds", type=int, default=3,
                   help="throughput: interleaved rounds of bare decode + full pipeline (median reported)")
    p.add_argument("--side", type=int, default=288, help="volume: side of the cubic NIfTI volume")
    p.add_argument("--no-stream", action="store_true", help="volume: read through the toolkit loader")
    args = p.parse_args(argv)
    if args.what == "throughput":
        throughput(args)
    elif args.what == "rss":
        rss(args)
    elif args.what == "stages":
        stages(args)
    elif args.what == "phash":
        phash_quality(args)
    elif args.what == "volume":
        volume(args)
    else:
        throughput(args)
        out = []
        for n in (1000, 10000):
            cmd = [sys.executable, __file__, "rss", "--files", str(n), "--sizes", "tiny",
                   "--workers", str(args.workers)]
            line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            out.append(json.loads(line))
            print(line)
        print(f"main growth above imports: {out[0]['growth_main_mb']} MB (1K), {out[1]['growth_main_mb']} MB (10K)")
        for key in ("peak_rss_main_mb", "peak_rss_worker_mb"):
            print(f"{key}: 10K / 1K = {out[1][key] / out[0][key]:.3f}  (target <= 1.3)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    shutil.os.environ.setdefault("MKL_NUM_THREADS", "1")
    sys.exit(main())
