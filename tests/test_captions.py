"""Captions measured from MNIST pixels (diffjax.data.captions) and the text-conditioned batches.

The pixel measures are checked on synthetic strokes whose thickness, slant and bounding box are
known in closed form; the text encoder is a stand-in (``HashEncoder``: one fixed random vector per
word), so these tests need neither the MiniLM weights nor their encoding time."""
import functools
import zlib

import numpy as np
import pytest

from diffjax.data import captions
from diffjax.data.pipeline import GlobalOrder, Loader
from diffjax.data.sources import ArraySource


class HashEncoder:
    """A stand-in for ``diffjax.text``'s encoders: token j of a text is a fixed random vector of
    its j-th word (seeded by the word's CRC32), so equal words give equal tokens."""
    name, dim, max_length = "hash", 16, 32

    def __init__(self):
        self.calls = 0

    def encode(self, texts, length=None):
        self.calls += 1
        length = length or self.max_length
        tokens = np.zeros((len(texts), length, self.dim), np.float32)
        mask = np.zeros((len(texts), length), np.float32)
        for i, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"prompt {i} is empty")
            for j, word in enumerate(text.replace(",", " ").split()[:length]):
                tokens[i, j] = np.random.default_rng(zlib.crc32(word.encode())).normal(size=self.dim)
                mask[i, j] = 1.0
        return type("Embeddings", (), {"tokens": tokens, "mask": mask})


def bar(width: int, length: int, shear: float = 0.0, size: int = 28) -> np.ndarray:
    """A vertical bar of ``width`` x ``length`` pixels (float ink in [0, 1]) centred in the image;
    with ``shear``, row r is shifted right by ``shear * (centre row - r)`` pixels, the fractional
    part spread linearly over two columns (so each row's ink centre is exact)."""
    image = np.zeros((size, size))
    top, left = (size - length) // 2, (size - width) // 2
    centre = top + (length - 1) / 2
    for r in range(top, top + length):
        shift = shear * (centre - r)
        base, frac = int(np.floor(shift)), shift - np.floor(shift)
        image[r, left + base:left + base + width] += 1 - frac
        image[r, left + base + 1:left + base + 1 + width] += frac
    return np.clip(image, 0, 1)


def test_thickness_is_the_width_of_a_long_stroke():
    images = np.stack([bar(2, 18), bar(5, 18), bar(3, 12)])
    # 2 A / P for a w x l rectangle: 2 w l / (2 (w + l)) = w l / (w + l)
    np.testing.assert_allclose(captions.thickness(images), [2 * 18 / 20, 5 * 18 / 23, 3 * 12 / 15], rtol=1e-12)
    assert captions.thickness(np.stack([bar(1, 20)]))[0] < captions.thickness(np.stack([bar(4, 20)]))[0]


@pytest.mark.parametrize("shear", [1.0, 0.5, -0.5, -1.0, 0.25])
def test_slant_recovers_the_shear_and_its_sign(shear):
    # Every row's ink centre is exactly centre_col + shear * (centre_row - r), so the ratio
    # -mu_xy / mu_yy is exactly the shear; > 0 is the top to the right ("/", leaning right).
    assert captions.slant(bar(1, 16, shear)[None])[0] == pytest.approx(shear, abs=1e-12)
    assert captions.slant(bar(3, 16, shear)[None])[0] == pytest.approx(shear, abs=1e-12)


def test_slant_of_mirrored_digits_changes_sign():
    images, _ = _digits()
    s = captions.slant(images[:200])
    np.testing.assert_allclose(captions.slant(images[:200, :, ::-1]), -s, atol=1e-12)


def test_size_is_the_bounding_box_area():
    images = np.zeros((3, 28, 28))
    images[0, 4:10, 5:11] = 1.0    # 6 x 6
    images[1, 3:23, 10:17] = 1.0   # 20 x 7
    images[2, 20, 3] = 0.3          # faint: below the ink threshold
    np.testing.assert_array_equal(captions.size(images), [36, 140, 0])
    np.testing.assert_array_equal(captions.size((images * 255).astype(np.uint8)[..., None]), [36, 140, 0])


def test_attributes_are_the_tertiles_of_the_measures():
    # 27 bars: widths 1 / 3 / 6 (thin / middle / thick), shears -0.5 / 0 / 0.5, lengths 14-22
    widths, shears, lengths = [1, 3, 6], [-0.5, 0.0, 0.5], [14, 18, 22]
    combos = [(w, s, n) for w in widths for s in shears for n in lengths]
    images = np.stack([bar(w, n, s) for w, s, n in combos])
    labels = np.zeros(len(combos), np.int32)
    attrs = captions.attributes(images, labels, captions.thresholds(captions.measure(images), labels))
    np.testing.assert_array_equal(attrs[:, 0], [widths.index(w) for w, _, _ in combos])
    np.testing.assert_array_equal(attrs[:, 1], [shears.index(s) for _, s, _ in combos])
    assert [captions.THICKNESS[a] for a in attrs[:3, 0]] == ["thin"] * 3
    assert captions.SLANT[attrs[combos.index((1, 0.5, 14)), 1]] == "right"
    assert captions.SLANT[attrs[combos.index((1, -0.5, 14)), 1]] == "left"


