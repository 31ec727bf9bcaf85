"""``curate``: discover -> (process pool) identify, de-identify, QC, slice, write -> parts ->
de-duplicate -> split -> manifest; ``merge``: join the manifests of ``--shard`` runs.

Streaming: discovery is a generator, at most ``4 x workers`` files are in flight, and rows
are committed to Parquet part files every ``flush_every`` files or ``flush_seconds``
seconds, so memory does not grow with the number of files while processing; the final
de-duplication / split / manifest step holds a table of all rows (a few KB per file). Resumable: a part file is written
atomically after the images it lists, so after a kill only uncommitted files are redone
(their images are rewritten at the same names, atomically).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from hicur_monai.data.curation.dedup import DEFAULT_NEAR_THRESHOLD, deduplicate
from hicur_monai.data.curation.deid import Pseudonymizer
from hicur_monai.data.curation.discover import Found, discover, in_shard, parse_shard, source_prefixes
from hicur_monai.data.curation.manifest import (
    assign_splits,
    format_summary,
    new_row,
    read_parts,
    source_columns,
    summarize,
    write_manifest,
    write_part,
)
from hicur_monai.data.curation.process import (
    DEFAULT_MAX_DECODED_MB,
    CurateConfig,
    init_worker,
    run_batch_in_worker,
    run_in_worker,
)
from hicur_monai.data.curation.reasons import ACCEPTED, REJECTED
from hicur_monai.data.curation.rules import load_rules
from hicur_monai.utils.io import atomic_write_json

__all__ = ["KILL_AFTER_PARTS_ENV", "curate", "merge", "shard_tag"]

log = logging.getLogger(__name__)
_VERSION = 1
#: Test hook: with this environment variable set to N > 0, the curating process SIGKILLs its worker
#: processes and itself right after committing its N-th part file -- a ``kill -9`` at a moment the
#: caller chooses (``tests/test_curation_robust.py``). Never set it outside tests.
KILL_AFTER_PARTS_ENV = "HICUR_CURATION_TEST_KILL_AFTER_PARTS"


def _kill_hard() -> None:
    """SIGKILL the pool's worker processes, then this process (the :data:`KILL_AFTER_PARTS_ENV` hook)."""
    import signal

    for child in mp.active_children():
        if child.pid is not None:
            os.kill(child.pid, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def shard_tag(shard: tuple[int, int]) -> str:
    """``shard-0003-of-0016`` for shard ``(3, 16)``."""
    return f"shard-{shard[0]:04d}-of-{shard[1]:04d}"


def _parts_dir(out: Path, shard: tuple[int, int]) -> Path:
    return out / "parts" / shard_tag(shard)


def _check_run_file(out: Path, shard: tuple[int, int], info: dict[str, Any], resume: bool) -> None:
    import json

    path = out / f"run-{shard_tag(shard)}.json"
    parts = sorted(_parts_dir(out, shard).glob("part-*.parquet"))
    if path.exists() and parts:
        old = json.loads(path.read_text())
        if not resume:
            raise FileExistsError(f"{out}: holds a previous run of {shard_tag(shard)}; pass --resume to continue it "
                                  "or choose a new --out")
        if old.get("salt_fingerprint") != info["salt_fingerprint"]:
            raise ValueError(f"{path}: the previous run used another salt; resume needs the same salt "
                             "(pseudonyms would not match)")
        if old.get("sources") != info["sources"]:
            raise ValueError(f"{path}: the previous run curated sources {old.get('sources')}, not {info['sources']}")
    atomic_write_json(path, info)


class _PartWriter:
    def __init__(self, folder: Path, flush_every: int, flush_seconds: float) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        seqs = [int(m.group(1)) for p in folder.glob("part-*.parquet") if (m := re.match(r"part-(\d+)", p.name))]
        self.seq = max(seqs) + 1 if seqs else 0
        self.rows: list[dict[str, Any]] = []
        self.files = 0
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self.last = time.monotonic()
        self.committed = 0
        self.kill_after = int(os.environ.get(KILL_AFTER_PARTS_ENV) or 0)

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        self.files += 1
        if self.files >= self.flush_every or time.monotonic() - self.last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        # no sync of the images here: a killed process loses nothing already written (the page cache
        # survives it), and after a power cut --resume re-checks every committed image (_done_ids)
        if self.rows:
            write_part(self.folder / f"part-{self.seq:06d}.parquet", self.rows)  # atomic, fsynced
            self.seq += 1
            self.committed += 1
            if self.kill_after and self.committed >= self.kill_after:
                _kill_hard()
        self.rows, self.files, self.last = [], 0, time.monotonic()


def _int(v: Any, default: int) -> int:
    return default if v is None or v != v else int(v)  # None / NaN (a nullable column read by pandas)


def _image_file_ok(path: Path, min_bytes: int) -> bool:
    try:
        return path.stat().st_size >= max(1, min_bytes)
    except OSError:
        return False


def _done_ids(folder: Path, out: Path | None = None, keep_dicom_header: bool = False) -> set[str]:
    """Source ids whose rows a committed part holds and whose images are on disk.

    Image files are written without a per-file fsync; a committed part can therefore list an
    image that a power cut (not a killed process) left missing or empty. Such files are not
    done: their rows are made again (identical; the final pass keeps one copy of each row)
    and their images rewritten. An image counts as present when it exists with at least its
    pixel bytes (``width x height x channels x`` 1 or 2 bytes) and, with ``keep_dicom_header``,
    its non-empty header beside it.
    """
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        return set()
    df = read_parts(parts, columns=["row_type", "source_id", "status", "output_path", "width", "height", "channels",
                                    "value_max"])
    done = set(df.loc[df["row_type"] == "input", "source_id"])
    if out is None:
        return done
    img = df[(df["row_type"] == "image") & (df["output_path"].fillna("") != "")]
    bad: set[str] = set()
    for r in img.itertuples(index=False):
        path = out / r.output_path
        nbytes = 2 if _int(r.value_max, 0) > 255 else 1
        pixels = _int(r.width, 0) * _int(r.height, 0) * _int(r.channels, 1) * nbytes
        need = pixels if path.suffix == ".npy" else 1  # a PNG is compressed: present and non-empty
        if not _image_file_ok(path, need) or (keep_dicom_header and path.suffix == ".npy"
                                               and not _image_file_ok(Path(f"{path}.dicom.json"), 1)):
            bad.add(r.source_id)
    if bad:
        log.warning("resume: %d committed files have missing or short images and are redone", len(bad))
    return done - bad


def _progress(total: int | None, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="file", desc="curate", disable=not enabled, dynamic_ncols=True, smoothing=0.05)


def curate(
    sources: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    salt: str,
    rules: str | os.PathLike | None = None,
    workers: int = 1,
    shard: str | None = None,
    resume: bool = False,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    min_size: int = 32,
    redact_source_paths: bool = False,
    progress: bool = True,
    flush_every: int = 200,
    flush_seconds: float = 10.0,
    png_compress_level: int = 1,
    image_format: str = "npy",
    keep_dicom_header: bool = False,
    batch_size: int = 8,
    follow_external_links: bool = False,
    max_decoded_mb: float = DEFAULT_MAX_DECODED_MB,
) -> dict[str, Any]:
    """Curate image folders into de-identified, de-duplicated 2D images (NPY or PNG) and a manifest.

    Args:
        sources: folders (or files) to curate.
        out_dir: output folder (``images/``, ``parts/``, ``manifest.*`` or ``manifest-shard-*``).
        salt: pseudonymisation key (see :func:`~hicur_monai.data.curation.deid.read_salt`).
        rules: rules file path or packaged name (``demo``); ``None`` for the defaults.
        workers: worker processes (``<= 1``: in this process).
        shard: ``"i/n"`` to process the ``i``-th of ``n`` deterministic subsets.
        resume: continue a killed run in ``out_dir``.
        near_threshold: pHash Hamming distance for near duplicates.
        split: train / val / test patient fractions.
        min_size: smallest accepted in-plane side.
        redact_source_paths: never write source paths, only their keyed ids.
        progress: show the progress bar.
        flush_every, flush_seconds: commit rows to a part file this often.
        png_compress_level: zlib level of the PNGs (``image_format="png"``).
        image_format: ``"npy"`` (uncompressed, default) or ``"png"``.
        keep_dicom_header: store the PS3.15-de-identified DICOM header beside each image (``<image>.dicom.json``).
        batch_size: files per worker task (fewer inter-process round trips).
        follow_external_links: follow symbolic links whose target lies outside their source
            (default: an ``outside_source`` row each).
        max_decoded_mb: largest decoded size of one file (voxels x channels x 4 bytes, in MiB), checked
            from its header before decoding (``too_large`` rows above it).

    Returns:
        The summary (what ``manifest-summary.json`` holds), with ``"manifest"`` (path) added.

    Raises:
        FileExistsError: ``out_dir`` holds a run and ``resume`` is false.
        ValueError: bad arguments, or a resume with another salt / other sources.
    """
    shard_t = parse_shard(shard)
    if not max_decoded_mb > 0:
        raise ValueError(f"max_decoded_mb must be a positive number of MiB, got {max_decoded_mb!r}")
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    parsed = load_rules(rules)
    pseudo = Pseudonymizer(salt)
    info: dict[str, Any] = {
        "version": _VERSION, "salt_fingerprint": pseudo.fingerprint(),
        "sources": [prefix for _p, prefix in source_prefixes(sources)], "shard": f"{shard_t[0]}/{shard_t[1]}",
        "rules": Path(parsed.source).name, "near_threshold": near_threshold, "split": list(split), "min_size": min_size,
        "follow_external_links": follow_external_links, "max_decoded_mb": max_decoded_mb,
    }
    _check_run_file(out, shard_t, info, resume)
    cfg = CurateConfig(out_dir=str(out), rules=parsed, salt=salt, shard=info["shard"], min_size=min_size,
                       redact_source_paths=redact_source_paths, png_compress_level=png_compress_level,
                       image_format=image_format, keep_dicom_header=keep_dicom_header,
                       max_decoded_bytes=int(max_decoded_mb * (1 << 20)))
    folder = _parts_dir(out, shard_t)
    done = _resume_done(folder, out, keep_dicom_header) if resume else set()
    writer = _PartWriter(folder, flush_every, flush_seconds)
    todo = (f for f in discover(sources, follow_external_links) if in_shard(f.rel, shard_t))
    elapsed = _process_all(cfg, todo, done, pseudo, writer, workers, batch_size, progress)
    return _finish_shard(folder, out, shard_t, near_threshold, split, elapsed)


def _finish_shard(folder: Path, out: Path, shard_t: tuple[int, int], near_threshold: int, split: Sequence[float],
                  elapsed: float) -> dict[str, Any]:
    """De-duplicate, split and write the shard's manifest (``manifest.*`` for a single shard); its summary."""
    name = "manifest" if shard_t[1] == 1 else f"manifest-{shard_tag(shard_t)}"
    summary = _finalize(sorted(folder.glob("part-*.parquet")), out, name, near_threshold, split)
    summary["seconds"] = round(elapsed, 2)
    if shard_t[1] > 1:
        summary["next"] = f"after all {shard_t[1]} shards finish: hicur curate merge --out {out}"
    return summary


def _resume_done(folder: Path, out: Path, keep_dicom_header: bool) -> set[str]:
    """The source ids a resumed run skips; temp files of writes a kill interrupted are removed (redone)."""
    done = _done_ids(folder, out, keep_dicom_header)
    for tmp in out.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    return done


def _process_all(cfg: CurateConfig, todo: Iterator[Found], done: set[str], pseudo: Pseudonymizer,
                 writer: _PartWriter, workers: int, batch_size: int, progress: bool) -> float:
    """Curate every file of ``todo`` not in ``done`` (here or in a pool), committing the rows through ``writer``.

    Returns:
        The seconds it took.
    """
    t0 = time.monotonic()
    counts: Counter[str] = Counter()
    bar = _progress(None, progress)

    def record(rows: list[dict[str, Any]]) -> None:
        writer.add(rows)
        counts[rows[0]["status"]] += 1
        counts["images"] += sum(1 for r in rows[1:] if r["status"] == ACCEPTED)
        bar.update(1)
        if progress:
            bar.set_postfix(accepted=counts[ACCEPTED], rejected=counts[REJECTED], images=counts["images"],
                            skipped=counts["resumed"], refresh=False)

    def pending() -> Iterator[Found]:
        for f in todo:
            if pseudo.source_id(f.rel) in done:
                counts["resumed"] += 1
                continue
            yield f

    try:
        if workers <= 1:
            init_worker(cfg)
            for f in pending():
                record(run_in_worker(f))
        else:
            _run_pool(cfg, workers, pending(), record, batch_size)
        writer.flush()
    finally:
        bar.close()
    elapsed = time.monotonic() - t0
    log.info("processed %d files (%d resumed from earlier parts) in %.1f s",
             sum(counts[s] for s in (ACCEPTED, REJECTED)), counts["resumed"], elapsed)
    return elapsed


def _preload() -> None:
    """Import the heavy modules once in the parent, so forked workers start warm."""
    import imagehash  # noqa: F401
    import monai.transforms  # noqa: F401
    import nibabel  # noqa: F401
    import PIL.PngImagePlugin  # noqa: F401
    import xxhash  # noqa: F401
    from dicomanonymizer import simpledicomanonymizer  # noqa: F401

    import hicur_monai.transforms  # noqa: F401
    from hicur_monai.data.curation.deid import _base_actions

    _base_actions()


def _batches(items: Iterator[Found], size: int) -> Iterator[list[Found]]:
    batch: list[Found] = []
    for f in items:
        batch.append(f)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _run_pool(cfg: CurateConfig, workers: int, items: Iterator[Found], record: Any, batch_size: int = 8) -> None:
    """Process ``items`` in a pool, ``batch_size`` files per task, at most ``4 x workers`` tasks in flight.

    A worker that dies (a decoder crash) breaks the pool: the files of every task in flight are
    then redone one at a time, each alone in a fresh pool, and a file that kills its worker
    again gets a ``worker_crashed`` row.
    """
    _preload()
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    limit = 4 * workers
    batches = _batches(items, max(1, batch_size))

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker, initargs=(cfg,))

    pool = new_pool()
    inflight: dict[Future, list[Found]] = {}
    retry: list[Found] = []
    exhausted = False
    try:
        while True:
            while not exhausted and not retry and len(inflight) < limit:
                batch = next(batches, None)
                if batch is None:
                    exhausted = True
                    break
                inflight[pool.submit(run_batch_in_worker, batch)] = batch
            if not inflight and retry:  # after a crash: the suspects one at a time, alone in a fresh pool
                f = retry.pop(0)
                try:
                    record(pool.submit(run_in_worker, f).result())
                except BrokenProcessPool:
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = new_pool()
                    record([_crashed_row(cfg, f)])
                continue
            if not inflight:
                break
            finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            broken = False
            for fut in finished:
                batch = inflight.pop(fut)
                try:
                    results = fut.result()
                except BrokenProcessPool:
                    broken = True
                    retry.extend(batch)
                    continue
                for rows in results:
                    record(rows)
            if broken:
                for batch in inflight.values():
                    retry.extend(batch)
                inflight.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                pool = new_pool()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _crashed_row(cfg: CurateConfig, f: Found) -> dict[str, Any]:
    pseudo = Pseudonymizer(cfg.salt)
    sid = pseudo.source_id(f.rel)
    return new_row(row_type="input", **source_columns(f.rel, sid, cfg.redact_source_paths), shard=cfg.shard,
                   status=REJECTED, reason="worker_crashed", detail="the worker process died on this file twice")


