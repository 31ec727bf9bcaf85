"""Vision-language model with a tiny random Llama, a BPE tokenizer trained here and a tiny timm ViT."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("timm")

from vlm_helpers import conversation, tiny_vlm  # noqa: E402

from hicur_monai.llm.base import GenerationConfig  # noqa: E402
from hicur_monai.llm.conversation import IGNORE_INDEX, IMAGE_TOKEN_INDEX, render_segments  # noqa: E402
from hicur_monai.networks.vlm import VisionLanguageModel  # noqa: E402

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture()
def model():
    return tiny_vlm()


def _sample(model, msgs, image=True):
    ids, labels = model.tokenize(msgs)
    return {"input_ids": ids, "labels": labels, "image": torch.randn(3, 32, 32) if image else None}


def test_label_masking_covers_only_answers(model):
    tok = model.tokenizer
    ids, labels = model.tokenize(conversation(2))
    assert len(ids) == len(labels) and ids.count(IMAGE_TOKEN_INDEX) == 1
    answer_ids = [t for t in labels if t != IGNORE_INDEX]
    text = tok.decode(answer_ids)
    assert "answer 0" in text and "answer 1" in text
    assert "question" not in text and "careful endoscopist" not in text and "<|user|>" not in text
    assert "</s>" in text  # the end-of-turn marker is learned, so generation stops
    # every unmasked label is the input id at the same position (shifting is the LLM's job)
    assert all(label == i for i, label in zip(ids, labels) if label != IGNORE_INDEX)
    # another template (ChatML with a default system prompt) splits at its own boundaries
    tok.chat_template = CHATML
    segs = render_segments(tok, conversation(1)[1:])
    assert [a for _, a in segs] == [False, True]
    assert segs[0][0].startswith("<|im_start|>system") and segs[1][0] == "answer 0: a mass with ulceration<|im_end|>\n"


def test_forward_backward_and_padding(model):
    long = _sample(model, conversation(2))
    short = _sample(model, conversation(1)[1:], image=False)
    short_img = dict(short)
    short["input_ids"] = [t for t in short["input_ids"] if t != IMAGE_TOKEN_INDEX]  # text-only variant
    short["labels"] = short["labels"][: len(short["input_ids"])]
    batch = model.collate([long, short_img | {"image": torch.randn(3, 32, 32)}])
    assert batch["input_ids"].shape[0] == 2 and batch["images"].shape == (2, 3, 32, 32)
    model.configure_training("projector")
    out = model(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["images"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
    assert all(p.grad is None for p in model.llm.parameters())
    assert all(p.grad is None for p in model.vision.parameters())
    # right padding does not change the real positions: logits of the short sample alone == in the batch
    model.eval()
    with torch.no_grad():
        both = model(batch["input_ids"], batch["attention_mask"], images=batch["images"]).logits
        alone_b = model.collate([short_img | {"image": batch["images"][1]}])
        alone = model(alone_b["input_ids"], alone_b["attention_mask"], images=alone_b["images"]).logits
    torch.testing.assert_close(both[1, : alone.shape[1]], alone[0], atol=1e-5, rtol=1e-4)
    # placeholders and images must match
    with pytest.raises(ValueError, match="placeholder"):
        model(batch["input_ids"], batch["attention_mask"], images=batch["images"][:1])


def _step(model, batch, params, lr=1e-2):
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    out = model(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["images"])
    out.loss.backward()
    opt.step()


def _changed(before, model):
    now = dict(model.named_parameters())
    return {n for n, p in before.items() if not torch.equal(p, now[n].detach())}


def test_projector_step_changes_only_projector(model):
    batch = model.collate([_sample(model, conversation(2)), _sample(model, conversation(1))])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = model.configure_training("projector")
    assert {id(p) for p in params} == {id(p) for p in model.projector.parameters()}
    _step(model, batch, params)
    changed = _changed(before, model)
    assert changed == {n for n in before if n.startswith("projector.")}


def test_lora_step_changes_only_adapters(model):
    batch = model.collate([_sample(model, conversation(2)), _sample(model, conversation(1))])
    params = model.configure_training("lora", lora={"r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                                                    "target_modules": ["q_proj", "v_proj"]}, tune_projector=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(2):  # LoRA's B starts at zero: the second step moves A too
        _step(model, batch, params)
    changed = _changed(before, model)
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)
    assert not any(n.startswith(("projector.", "vision.")) for n in changed)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_save_load_round_trip_identical(model, tmp_path, mode):
    batch = model.collate([_sample(model, conversation(2)), _sample(model, conversation(1))])
    params = model.configure_training(mode, lora={"r": 4, "lora_alpha": 8, "lora_dropout": 0.0})
    for _ in range(2):
        _step(model, batch, params)
    model.eval()
    img = torch.randn(3, 32, 32)
    cfg = GenerationConfig(max_new_tokens=8)
    with torch.no_grad():
        ref = model(batch["input_ids"], batch["attention_mask"], images=batch["images"]).logits
    ref_text = model.chat(img, "is there a mass", config=cfg)
    path = model.save_pretrained(tmp_path / "vlm")
    assert (path / "vlm_config.json").is_file() and (path / "projector.pt").is_file()
    assert (path / "adapter").is_dir() == (mode == "lora") and (path / "llm").is_dir()  # random base is saved
    loaded = VisionLanguageModel.from_pretrained(path)
    with torch.no_grad():
        again = loaded(batch["input_ids"], batch["attention_mask"], images=batch["images"]).logits
    torch.testing.assert_close(again, ref, atol=1e-5, rtol=1e-5)
    assert loaded.chat(img, "is there a mass", config=cfg) == ref_text
    # saving again over the same folder keeps it loadable (atomic folder swap)
    loaded.save_pretrained(path)
    assert VisionLanguageModel.from_pretrained(path).mode == mode


def test_generation_with_and_without_image(model):
    model.eval()
    img = torch.randn(3, 32, 32)
    cfg = GenerationConfig(max_new_tokens=6)
    a = model.chat(img, "what do you see", config=cfg)
    b = model.chat(img, "what do you see", config=cfg)
    c = model.chat(None, "what do you see", config=cfg)
    assert isinstance(a, str) and a == b and isinstance(c, str)
    short = model.chat(img, "what do you see", config=GenerationConfig(max_new_tokens=2))
    assert a.startswith(short) and len(short) < len(a)  # greedy: fewer new tokens give a prefix
    multi = model.chat(img, "and the right wall?", history=[("what do you see", a)], config=cfg)
    assert isinstance(multi, str)
    sampled = model.chat(img, "what do you see", config=GenerationConfig(max_new_tokens=6, temperature=0.9, seed=1))
    assert isinstance(sampled, str) and isinstance(model.report(img, cfg), str)
    with pytest.raises(ValueError, match="no image"):
        model.generate([{"role": "user", "content": "<image>\nwhat"}], None, cfg)
