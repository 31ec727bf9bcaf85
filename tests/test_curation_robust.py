"""hicur curate under bad input, a kill -9 and a resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from curation_helpers import SALT, endoscopy_frame, small_corpus, write_rules, write_volume
from PIL import Image

from hicur_monai.data.curation import curate

REPO = Path(__file__).resolve().parents[1]

BAD_RULES = """\
version: 1
rules:
  - glob: "*.nii.gz"
    modality: mri
    sequence: T2
"""


def _bad_corpus(root: Path) -> tuple[Path, dict[str, str]]:
    """Every kind of bad input the issue names, with the reason each must get."""
    from pydicom.data import get_testdata_file

    src = root / "bad"
    src.mkdir(parents=True)
    expect: dict[str, str] = {}
    (src / "zero.png").write_bytes(b"")
    expect["zero.png"] = "empty_file"
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (src / "truncated.dcm").write_bytes(ct[: int(len(ct) * 0.6)])
    expect["truncated.dcm"] = "truncated"
    shutil.copy(get_testdata_file("rtplan.dcm"), src / "plan.dcm")
    expect["plan.dcm"] = "no_pixel_data"
    Image.fromarray(endoscopy_frame(3)).save(src / "photo.png", format="JPEG")  # a JPEG named .png: fine
    expect["photo.png"] = ""
    vol = np.random.default_rng(0).random((40, 40, 8)).astype(np.float32)
    vol[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), src / "nan.nii.gz")
    expect["nan.nii.gz"] = "non_finite"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(src / "tiny.png")
    expect["tiny.png"] = "too_small"
    nib.save(nib.Nifti1Image(np.random.default_rng(1).random((40, 40, 8, 3)).astype(np.float32), np.eye(4)),
             src / "fourd.nii.gz")
    expect["fourd.nii.gz"] = "wrong_dimensionality"
    (src / "sub").mkdir()
    os.symlink("..", src / "sub" / "loop")
    expect["sub/loop"] = "directory_loop"
    os.symlink("nowhere.png", src / "dangling.png")
    expect["dangling.png"] = "broken_symlink"
    Image.fromarray(endoscopy_frame(4)).save(src / "secret.png")
    os.chmod(src / "secret.png", 0)
    expect["secret.png"] = "permission_denied"
    (src / "notes.txt").write_text("not an image")
    expect["notes.txt"] = "not_an_image"
    Image.fromarray(np.full((64, 64, 3), 17, np.uint8)).save(src / "flat.png")
    expect["flat.png"] = "constant_image"
    Image.fromarray((np.random.default_rng(2).random((64, 64)) * 255).astype(np.uint8)).save(src / "grey.png")
    expect["grey.png"] = "unknown_modality"
    return src, {f"bad/{k}": v for k, v in expect.items()}


def _as_unprivileged(fn) -> None:
    """Run ``fn`` where a mode-000 file is really unreadable: as root, in a forked child as ``nobody``.

    The child inherits the imported modules (no interpreter start-up), like the curation workers.
    """
    if os.geteuid() != 0:
        fn()
        return
    from hicur_monai.data.curation.pipeline import _preload

    _preload()  # everything the run imports lazily, imported while still root
    import concurrent.futures.process  # noqa: F401
    import multiprocessing.popen_fork  # noqa: F401

    import nrrd  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import tqdm.auto  # noqa: F401

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            fn()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the unprivileged curation run failed (see captured stderr)"


def test_bad_input_corpus(capfd: pytest.CaptureFixture) -> None:
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="hicur-bad-"))  # world-traversable, unlike pytest's tmp folders
    try:
        os.chmod(work, 0o755)
        src, expect = _bad_corpus(work)
        rules = write_rules(work / "rules.yaml", BAD_RULES)
        out = work / "out"
        out.mkdir()
        os.chmod(out, 0o777)
        _as_unprivileged(lambda: curate([src], out, salt=SALT, rules=rules, workers=2, progress=False))
        df = pd.read_parquet(out / "manifest.parquet")
        inputs = df[df.row_type == "input"].set_index("source_path")
        got = {k: (inputs.loc[k, "status"], inputs.loc[k, "reason"]) for k in expect if k in inputs.index}
        assert set(got) == set(expect), f"missing rows: {set(expect) - set(got)}"
        for k, reason in expect.items():
            status, r = got[k]
            assert (status, r) == (("accepted", "") if not reason else ("rejected", reason)), (k, status, r)
        assert inputs.loc["bad/photo.png", "format"] == "jpeg"
        assert len(inputs) == len(expect)  # one row per path, nothing else
        # the absolute source location appears nowhere (rows, messages, logs)
        captured = capfd.readouterr()
        assert str(src) not in (out / "manifest.csv").read_text() + captured.out + captured.err
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _corpus_for_kill(root: Path) -> Path:
    src = root / "src"
    for i in range(24):
        d = src / f"p{i:03d}"
        d.mkdir(parents=True)
        Image.fromarray(endoscopy_frame(100 + i, size=120)).save(d / "frame.png")
    for j in range(2):
        write_volume(src / "mri" / f"c{j}" / "T2.nii.gz", seed=j, shape=(64, 64, 16))
    return src


RULES = """\
version: 1
rules:
  - glob: "*/mask.nii.gz"
    exclude: mask
  - regex: "mri/(?P<patient>[^/]+)/T2\\\\.nii\\\\.gz$"
    modality: mri
    sequence: T2
  - regex: "src/(?P<patient>p\\\\d+)/"
    modality: endoscopy