def test_size_words_are_judged_within_the_class():
    # class 0: squares of side 4, 6, 8; class 1: sides 10, 12, 14. A side-8 square is "large"
    # among class 0 and a side-10 one "small" among class 1.
    sides, labels = [4, 6, 8, 10, 12, 14] * 2, np.repeat([0, 0, 0, 1, 1, 1], 1).tolist() * 2
    images = np.zeros((len(sides), 28, 28))
    for i, n in enumerate(sides):
        images[i, 2:2 + n, 2:2 + n] = 1.0
    cuts = captions.thresholds(captions.measure(images), np.asarray(labels))
    attrs = captions.attributes(images, np.asarray(labels), cuts)
    assert [captions.SIZE[a] for a in attrs[:6, 2]] == ["small", None, "large"] * 2


@functools.lru_cache(maxsize=1)
def _digits():
    from diffjax.data.sources import load_mnist_5k

    return load_mnist_5k()


def test_captions_say_only_what_was_measured_and_are_fixed_per_record_and_epoch():
    images, labels = _digits()
    data = captions.CaptionedMNIST(images, labels, *_table(), seed=3, drop_prob=0.0)
    same = captions.CaptionedMNIST(images, labels, *_table(), seed=3, drop_prob=0.0)
    for r in range(0, 5000, 97):
        words, attrs = data.caption(r, 0), data.attrs[r]
        assert captions.DIGIT_WORDS[labels[r]] in words.split() or str(labels[r]) in words
        for names, a in ((captions.THICKNESS, attrs[0]), (captions.SIZE, attrs[2])):
            for k, word in enumerate(names):
                if word and k != a:
                    assert word not in words.split(), (r, words, attrs)
        wrong_lean = {0: "right", 1: "left", 2: "left"}[attrs[1]]
        assert wrong_lean not in words and (attrs[1] == 1 or "upright" not in words)
        assert data.caption(r, 0) == same.caption(r, 0)
    assert len({data.caption(7, e) for e in range(40)}) > 5  # a fresh choice each epoch


def test_held_out_phrasings_never_appear_in_training_captions():
    train = set(captions.all_captions())
    held = captions.all_captions(captions.HELD_OUT_TEMPLATES)
    assert not train & set(held) and len(held) > 100
    images, labels = _digits()
    data = captions.CaptionedMNIST(images[:300], labels[:300], *_table(), seed=0, drop_prob=0.1)
    drawn = {data.caption(r, e) for r in range(300) for e in range(20)}
    assert drawn <= train and not drawn & set(held)
    assert {t(w) for t in captions.TRAIN_TEMPLATES for w in captions._all_words()} | {""} == train


def test_null_caption_rate_and_encoding():
    images, labels = _digits()
    data = captions.CaptionedMNIST(images, labels, *_table(), seed=0, drop_prob=0.2)
    drops = np.mean([data.caption(r, e) == "" for r in range(5000) for e in range(4)])
    assert abs(drops - 0.2) < 4 * np.sqrt(0.2 * 0.8 / 20000)
    texts, context = _table()
    assert texts[0] == "" and not context.mask[0].any() and not context.tokens[0].any()
    assert context.mask[1:].any(axis=1).all()


_TABLES = {}


def _table():
    if "t" not in _TABLES:
        enc = HashEncoder()
        texts = captions.all_captions()
        _TABLES["t"] = (texts, captions.encode(texts, enc, 16))
    return _TABLES["t"]


def test_embedding_table_is_encoded_once_and_cached(tmp_path):
    enc = HashEncoder()
    texts, first = captions.embedding_table("hash", 16, str(tmp_path), enc)
    calls = enc.calls
    again, second = captions.embedding_table("hash", 16, str(tmp_path), enc)
    assert enc.calls == calls and again == texts
    np.testing.assert_array_equal(first.tokens, second.tokens)
    i = texts.index("a thick seven leaning right")
    np.testing.assert_array_equal(first.mask[i], np.arange(16) < 5)
    with pytest.raises(ValueError, match="more than text.max_tokens=3"):
        captions.encode(["a thick seven leaning right"], enc, 3)


def test_loader_batches_carry_the_context_of_each_caption_and_resume_exactly():
    images, labels = _digits()
    texts, context = _table()
    data = captions.CaptionedMNIST(images, labels, texts, context, seed=5, drop_prob=0.2)
    make = lambda: Loader(ArraySource(images, labels), 32, 5, image_size=28, num_channels=1,  # noqa: E731
                          captions=data, prefetch=1)
    loader = make()
    order = GlobalOrder(5000, 32, 5)
    k = order.batches_per_epoch + 1  # a batch of the second epoch
    batch = loader.make_batch(k)
    records = [order.record(g) for g in range(k * 32, (k + 1) * 32)]
    assert [texts[i] for i in batch["caption"]] == [data.caption(r, 1) for r in records]
    np.testing.assert_array_equal(batch["context"], context.tokens[batch["caption"]])
    np.testing.assert_array_equal(batch["context_mask"], context.mask[batch["caption"]])
    first = [next(loader) for _ in range(3)]
    resumed = make()
    resumed.restore({"position": 2})
    np.testing.assert_array_equal(next(resumed)["context"], first[2]["context"])
    loader.close()
    resumed.close()
