"""Causal-LM plugins for the VLM, LLaVA turn conversion and the question-file reader."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from hicur_monai.llm.causal_lm import CausalLM, load_causal_lm  # noqa: E402
from hicur_monai.llm.conversation import from_llava  # noqa: E402
from hicur_monai.registry import names  # noqa: E402
from hicur_monai.vlm.generate import read_questions  # noqa: E402


def test_backends_registered_and_folder_round_trip(tmp_path):
    assert {"hf_causal_lm", "gguf", "smollm2", "tiny_random"} <= set(names("llm_backends"))
    lm = load_causal_lm("tiny_random", hidden_size=32, num_hidden_layers=1, vocab_size=300)
    assert isinstance(lm, CausalLM) and lm.hidden_size == 32 and lm.spec["in_memory"]
    lm.save_pretrained(tmp_path / "m")
    again = load_causal_lm("hf_causal_lm", path=str(tmp_path / "m"))
    assert again.tokenizer.chat_template == lm.tokenizer.chat_template
    assert again.spec["backend"] == "hf_causal_lm" and not again.spec.get("in_memory")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_causal_lm("hf_causal_lm", path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        load_causal_lm("gguf", path=str(tmp_path / "nope.gguf"))
    with pytest.raises(TypeError, match="not a CausalLM"):
        load_causal_lm("rule")


def test_llava_turns_and_errors():
    msgs = from_llava([{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}])
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    with pytest.raises(ValueError, match=r"conv\[1\]\['from'\]"):
        from_llava([{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}], where="conv")
    with pytest.raises(ValueError, match=r"\[0\]\['value'\]"):
        from_llava([{"from": "human", "value": ""}])


def test_questions_in_both_formats(tmp_path):
    a = tmp_path / "eval_conversation.jsonl"
    a.write_text(json.dumps({"question_id": "p1_conv1", "text": "and the roof?", "image": "p1.png",
                             "category": "conversation", "history": [{"question": "mass?", "answer": "no"}]}) + "\n")
    b = tmp_path / "items.jsonl"
    b.write_text(json.dumps({"item_id": "i1", "question": "describe", "image": "p2.png", "kind": "detailed"}) + "\n")
    qs = read_questions([a, b])
    assert [q["item_id"] for q in qs] == ["p1_conv1", "i1"] and qs[0]["history"] == [("mass?", "no")]
    assert qs[1]["kind"] == "detailed"
    with pytest.raises(ValueError, match="duplicate item id"):
        read_questions([b, b])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"item_id": "x"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl record 1: missing 'question'"):
        read_questions(bad)
