"""Benchmarks of ``hicur curate``: throughput vs. bare decoding, and peak memory vs. corpus size.

Builds a synthetic hospital-export corpus (2D DICOM CT and MRI slices with names, IDs and
dates in the headers, grouped in series, plus RGB endoscopy PNGs; the CT / MRI / endoscopy
mix of the original 755K set: 48 / 34 / 18 %), then measures:

* ``throughput``: images/s of the full pipeline (``curate``: identify, de-identify, QC,
  normalise, hash, pHash, PNG write, manifest, de-duplication) vs. images/s of the bare
  read + decode of the same files (pydicom ``pixel_array`` / PIL) with the same number of
  processes -- the physical limit on this machine -- and their ratio; plus the projected
  wall time for 755K images on a 16-core machine (linear scaling in cores assumed).
* ``rss``: peak RSS of the main process and of the largest worker when curating N files;
  run it for 1K and 10K files and compare (each size in a fresh process).

Usage (from the repository root)::

    python benchmarks/curation.py throughput --files 600 --workers 2
    python benchmarks/curation.py rss --files 1000 --size 64 --workers 2
    python benchmarks/curation.py rss --files 10000 --size 64 --workers 2
    python benchmarks/curation.py stages   # CPU ms of each pipeline step on one 256x256 CT slice
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


def make_corpus(root: Path, n_files: int, size: int = 256, seed: int = 0) -> Path:
    """Write ``n_files`` inputs under ``root/export`` (series of 20 DICOM slices per patient, PNG frames)."""
    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(seed)
    src = root / "export"
    templates = {"CT": pydicom.dcmread(get_testdata_file("CT_small.dcm")),
                 "MR": pydicom.dcmread(get_testdata_file("MR_small.dcm"))}
    yy, xx = np.mgrid[0:size, 0:size] / size
    kinds = rng.choice(["CT", "MR", "ENDO"], size=n_files, p=[0.48, 0.34, 0.18])
    series: dict[str, tuple[str, str, int]] = {}
    for i, kind in enumerate(kinds):
        pat = f"{kind}{i // 20:05d}"
        base = np.sin(6 * xx + i * 0.01) * np.cos(5 * yy + i * 0.013)
        noise = rng.normal(0, 0.05, (size, size))
        if kind == "ENDO":
            d = src / "endo" / pat
            d.mkdir(parents=True, exist_ok=True)
            rgb = np.stack([base + noise, base * 0.7 + noise, 0.5 + 0.3 * base + noise], -1)
            Image.fromarray((np.clip((rgb + 1) / 2, 0, 1) * 255).astype(np.uint8)).save(d / f"frame{i:06d}.png")
            continue
        ds = templates[kind].copy()
        if pat not in series:
            series[pat] = (generate_uid(), generate_uid(), 0)
        study, ser, k = series[pat]
        series[pat] = (study, ser, k + 1)
        ds.PatientName = f"Doe^Jane{i // 20:05d}"
        ds.PatientID = f"MRN{i // 20:07d}"
        ds.PatientBirthDate = "19600101"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, ser
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.Rows = ds.Columns = size
        ds.SeriesDescription = "T2 TSE axial" if kind == "MR" else "head neck"
        px = (base + noise) * (400 if kind == "CT" else 800) + (1024 if kind == "CT" else 1000)
        ds.PixelData = px.astype(np.int16 if ds.PixelRepresentation else np.uint16).tobytes()
        d = src / kind.lower() / pat
        d.mkdir(parents=True, exist_ok=True)
        ds.save_as(d / f"IM{i:06d}.dcm", enforce_file_format=True)
    return src


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


def throughput(args: argparse.Namespace) -> dict:
    import torch

    from hicur_monai.data.curation import curate

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="hicur-bench-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        src = make_corpus(root, args.files, args.size)
        files = sorted(str(p) for p in src.rglob("*") if p.is_file())
        print(f"corpus: {len(files)} files of {args.size}x{args.size} in {time.perf_counter() - t:.1f} s")
        bare_decode(files[:50], args.workers)  # warm the page cache and the imports
        c = _cpu()
        t_bare = bare_decode(files, args.workers)
        c_bare = _cpu() - c
        import hicur_monai.transforms  # noqa: F401  (imported before the fork, as curate does)
        from hicur_monai.data.curation.pipeline import _preload

        _preload()
        c = _cpu()
        t_loader = bare_decode(files, args.workers, _load_toolkit)
        c_loader = _cpu() - c
        (root / "rules.yaml").write_text(RULES)
        c = _cpu()
        t = time.perf_counter()
        summary = curate([src], root / "out", salt=SALT, rules=root / "rules.yaml", workers=args.workers,
                         progress=False)
        t_full = time.perf_counter() - t
        c_full = _cpu() - c
    n_img = summary["images"]["total"]
    bare_rate, full_rate = len(files) / t_bare, n_img / t_full
    loader_rate = len(files) / t_loader
    cpu_bare, cpu_loader, cpu_full = len(files) / c_bare, len(files) / c_loader, n_img / c_full
    per_core = cpu_full  # images per CPU-second: what one core sustains without competing jobs
    proj_s = ORIGINAL_IMAGES / (per_core * 16)
    res = {
        "files": len(files), "images": n_img, "size": args.size, "workers": args.workers,
        "bare_decode_images_per_s": round(bare_rate, 1), "pipeline_images_per_s": round(full_rate, 1),
        "ratio": round(full_rate / bare_rate, 3), "loader_images_per_s": round(loader_rate, 1),
        "ratio_vs_loader": round(full_rate / loader_rate, 3),
        "projected_755k_on_16_cores_h": round(proj_s / 3600, 2),
        "accepted": summary["images"]["accepted"], "duplicates": summary["images"]["duplicate"],
        "cpu_ms_per_image": {"bare": round(1000 / cpu_bare, 1), "loader": round(1000 / cpu_loader, 1),
                             "pipeline": round(1000 / cpu_full, 1)},
        "ratio_cpu": round(cpu_full / cpu_bare, 3), "ratio_cpu_vs_loader": round(cpu_full / cpu_loader, 3),
        "load_average": os.getloadavg(),
    }
    print(f"bare read+decode : {bare_rate:8.1f} images/s ({args.workers} processes)")
    print(f"toolkit loader   : {loader_rate:8.1f} images/s (LoadMedicalImage = MONAI readers, {args.workers} processes)")
    print(f"full pipeline    : {full_rate:8.1f} images/s ({args.workers} workers)")
    print(f"ratio            : {res['ratio']:.3f} vs bare decode (target >= 0.5); "
          f"{res['ratio_vs_loader']:.3f} vs the toolkit loader")
    print(f"CPU per image    : bare {1000 / cpu_bare:.1f} ms, loader {1000 / cpu_loader:.1f} ms, "
          f"pipeline {1000 / cpu_full:.1f} ms  -> ratio {res['ratio_cpu']:.3f} vs bare, "
          f"{res['ratio_cpu_vs_loader']:.3f} vs loader (load-independent)")
    print(f"projection       : 755K images on 16 cores ~ {proj_s / 3600:.2f} h "
          f"({per_core:.1f} images per CPU-second, linear scaling over 16 cores assumed)")
    print(f"load average     : {os.getloadavg()}")
    return res


def rss(args: argparse.Namespace) -> dict:
    from hicur_monai.data.curation import curate

    with tempfile.TemporaryDirectory(prefix="hicur-rss-") as tmp:
        root = Path(tmp)
        src = make_corpus(root, args.files, args.size)
        (root / "rules.yaml").write_text(RULES)
        from hicur_monai.data.curation.pipeline import _preload

        _preload()  # torch + MONAI imports alone are ~1.1 GB of RSS: report growth above them too
        base_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        summary = curate([src], root / "out", salt=SALT, rules=root / "rules.yaml", workers=args.workers,
                         progress=False)
        dt = time.perf_counter() - t
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    res = {"files": args.files, "size": args.size, "workers": args.workers, "seconds": round(dt, 1),
           "images": summary["images"]["total"], "peak_rss_main_mb": round(peak_self / 1024, 1),
           "rss_main_after_imports_mb": round(base_self / 1024, 1),
           "growth_main_mb": round((peak_self - base_self) / 1024, 1), "peak_rss_worker_mb": round(peak_child / 1024, 1)}
    print(json.dumps(res))
    return res


def stages(args: argparse.Namespace) -> dict:
    """CPU milliseconds of each step of the pipeline on one DICOM slice of the corpus (inline, 30 repeats)."""
    import warnings

    import pydicom

    from hicur_monai.data.curation.deid import Pseudonymizer, deidentify_dataset, header_json, read_header
    from hicur_monai.data.curation.process import encode_png, perceptual_hash
    from hicur_monai.transforms import LoadMedicalImage, ScaleIntensityByModality

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix="hicur-stages-") as tmp:
        src = make_corpus(Path(tmp), 40, args.size)
        f = str(sorted((src / "ct").rglob("*.dcm"))[0])
        loader, norm, pseudo = LoadMedicalImage(), ScaleIntensityByModality("ct"), Pseudonymizer(SALT)
        img = loader(f)
        a = norm(img).numpy()[0]
        arr = (a * 65535).astype(np.uint16)
        steps = {
            "pydicom dcmread + pixel_array (bare)": lambda: pydicom.dcmread(f).pixel_array,
            "read_header (deferred pixels)": lambda: read_header(f),
            "deidentify_dataset": lambda: deidentify_dataset(read_header(f), pseudo, "P0"),
            "header_json (after de-id)": None,
            "LoadMedicalImage": lambda: loader(f),
            "ScaleIntensityByModality": lambda: norm(img),
            "perceptual_hash": lambda: perceptual_hash(a),
            "encode_png (16-bit, level 1)": lambda: encode_png(arr, {}, 1),
        }
        ds = deidentify_dataset(read_header(f), pseudo, "P0")
        steps["header_json (after de-id)"] = lambda: header_json(ds)
        res = {}
        for name, fn in steps.items():
            fn()
            t = time.process_time()
            for _ in range(30):
                fn()
            res[name] = round((time.process_time() - t) / 30 * 1000, 2)
            print(f"{name:40s} {res[name]:8.2f} ms CPU")
    sub = res["deidentify_dataset"]  # includes a read_header
    print(f"(deidentify_dataset includes a read_header: {sub - res['read_header (deferred pixels)']:.2f} ms of its own)")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["throughput", "rss", "stages", "all"])
    p.add_argument("--files", type=int, default=600)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    if args.what == "throughput":
        throughput(args)
    elif args.what == "rss":
        rss(args)
    elif args.what == "stages":
        stages(args)
    else:
        throughput(args)
        out = []
        for n in (1000, 10000):
            cmd = [sys.executable, __file__, "rss", "--files", str(n), "--size", "64", "--workers", str(args.workers)]
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
