"""Coarse features for Stage III (fixed shape, blend, masks) and the ``vlm_coarse`` text encoder."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("timm")

from vlm_helpers import tiny_vlm  # noqa: E402

from hicur_monai.registry import create  # noqa: E402
from hicur_monai.vlm.coarse import coarse_features  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tiny_vlm().eval()


def test_shapes_padding_and_truncation(model):
    imgs = torch.randn(2, 3, 32, 32)
    states, mask = coarse_features(model, imgs, length=128)
    assert states.shape == (2, 128, 32) and mask.shape == (2, 128) and mask.dtype == torch.bool
    n = int(mask[0].sum())
    assert 5 < n < 128  # 5 image tokens + the instruction, then padding
    assert torch.all(states[:, n:] == 0) and torch.all(mask[:, :n]) and not mask[:, n:].any()
    assert torch.isfinite(states).all()
    # different images give different states; the same image the same states
    assert not torch.allclose(states[0, :n], states[1, :n])
    again, _ = coarse_features(model, imgs[:1], length=128)
    torch.testing.assert_close(again[0], states[0])
    # truncation keeps the last positions, which equal the tail of the untruncated sequence
    short, smask = coarse_features(model, imgs, length=8)
    assert short.shape == (2, 8, 32) and smask.all()
    torch.testing.assert_close(short[0], states[0, n - 8: n])


def test_blend_is_the_original_weighting(model):
    imgs = torch.randn(1, 3, 32, 32)
    last, mask = coarse_features(model, imgs, length=64, blend="last")
    mixed, _ = coarse_features(model, imgs, length=64, blend="0.3/0.7")
    assert not torch.allclose(last[mask], mixed[mask])
    with pytest.raises(ValueError, match="blend"):
        coarse_features(model, imgs, blend="mean")


def test_registered_encoder_images_and_texts(model, tmp_path):
    enc = create("text_encoders", "vlm_coarse", model=model, length=400, device="cpu")
    assert enc.dim == 32
    states, mask = enc.encode(["Male, 52, T3N1M0 nasopharyngeal carcinoma, EBV DNA 5000 copies/ml.",
                               torch.randn(3, 32, 32)])
    assert states.shape == (2, 400, 32) and mask.shape == (2, 400)
    text = "Male, 52, T3N1M0 nasopharyngeal carcinoma, EBV DNA 5000 copies/ml."
    direct, dmask = coarse_features(model, None, [text], length=400)
    torch.testing.assert_close(states[0], direct[0])  # a text is encoded without image tokens
    assert torch.equal(mask[0], dmask[0]) and 0 < int(mask[1].sum()) < 400
    # a saved model loads by path and gives the same states
    model.save_pretrained(tmp_path / "vlm")
    enc2 = create("text_encoders", "vlm_coarse", model=str(tmp_path / "vlm"), length=400, device="cpu")
    s2, m2 = enc2.encode(["Male, 52, T3N1M0 nasopharyngeal carcinoma, EBV DNA 5000 copies/ml."])
    torch.testing.assert_close(s2[0], states[0])
    # tensors from another pipeline (a 1-channel 48 px slice) are fitted to the tower's 32 px
    s3, m3 = enc.encode(torch.randn(2, 1, 48, 48))
    assert s3.shape == (2, 400, 32) and torch.isfinite(s3).all()
    with pytest.raises(FileNotFoundError, match="missing.png"):
        enc.encode([str(tmp_path / "missing.png")])


def test_encoder_loaded_from_a_lora_folder_merges_the_adapter_and_keeps_the_states(tmp_path):
    from peft import PeftModel

    from hicur_monai.networks.vlm import VisionLanguageModel
    from hicur_monai.vlm.coarse import VLMCoarseEncoder

    torch.manual_seed(0)
    vlm = tiny_vlm()
    vlm.configure_training("lora", lora={"r": 4, "target_modules": ["q_proj", "v_proj"]})
    for name, p in vlm.llm.named_parameters():
        if "lora_B" in name:  # a trained adapter (peft starts B at zero, which would hide a wrong merge)
            torch.nn.init.normal_(p, std=0.5)
    folder = vlm.eval().save_pretrained(tmp_path / "lora_vlm")
    unmerged = VisionLanguageModel.from_pretrained(folder)
    assert isinstance(unmerged.llm, PeftModel)
    images = torch.randn(2, 3, unmerged.image_size, unmerged.image_size)
    ref, ref_mask = coarse_features(unmerged, images, length=8)
    enc = VLMCoarseEncoder(str(folder), length=8)
    assert not isinstance(enc.model.llm, PeftModel)  # the adapter is folded in
    states, mask = enc.encode(list(images))
    assert torch.equal(mask, ref_mask) and torch.allclose(states, ref, atol=1e-4)
    resaved = VisionLanguageModel.from_pretrained(enc.model.save_pretrained(tmp_path / "merged"))
    assert torch.allclose(coarse_features(resaved, images, length=8)[0], ref, atol=1e-4)  # saving it loses nothing
    with unmerged.llm.disable_adapter():  # and the adapter matters: without it the states differ
        assert not torch.allclose(coarse_features(unmerged, images, length=8)[0], ref, atol=1e-4)


REPORT = "Mass of the left lateral wall and fossa of Rosenmuller, extending to the parapharyngeal space."


def test_a_shared_report_runs_once_and_gives_the_states_of_each_item_run_whole(model, monkeypatch):
    imgs = torch.randn(3, 3, 32, 32)
    calls = []
    forward = model.llm.forward

    def spy(*args, **kwargs):
        calls.append(tuple(kwargs["inputs_embeds"].shape[:2]))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.llm, "forward", spy)
    batched, bmask = coarse_features(model, imgs, length=256, blend="0.3/0.7", context=REPORT)
    (one, prefix), (three, rest) = calls
    n = int(bmask[0].sum())
    assert (one, three) == (1, 3) and prefix + rest == n and prefix > len(REPORT.split())  # header + report, once
    for i in range(3):  # a batch of one has no shared prefix: the item runs whole
        whole, wmask = coarse_features(model, imgs[i: i + 1], length=256, blend="0.3/0.7", context=REPORT)
        assert torch.equal(wmask[0], bmask[i])
        torch.testing.assert_close(batched[i], whole[0], atol=1e-4, rtol=1e-4)
    assert len(calls) == 5
    plain, pmask = coarse_features(model, imgs, length=8, context=None)
    assert not torch.allclose(plain, batched[:, n - 8: n], atol=1e-3)  # the report changes the kept states


def test_items_with_different_reports_share_only_the_chat_header(model):
    from hicur_monai.llm.conversation import IMAGE_TOKEN_INDEX
    from hicur_monai.vlm.coarse import shared_prefix

    imgs = torch.randn(2, 3, 32, 32)
    reports = [REPORT, "No mass; the nasopharynx is normal."]
    batched, bmask = coarse_features(model, imgs, length=256, context=reports)
    for i in range(2):
        whole, wmask = coarse_features(model, imgs[i: i + 1], length=256, context=reports[i])
        assert torch.equal(wmask[0], bmask[i])
        torch.testing.assert_close(batched[i], whole[0], atol=1e-4, rtol=1e-4)
    ids = torch.tensor([[5, 6, IMAGE_TOKEN_INDEX, 7, 8], [5, 6, IMAGE_TOKEN_INDEX, 7, 8]])
    assert shared_prefix(ids, torch.ones_like(ids)) == 2  # stops before the image
    assert shared_prefix(torch.tensor([[5, 6, 7], [5, 9, 7]]), torch.ones(2, 3)) == 1
    assert shared_prefix(torch.tensor([[5, 6, 7], [5, 6, 7]]), torch.tensor([[1, 1, 1], [1, 1, 0]])) == 1
    assert shared_prefix(ids[:1], torch.ones(1, 5)) == 0  # one item: nothing to share
    with pytest.raises(ValueError, match="2 images but 3 contexts"):
        coarse_features(model, imgs, context=reports + ["x"])


def test_a_report_too_long_for_max_length_gives_way_not_the_image(caplog):
    short = tiny_vlm(max_length=96).eval()
    img = torch.randn(1, 3, 32, 32)
    long_report = " ".join([REPORT] * 20)
    with caplog.at_level("WARNING", logger="hicur_monai.vlm.coarse"):
        states, mask = coarse_features(short, img, length=64, context=long_report)
    assert "is cut to" in caplog.text and 0 < int(mask.sum()) <= 96
    n = int(mask.sum())
    instruction_only, _ = coarse_features(short, img, length=8)
    assert torch.isfinite(states).all() and not torch.allclose(states[0, n - 8: n], instruction_only[0])  # still read
