"""Local transformers backend with a tiny random Llama and a BPE tokenizer trained here."""

from __future__ import annotations

import pytest

from hicur_monai.llm import ChatModelError, GenerationConfig, load_chat_model
from hicur_monai.llm.teacher import ChatTeacher, make_teacher

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = ["the left wall is congested", "no mass on the roof", "posterior wall smooth",
              "swelling and secretion", "impression: nasopharyngitis"] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>", pad_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                                   pad_token_id=fast.pad_token_id)
    model = transformers.LlamaForCausalLM(cfg)
    d = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(d)
    fast.save_pretrained(d)
    return d


def test_chat_template_and_generation(tiny_model_dir):
    m = load_chat_model("transformers", path=str(tiny_model_dir), device="cpu")
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "is the roof smooth"}]
    ids, _ = m.prompt_ids(msgs)
    text = m.tokenizer.decode(ids[0])
    assert "<|system|>" in text and "<|user|>" in text and text.rstrip().endswith("<|assistant|>")
    cfg = GenerationConfig(max_new_tokens=6, temperature=0.0)
    a, b = m(msgs, cfg), m(msgs, cfg)
    assert isinstance(a, str) and a == b  # greedy decoding is deterministic
    shorter = m(msgs, GenerationConfig(max_new_tokens=3, temperature=0.0))
    assert a.startswith(shorter) and len(shorter) < len(a)  # greedy: 3 new tokens are a prefix of 6


def test_random_model_output_is_a_recorded_teacher_failure(tiny_model_dir):
    """A model that cannot write JSON yields a failure with its raw text, after the retries."""
    teacher = make_teacher(f"local:{tiny_model_dir}", device="cpu", max_attempts=2,
                           config=GenerationConfig(max_new_tokens=8))
    assert isinstance(teacher, ChatTeacher) and teacher.name == f"transformers:{tiny_model_dir.name}"
    result = teacher.generate("Left wall congested.\nImpression: nasopharyngitis.", 3)
    assert not result.ok and result.reason == "json"
    assert len(result.attempts) == 2 and all(isinstance(a["raw"], str) for a in result.attempts)


def test_missing_folder_and_template(tmp_path, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_chat_model("transformers", path=str(tmp_path))
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="chat template"):
        load_chat_model("transformers", path=str(tiny_model_dir), model=model, tokenizer=tok)
    assert ChatModelError  # the error type generation failures are wrapped in
