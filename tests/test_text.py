import pytest
import torch
from transformers import AutoTokenizer, BertTokenizer, T5Config, T5EncoderModel

from miro.models.text import HFTextEncoder, MiniLMTextEncoder, WordTextEncoder, minilm_model_dir

CAPTIONS = ["a red circle on the left", "a small blue square", ""]


@pytest.fixture(scope="module")
def bert_tokenizer():
    return AutoTokenizer.from_pretrained(minilm_model_dir())


@pytest.fixture(scope="module")
def tiny_t5(bert_tokenizer):
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(bert_tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    return HFTextEncoder(max_length=6, model=T5EncoderModel(config), tokenizer=bert_tokenizer)


def test_hf_encoder_shapes_mask_and_zeroed_padding(tiny_t5, bert_tokenizer):
    tokens, mask = tiny_t5(CAPTIONS)
    expected = bert_tokenizer(CAPTIONS, padding="longest", truncation=True, max_length=6)["attention_mask"]
    assert tiny_t5.dim == 32 and tiny_t5.max_length == 6
    assert tokens.shape == (3, 6, 32) and mask.dtype == torch.bool
    assert mask.tolist() == [[bool(v) for v in row] for row in expected]
    assert mask.sum(1).tolist() == [6, 6, 2]  # truncated, truncated, [CLS] [SEP]
    assert tokens[~mask].abs().sum() == 0
    assert tokens[mask].abs().sum() > 0


def test_hf_encoder_is_frozen(tiny_t5):
    assert not tiny_t5.trainable
    assert not any(p.requires_grad for p in tiny_t5.parameters())
    tiny_t5.train()
    assert not tiny_t5.training and not tiny_t5.model.training
    tokens, _ = tiny_t5(CAPTIONS[:1])
    assert not tokens.requires_grad


def test_hf_encoder_rejects_stub_tokenizer(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    stub = BertTokenizer(str(vocab))
    model = T5EncoderModel(T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4))
    with pytest.raises(ValueError, match="only 5 tokens"):
        HFTextEncoder(model=model, tokenizer=stub)


def test_hf_encoder_rejects_mismatched_tokenizer(bert_tokenizer):
    model = T5EncoderModel(T5Config(vocab_size=1000, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4))
    with pytest.raises(ValueError, match="different checkpoints"):
        HFTextEncoder(model=model, tokenizer=bert_tokenizer)


def test_hf_encoder_missing_weights_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="no loadable model"):
        HFTextEncoder(str(tmp_path / "nothing"), local_files_only=True)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download google/flan-t5-nonexistent"):
        HFTextEncoder("google/flan-t5-nonexistent", local_files_only=True)
    with pytest.raises(ValueError, match="model_name_or_path"):
        HFTextEncoder()


def test_minilm_real_encoder():
    encoder = MiniLMTextEncoder(max_length=16)
    tokens, mask = encoder(CAPTIONS)
    assert encoder.dim == 384 and not encoder.trainable
    assert tokens.shape == (3, mask.shape[1], 384)
    assert mask.sum(1).tolist() == [8, 6, 2]  # [CLS] words [SEP]
    # a real encoder: captions sharing words are closer than unrelated ones
    pooled = torch.nn.functional.normalize((tokens.sum(1) / mask.sum(1, keepdim=True)), dim=-1)
    close, _ = encoder(["a red circle on the left side"])
    close = torch.nn.functional.normalize(close.mean(1), dim=-1)
    assert (close @ pooled[0]) > (close @ pooled[1])


VOCAB = ["a", "red", "blue", "circle", "square", "on", "the", "left", "small", "Red"]


def test_word_encoder_tokenize():
    encoder = WordTextEncoder(VOCAB, dim=16, depth=1, num_heads=2, max_length=5)
    assert encoder.vocab[:3] == ["<pad>", "<bos>", "<unk>"] and encoder.vocab.count("red") == 1
    ids, mask = encoder.tokenize(["A red, circle!", "purple square", "", "a red circle on the left"])
    idx = encoder.index
    assert ids[0].tolist() == [idx["<bos>"], idx["a"], idx["red"], idx["circle"], 0]
    assert ids[1, :3].tolist() == [idx["<bos>"], idx["<unk>"], idx["square"]]
    assert ids[3].tolist() == [idx["<bos>"], idx["a"], idx["red"], idx["circle"], idx["on"]]  # truncated
    assert mask.sum(1).tolist() == [4, 3, 1, 5]
    with pytest.raises(ValueError, match="single words"):
        WordTextEncoder(["red circle"])


def test_word_encoder_forward_padding_invariant_and_trainable():
    torch.manual_seed(0)
    encoder = WordTextEncoder(VOCAB, dim=16, depth=2, num_heads=2, max_length=8)
    assert encoder.trainable and encoder.dim == 16
    tokens, mask = encoder(CAPTIONS)
    assert tokens.shape == (3, 7, 16) and mask.sum(1).tolist() == [7, 5, 1]
    assert tokens[~mask].abs().sum() == 0
    alone, _ = encoder(CAPTIONS[1:2])
    torch.testing.assert_close(alone[0], tokens[1, :5], rtol=1e-5, atol=1e-5)
    tokens.pow(2).sum().backward()
    assert encoder.embed.weight.grad.abs().sum() > 0
    encoder.train()
    assert encoder.training