def _finalize(parts: Sequence[Path], out: Path, name: str, near_threshold: int, split: Sequence[float]
              ) -> dict[str, Any]:
    df = read_parts(parts)
    # a file can appear twice only if a part was committed twice; keep the first copy of every row
    df = df.drop_duplicates(subset=["row_type", "source_id", "slice_index"], keep="first")
    df = deduplicate(df, near_threshold)
    df = assign_splits(df, split)
    summary = summarize(df)
    paths = write_manifest(df, out, name, summary=summary)
    summary["manifest"] = str(paths["parquet"])
    summary["table"] = format_summary(summary)
    return summary


def merge(
    out_dir: str | os.PathLike,
    manifests: Sequence[str | os.PathLike] | None = None,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    split: Sequence[float] = (0.8, 0.1, 0.1),
) -> dict[str, Any]:
    """Join shard manifests into ``out_dir/manifest.*``, de-duplicating across shards.

    Args:
        out_dir: the shared output folder of the shard runs.
        manifests: shard manifests; default: every ``manifest-shard-*.parquet`` in ``out_dir``.

    Raises:
        FileNotFoundError: no shard manifest found.
        ValueError: shards of different counts, a missing shard, or runs with different salts.
    """
    import json

    out = Path(out_dir).absolute()
    files = [Path(m) for m in manifests] if manifests else sorted(out.glob("manifest-shard-*-of-*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"{out}: no manifest-shard-*.parquet to merge (run `hicur curate ... --shard i/n` first)")
    seen: dict[int, set[int]] = {}
    for f in files:
        m = re.search(r"shard-(\d+)-of-(\d+)", f.name)
        if not m:
            raise ValueError(f"{f}: not a shard manifest name (manifest-shard-IIII-of-NNNN.parquet)")
        seen.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    if len(seen) != 1:
        raise ValueError(f"shard manifests of different shard counts: {sorted(seen)}")
    (n, got), = seen.items()
    missing = sorted(set(range(n)) - got)
    if missing:
        raise ValueError(f"{out}: shards {missing} of {n} have no manifest yet; run them before merging")
    prints = set()
    for f in files:
        run = f.parent / f.name.replace("manifest-", "run-").replace(".parquet", ".json")
        if run.exists():
            prints.add(json.loads(run.read_text()).get("salt_fingerprint"))
    if len(prints) > 1:
        raise ValueError(f"{out}: the shards were curated with different salts; their pseudonyms do not match")
    summary = _finalize(files, out, "manifest", near_threshold, split)
    summary["merged_shards"] = n
    return summary
