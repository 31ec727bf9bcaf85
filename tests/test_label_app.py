"""MONAI Label app: export, and (with the `make label` environment) a real server on 127.0.0.1.

The server test needs ``.venv-label`` (``make label``): MONAI Label pins numpy < 2 and an
older pydicom, so it cannot share the main environment. Without it the test is skipped
(it fails instead where ``HICUR_REQUIRE_LABEL`` is set, as ``.ci/run`` does).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LABEL_VENV = Path(os.environ.get("HICUR_LABEL_VENV", REPO / ".venv-label"))
MONAILABEL = LABEL_VENV / "bin" / "monailabel"


@pytest.fixture(autouse=True)
def _at_repo_root(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)


def _tiny_model(path: Path) -> Path:
    from hicur_monai.networks.fusion_seg import FusionSegNet

    torch.manual_seed(0)
    net = FusionSegNet(preset="tiny", text_dim=64)
    torch.nn.init.constant_(net.head.conv.conv.bias, 5.0)  # a non-empty mask from random weights
    torch.save(net.state_dict(), path)
    return path


def test_export_is_self_contained(tmp_path):
    from hicur_monai.label import export_label_app, parse_overrides

    app = export_label_app(tmp_path / "app", model=_tiny_model(tmp_path / "m.pt"),
                           overrides=parse_overrides(["preset=tiny", "img_size=64"]))
    bundle = app / "model" / "npc_segmentation"
    assert (app / "main.py").is_file() and (bundle / "models" / "model.pt").is_file()
    for name in ("inference.json", "train.json"):
        text = (bundle / "configs" / name).read_text()
        assert "%transforms/" not in text  # macros inlined: MONAI Label reads only the bundle folder
        cfg = json.loads(text)
        assert cfg["preset"] == "tiny" and cfg["img_size"] == 64
    assert json.loads((bundle / "configs" / "train.json").read_text())["train"]["dataset"]["data"] == "@train#items"
    with pytest.raises(FileNotFoundError):
        export_label_app(tmp_path / "app2", model=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["oops"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, method: str = "GET", timeout: float = 300) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.mark.slow
def test_server_infers_a_demo_volume_in_its_geometry(demo_cohort, tmp_path):
    from hicur_monai.label import export_label_app

    if not MONAILABEL.exists():
        msg = f"MONAI Label environment not found at {LABEL_VENV} (create it with `make label`; `make test` does)"
        if os.environ.get("HICUR_REQUIRE_LABEL"):  # set by .ci/run: CI must run this test, not skip it
            pytest.fail(msg)
        pytest.skip(msg)

    app = export_label_app(tmp_path / "app", model=_tiny_model(tmp_path / "m.pt"), overrides={"preset": "tiny", "img_size": 64})
    studies = tmp_path / "studies"
    studies.mkdir()
    src = next((demo_cohort / "mri").glob("*/T1C.nii.gz"))
    shutil.copyfile(src, studies / "study1.nii.gz")
    (studies / "broken.nii.gz").write_bytes(b"not an image")
    port = _free_port()
    env = dict(os.environ, PATH=f"{LABEL_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [str(MONAILABEL), "start_server", "--app", str(app), "--studies", str(studies), "--host", "127.0.0.1",
         "--port", str(port), "--conf", "zoo_source", "github", "--conf", "sam2", "false"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                code, body = _request(base + "/info/", timeout=5)
                if code == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                pytest.fail(f"server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(2)
        info = json.loads(body)
        assert "npc_segmentation" in info["models"]
        code, data = _request(base + "/infer/npc_segmentation?image=study1&output=image", method="POST")
        assert code == 200, data[:500]
        out = tmp_path / "mask.nii.gz"
        out.write_bytes(data)
        mask, ref = nib.load(out), nib.load(src)
        assert mask.shape == ref.shape
        np.testing.assert_allclose(mask.affine, ref.affine, atol=1e-4)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
        # bad requests: a 4xx with a message, and the server keeps serving
        code, data = _request(base + "/infer/npc_segmentation?image=broken&output=image", method="POST")
        assert 400 <= code < 500 and b"cannot be read" in data
        code, data = _request(base + "/infer/npc_segmentation?image=no_such_study", method="POST")
        assert 400 <= code < 500 and b"not in the studies folder" in data
        assert _request(base + "/info/", timeout=10)[0] == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