"""


def _wait_until_group_gone(pgid: int) -> None:
    """Wait until no live process is left in process group ``pgid`` (Linux ``/proc``; zombies are dead).

    SIGKILLed worker processes of the killed run must be gone before the resume starts, or one of
    them could still finish an image write. Fails (never passes) when one outlives a minute.
    """
    def alive() -> list[int]:
        pids = []
        for d in Path("/proc").iterdir():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(d.name))
        return pids

    for _ in range(1200):
        if not alive():
            return
        time.sleep(0.05)
    raise AssertionError(f"processes {alive()} of the killed run still alive after a minute")


@pytest.mark.slow
def test_kill9_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    """A run SIGKILLed (with its workers) right after its 3rd part file, then resumed, gives the manifest of an
    uninterrupted run; no temporary file is left, committed images are not written again, and every image on
    disk is listed once. The kill point is the test hook ``KILL_AFTER_PARTS_ENV`` (not a race with a timer)."""
    from hicur_monai.data.curation.manifest import read_parts
    from hicur_monai.data.curation.pipeline import KILL_AFTER_PARTS_ENV

    src = _corpus_for_kill(tmp_path)
    rules = write_rules(tmp_path / "rules.yaml", RULES)
    killed = tmp_path / "killed"
    code = (f"from hicur_monai.data.curation import curate; "
            f"curate([{str(src)!r}], {str(killed)!r}, salt={SALT!r}, rules={str(rules)!r}, workers=2, "
            f"progress=False, flush_every=3, flush_seconds=3600)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, start_new_session=True,
                            env={**os.environ, KILL_AFTER_PARTS_ENV: "3"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.wait(timeout=300) == -signal.SIGKILL
    _wait_until_group_gone(proc.pid)
    parts = killed / "parts" / "shard-0000-of-0001"
    committed = sorted(parts.glob("part-*.parquet"))
    assert len(committed) == 3 and not (killed / "manifest.parquet").exists()
    before = read_parts(committed)
    kept = {p: (killed / p).stat().st_ino for p in before.loc[before.output_path != "", "output_path"]}
    assert len(set(before.loc[before.row_type == "input", "source_id"])) == 9  # 3 parts x flush_every files
    with pytest.raises(FileExistsError, match="--resume"):
        curate([src], killed, salt=SALT, rules=rules, workers=1, progress=False)
    summary = curate([src], killed, salt=SALT, rules=rules, workers=2, resume=True, progress=False)
    ref = tmp_path / "ref"
    curate([src], ref, salt=SALT, rules=rules, workers=1, progress=False)
    a = pd.read_parquet(ref / "manifest.parquet")
    b = pd.read_parquet(killed / "manifest.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert b[b.row_type == "input"].source_id.is_unique and summary["inputs"]["total"] == 24 + 4
    assert not list(killed.rglob(".*.tmp"))
    assert {p: (killed / p).stat().st_ino for p in kept} == kept  # committed images were not rewritten
    listed = b.loc[b.row_type == "image", "output_path"]
    listed = listed[listed != ""]
    written = {p.relative_to(killed).as_posix() for p in (killed / "images").rglob("*.npy")}
    assert listed.is_unique and written == set(listed)


def test_worker_crash_is_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that kills its worker process (a decoder segfault) is retried alone, then rejected."""
    import hicur_monai.data.curation.process as proc

    src = tmp_path / "src"
    for i in range(5):
        (src / f"p{i}").mkdir(parents=True)
        Image.fromarray(endoscopy_frame(i, size=64)).save(src / f"p{i}" / "frame.png")
    Image.fromarray(endoscopy_frame(9, size=64)).save(src / "p0" / "crash.png")
    real = proc.process_file

    def crashing(found, st):  # the forked workers inherit this patch
        if found.rel.endswith("crash.png"):
            os._exit(3)
        return real(found, st)

    monkeypatch.setattr(proc, "process_file", crashing)
    out = tmp_path / "out"
    curate([src], out, salt=SALT, workers=2, progress=False)
    inputs = pd.read_parquet(out / "manifest.parquet").query("row_type == 'input'").set_index("source_path")
    assert inputs.loc["src/p0/crash.png", "reason"] == "worker_crashed"
    others = inputs.drop(index="src/p0/crash.png")
    assert len(others) == 5 and (others.status == "accepted").all()


def test_resume_redoes_committed_files_whose_images_are_missing_or_short(tmp_path: Path) -> None:
    """Images are not fsynced one by one: after a power cut a committed part can list an image that is
    missing or empty. --resume re-checks every committed image and redoes those files; the manifest and
    the images then equal the uninterrupted run's."""
    src = small_corpus(tmp_path, n_frames=3, n_volumes=1)
    rules = write_rules(tmp_path / "rules.yaml")
    out = tmp_path / "out"
    curate([src], out, salt=SALT, rules=rules, workers=1, progress=False)
    before = pd.read_parquet(out / "manifest.parquet")
    img = before[(before.row_type == "image") & (before.output_path != "")]
    gone, empty, short = (out / p for p in img.output_path.iloc[[0, 1, -1]])
    originals = {p: p.read_bytes() for p in (gone, empty, short)}
    gone.unlink()
    empty.write_bytes(b"")
    short.write_bytes(originals[short][: len(originals[short]) // 3])
    curate([src], out, salt=SALT, rules=rules, workers=1, resume=True, progress=False)
    pd.testing.assert_frame_equal(before, pd.read_parquet(out / "manifest.parquet"))
    for p, data in originals.items():
        assert p.read_bytes() == data, p
