"""A segmentation checkpoint carries its network configuration and the encoder file's checksum.

Issue 19: evaluate.json failed with hundreds of "size mismatch" lines on a demo-trained (tiny) model
unless demo.json was added; re-training HCMAE silently changed what a hand-off points at.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from timm.models.convnext import ConvNeXt

from hicur_monai.networks.fusion_seg import FusionSegNet, load_trained_network, trained_input_size
from hicur_monai.utils.checksum import SourceChangedWarning, check_recorded_checksum, sha256_file


def test_sha256_file_and_recorded_check(tmp_path, recwarn):
    f = tmp_path / "w.pt"
    f.write_bytes(b"weights v1")
    digest = sha256_file(f)
    assert digest == hashlib.sha256(b"weights v1").hexdigest()
    check_recorded_checksum(f, digest, "encoder")  # unchanged: silent
    check_recorded_checksum(None, None, "encoder")  # nothing recorded: silent
    assert not [w for w in recwarn if issubclass(w.category, SourceChangedWarning)]
    f.write_bytes(b"weights v2")
    with pytest.warns(SourceChangedWarning, match="has changed since"):
        check_recorded_checksum(f, digest, "encoder")
    f.unlink()
    with pytest.warns(SourceChangedWarning, match="no longer exists"):
        check_recorded_checksum(f, digest, "encoder")
    with pytest.raises(FileNotFoundError, match="w.pt"):
        sha256_file(f)


def test_checkpoint_rebuilds_its_own_network(tmp_path):
    trained = FusionSegNet(preset="tiny", text_dim=32, norm_name="batch", extra={"img_size": 64})
    path = tmp_path / "model.pt"
    torch.save(trained.state_dict(), path)
    other = FusionSegNet(preset="tiny", text_dim=16)  # what a command line without the demo overrides builds
    with pytest.raises(ValueError, match="text_dim: checkpoint 32, network 16"):
        other.load_state_dict(torch.load(path, weights_only=True))
    net = load_trained_network(path, other)
    assert net is not other and net.config.text_dim == 32 and net.config.norm_name == "batch"
    assert trained_input_size(net, 256) == 64 and trained_input_size(torch.nn.Linear(1, 1), 256) == 256
    for a, b in zip(net.state_dict().values(), trained.state_dict().values()):
        assert not isinstance(a, torch.Tensor) or torch.equal(a, b)
    same = FusionSegNet(preset="tiny", text_dim=32, norm_name="batch")
    assert load_trained_network(path, same) is same  # the same shape: loaded in place


def test_checkpoint_without_recorded_config_still_loads(tmp_path):
    net = FusionSegNet(preset="tiny", text_dim=8)
    state = {k: v for k, v in net.state_dict().items() if k != "_extra_state"}
    FusionSegNet(preset="tiny", text_dim=8).load_state_dict(state)
    with pytest.raises(ValueError, match="records no FusionSegNet configuration"):
        FusionSegNet.from_state(state)
    with pytest.raises(FileNotFoundError, match="no trained model"):
        load_trained_network(tmp_path / "missing.pt", net)


def _encoder_file(tmp_path, seed: int):
    torch.manual_seed(seed)
    kwargs = {"in_chans": 3, "depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128], "use_grn": True,
              "ls_init_value": None, "conv_mlp": False, "num_classes": 0}
    path = tmp_path / "convnext_encoder.pt"
    torch.save(ConvNeXt(**kwargs).state_dict(), path)
    (tmp_path / "convnext_encoder.json").write_text(json.dumps({"class": "timm.models.convnext.ConvNeXt",
                                                                "kwargs": kwargs}))
    return path


def test_encoder_checksum_recorded_and_checked(tmp_path, recwarn):
    enc = _encoder_file(tmp_path, seed=0)
    net = FusionSegNet(preset="tiny", text_dim=8, encoder_weights=str(enc))
    state = net.state_dict()
    source = state["_extra_state"]["encoder_source"]
    assert source["sha256"] == sha256_file(enc) and source["path"] == str(enc.resolve())
    ckpt = tmp_path / "model.pt"
    torch.save(state, ckpt)
    FusionSegNet.from_state(torch.load(ckpt, weights_only=True))  # unchanged encoder: no warning
    assert not [w for w in recwarn if issubclass(w.category, SourceChangedWarning)]
    _encoder_file(tmp_path, seed=1)  # HCMAE re-trained: the file at that path changed
    with pytest.warns(SourceChangedWarning, match="encoder_weights.*has changed since"):
        rebuilt = FusionSegNet.from_state(torch.load(ckpt, weights_only=True))
    assert torch.equal(rebuilt.encoder.stem[0].weight, net.encoder.stem[0].weight)  # the trained weights kept
    enc.unlink()  # the checkpoint alone still builds the network (the encoder's structure is recorded)
    with pytest.warns(SourceChangedWarning, match="no longer exists"):
        FusionSegNet.from_state(torch.load(ckpt, weights_only=True))
