import pytest
import torch
from hydra.utils import instantiate
from transformers import AutoTokenizer, BertTokenizer, T5Config, T5EncoderModel

from miro.models.text import (
    FeatureCache,
    HFTextEncoder,
    MiniLMTextEncoder,
    WordTextEncoder,
    minilm_model_dir,
)
from miro.utils.text_batch import pad_rows

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
    # built the way an exported model's config.json rebuilds it
    config = {"_target_": "miro.models.text.MiniLMTextEncoder", "max_length": 16, "cache_size": 8}
    encoder = instantiate(config)
    assert encoder.cache.max_size == 8
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


# ---- per-caption feature cache of frozen encoders ---------------------------------------------------
LONG, SHORT, MID = "a red circle on the left of a blue square", "a circle", "a small blue square"


def cached_t5(tiny_t5, bert_tokenizer, cache_size):
    """A cached encoder sharing tiny_t5's weights, and a list recording the batch size of each model call."""
    encoder = HFTextEncoder(
        max_length=12, model=tiny_t5.model, tokenizer=bert_tokenizer, cache_size=cache_size
    )
    calls = []
    handle = encoder.model.register_forward_hook(
        lambda mod, args, kw, out: calls.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    return encoder, calls, handle


def uncached(tiny_t5, bert_tokenizer, captions):
    return HFTextEncoder(max_length=12, model=tiny_t5.model, tokenizer=bert_tokenizer)(captions)


def test_cache_hit_equals_uncached_and_skips_the_model(tiny_t5, bert_tokenizer):
    encoder, calls, handle = cached_t5(tiny_t5, bert_tokenizer, 16)
    try:
        first = encoder([LONG, SHORT, LONG])
        again = encoder([SHORT, LONG])
    finally:
        handle.remove()
    # one model call per new caption, encoded alone (so a cached row does not depend on its batch);
    # the second batch is all hits
    assert calls == [1, 1]
    fresh_tokens, fresh_mask = uncached(tiny_t5, bert_tokenizer, [LONG, SHORT, LONG])
    torch.testing.assert_close(first[0], fresh_tokens, rtol=0, atol=1e-5)
    assert torch.equal(first[1], fresh_mask)
    torch.testing.assert_close(again[0], fresh_tokens[[1, 0]], rtol=0, atol=1e-5)
    assert torch.equal(again[1], fresh_mask[[1, 0]])
    assert not again[0].requires_grad and again[0].device == encoder.device


def test_cache_pads_mixed_cached_and_new_captions(tiny_t5, bert_tokenizer):
    encoder, calls, handle = cached_t5(tiny_t5, bert_tokenizer, 16)
    try:
        encoder([SHORT])  # cached alone: 4 real tokens, no padding
        tokens, mask = encoder([LONG, SHORT, MID, SHORT])
    finally:
        handle.remove()
    assert calls == [1, 1, 1]  # only LONG and MID were new, each encoded alone
    fresh_tokens, fresh_mask = uncached(tiny_t5, bert_tokenizer, [LONG, SHORT, MID, SHORT])
    assert mask.sum(1).tolist() == fresh_mask.sum(1).tolist() == [12, 4, 6, 4]  # LONG truncated at 12
    assert torch.equal(mask, fresh_mask) and tokens.shape == fresh_tokens.shape == (4, 12, 32)
    assert tokens[~mask].abs().sum() == 0
    torch.testing.assert_close(tokens, fresh_tokens, rtol=0, atol=1e-5)


def test_cache_eviction_bound_and_lru_order(tiny_t5, bert_tokenizer):
    encoder, calls, handle = cached_t5(tiny_t5, bert_tokenizer, 2)
    try:
        encoder([LONG])
        encoder([SHORT])
        encoder([LONG])  # hit: LONG becomes the most recent, so SHORT goes next
        encoder([MID])
        assert len(encoder.cache) == 2
        assert (LONG, None) in encoder.cache and (SHORT, None) not in encoder.cache
        tokens, mask = encoder([SHORT, MID, LONG, "a green triangle"])  # more distinct captions than fit
    finally:
        handle.remove()
    assert calls == [1, 1, 1, 1, 1]  # SHORT and the new caption, one call each
    assert len(encoder.cache) == 2
    fresh_tokens, fresh_mask = uncached(tiny_t5, bert_tokenizer, [SHORT, MID, LONG, "a green triangle"])
    assert torch.equal(mask, fresh_mask)
    torch.testing.assert_close(tokens, fresh_tokens, rtol=0, atol=1e-5)


def test_cache_keeps_autocast_features_apart(tiny_t5, bert_tokenizer):
    encoder, calls, handle = cached_t5(tiny_t5, bert_tokenizer, 8)
    try:
        plain, _ = encoder([MID])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed, _ = encoder([MID])
            mixed_again, _ = encoder([MID])
    finally:
        handle.remove()
    assert calls == [1, 1] and len(encoder.cache) == 2
    assert (MID, torch.bfloat16) in encoder.cache
    assert torch.equal(mixed, mixed_again) and plain.dtype == torch.float32


def test_cache_rejects_bad_settings(tiny_t5, bert_tokenizer):
    with pytest.raises(ValueError, match="cache_size must be >= 0"):
        HFTextEncoder(model=tiny_t5.model, tokenizer=bert_tokenizer, cache_size=-1)
    left = AutoTokenizer.from_pretrained(minilm_model_dir(), padding_side="left")
    with pytest.raises(ValueError, match="right-padding tokenizer"):
        HFTextEncoder(model=tiny_t5.model, tokenizer=left, cache_size=4)
    assert HFTextEncoder(model=tiny_t5.model, tokenizer=left).cache is None  # fine without a cache
    # a trained encoder's features change every step: a cache would serve stale, gradient-free copies
    with pytest.raises(ValueError, match="cannot be cached"):
        WordTextEncoder(VOCAB, dim=16, depth=1, num_heads=2, cache_size=8)
    with pytest.raises(ValueError, match="max_size"):
        FeatureCache(0)


def test_feature_cache_stores_detached_rows_and_pad_rows():
    cache = FeatureCache(2)
    row = torch.ones(3, 4, requires_grad=True) * 2
    cache.put("a", row)
    cache.put("b", torch.zeros(1, 4))
    assert not cache.get("a").requires_grad  # "a" is now the most recent
    cache.put("c", torch.zeros(2, 4))
    assert len(cache) == 2 and "b" not in cache and "a" in cache
    tokens, mask = pad_rows([cache.get("c"), cache.get("a")], 4, torch.device("cpu"))
    assert tokens.shape == (2, 3, 4) and mask.tolist() == [[True, True, False], [True, True, True]]
    assert tokens[1].sum() == 24 and tokens[0].abs().sum() == 0


@pytest.mark.parametrize("autocast", [False, True])
def test_cached_features_do_not_depend_on_the_batch_a_caption_came_in(autocast: bool) -> None:
    """Padding to a batch's longest caption changes the attention's sums, so cached features used to
    depend on which captions came first (a resumed run, whose cache starts empty, then drifted); each
    caption's cached row now equals the row it gets encoded alone, under bf16 autocast too, and on two
    threads, where even unpadded batches of equal-length captions differed with the batch size."""
    captions = ["a red circle on the left and a small blue square", "two green triangles", "a red circle",
                "a purple triangle above an orange square", "three yellow circles", "a small blue square"]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            batched = MiniLMTextEncoder(max_length=32, cache_size=16)
            tokens, mask = batched(captions)
            alone = MiniLMTextEncoder(max_length=32, cache_size=16)
            rows = [alone([caption]) for caption in captions]
    finally:
        torch.set_num_threads(threads)
    for i, (row, row_mask) in enumerate(rows):
        assert torch.equal(tokens[i, mask[i]], row[0, row_mask[0]]), captions[i]
