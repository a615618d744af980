"""Captions for the bundled MNIST digits, written from attributes measured on their pixels.

Three attributes of each digit's ink (pixels of intensity >= 128 for areas and boxes; the grey
levels as weights for moments):

* **stroke thickness** ``2 A / P``: ink area ``A`` over half the perimeter ``P`` (pixel edges
  between ink and background). A stroke of length ``l`` and width ``w`` has ``A = l w`` and
  ``P = 2 (l + w)``, so the measure is ``l w / (l + w)``, the width for ``l >> w``, with no
  skeletonisation (which a dot-sized blob or a closed loop would make unstable);
* **slant** ``-mu_xy / mu_yy``: second central moments of the ink (``x`` the column, ``y`` the row,
  rows counting down), the horizontal shift per row upwards that a shear fit gives; > 0 leans
  right ("/"), < 0 left. (The deskewing of LeCun et al.'s MNIST benchmarks uses the same ratio.);
* **size**: the area of the ink's bounding box. MNIST's preprocessing scaled every digit into a
  20-pixel box, so absolute size mostly reflects the class (a 1 is narrow): size is judged within
  the digit's class.

Each attribute is cut into words at the dataset's tertiles (:func:`thresholds`): thin / - / thick,
leaning left / upright / leaning right, small / - / large ("-": the middle third, no word). A
caption is a template filled with the digit (word or numeral) and a random subset of its words;
``TRAIN_TEMPLATES`` make the training captions, ``HELD_OUT_TEMPLATES`` phrasings never seen in
training (for measuring generalisation). The choice for record ``r`` at epoch ``e`` is drawn from
``(seed, r, e)`` alone, so a resumed run reads the same captions. The set of training captions is
finite (:func:`all_captions`); :func:`embedding_table` encodes it once with the frozen text
encoder and caches the result under ``<cache_dir>/<encoder>_v<TEMPLATE_VERSION>.npz``.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import os
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

TEMPLATE_VERSION = 1
NULL_CAPTION = ""  # the null caption of classifier-free guidance: encoded as no token (see encode)
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
THICKNESS = ("thin", None, "thick")
SLANT = ("left", "upright", "right")
SIZE = ("small", None, "large")
_INK = 128


# ---------------------------------------------------------------------------- pixel measures

def _ink(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise ValueError(f"expected grey images (N, H, W) or (N, H, W, 1), got shape {images.shape}")
    return images.astype(np.float64) / (255.0 if images.dtype == np.uint8 else 1.0)


def thickness(images: np.ndarray) -> np.ndarray:
    """Stroke thickness ``2 * area / perimeter`` of the ink (pixels >= 0.5), per image (N,)."""
    ink = _ink(images) >= _INK / 255.0
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    edges = (np.sum(padded[:, 1:] != padded[:, :-1], axis=(1, 2))
             + np.sum(padded[:, :, 1:] != padded[:, :, :-1], axis=(1, 2)))
    return 2.0 * ink.sum(axis=(1, 2)) / np.maximum(edges, 1)


def slant(images: np.ndarray) -> np.ndarray:
    """``-mu_xy / mu_yy`` of the grey-level ink (N,): > 0 leans right, < 0 leans left."""
    x = _ink(images)
    rows, cols = np.mgrid[:x.shape[1], :x.shape[2]]
    mass = np.maximum(x.sum(axis=(1, 2)), 1e-12)
    cy = np.einsum("nij,ij->n", x, rows) / mass
    cx = np.einsum("nij,ij->n", x, cols) / mass
    dy = rows[None] - cy[:, None, None]
    dx = cols[None] - cx[:, None, None]
    mu_xy = np.sum(x * dx * dy, axis=(1, 2)) / mass
    mu_yy = np.sum(x * dy * dy, axis=(1, 2)) / mass
    return -mu_xy / np.maximum(mu_yy, 1e-12)


def size(images: np.ndarray) -> np.ndarray:
    """Area (pixels) of the bounding box of the ink (pixels >= 0.5), per image (N,); 0 if blank."""
    ink = _ink(images) >= _INK / 255.0
    rows, cols = ink.any(axis=2), ink.any(axis=1)

    def extent(m):
        first, last = np.argmax(m, axis=1), m.shape[1] - 1 - np.argmax(m[:, ::-1], axis=1)
        return np.where(m.any(axis=1), last - first + 1, 0)

    return (extent(rows) * extent(cols)).astype(np.float64)


def measure(images: np.ndarray) -> dict[str, np.ndarray]:
    return {"thickness": thickness(images), "slant": slant(images), "size": size(images)}


# ---------------------------------------------------------------------------- words

class Thresholds(NamedTuple):
    """Tertile cuts: ``thickness`` and ``slant`` (2,), ``size`` (10, 2) per class."""
    thickness: np.ndarray
    slant: np.ndarray
    size: np.ndarray


def thresholds(measures: dict[str, np.ndarray], labels: np.ndarray) -> Thresholds:
    """The dataset's 1/3 and 2/3 quantiles of each measure (size: within each class)."""
    q = (1 / 3, 2 / 3)
    labels = np.asarray(labels)
    by_class = np.stack([np.quantile(measures["size"][labels == c], q) if np.any(labels == c)
                         else np.array([np.inf, np.inf]) for c in range(10)])
    return Thresholds(np.quantile(measures["thickness"], q), np.quantile(measures["slant"], q), by_class)


def _tertile(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    return (values > cuts[..., 0]).astype(np.int32) + (values > cuts[..., 1]).astype(np.int32)


def attributes(images: np.ndarray, labels: np.ndarray, cuts: Thresholds) -> np.ndarray:
    """(N, 3) int: the tertile 0/1/2 of thickness, slant and size (indices into THICKNESS,
    SLANT, SIZE)."""
    m = measure(images)
    labels = np.asarray(labels)
    return np.stack([_tertile(m["thickness"], cuts.thickness), _tertile(m["slant"], cuts.slant),
                     _tertile(m["size"], cuts.size[labels])], axis=1)


# ---------------------------------------------------------------------------- templates

class Words(NamedTuple):
    """What a caption may say: the digit, and each attribute's word or None (not said)."""
    digit: int
    thickness: str | None
    slant: str | None
    size: str | None


_SLANT_ADJ = {"left": "left-leaning", "upright": "upright", "right": "right-leaning"}
_SLANT_PHRASE = {"left": "leaning left", "upright": "standing upright", "right": "leaning right"}


def _join(*parts: str | None, sep: str = " ") -> str:
    return sep.join(p for p in parts if p)


def _a(rest: str) -> str:
    """``rest`` with its indefinite article ("an eight", "an 8", "an upright 7", "a one")."""
    vowel = rest[0] in "aeiou8" and not rest.startswith("one")
    return ("an " if vowel else "a ") + rest


def _t_word(w: Words) -> str:      # "a thick small seven leaning right"
    return _a(_join(w.size, w.thickness, DIGIT_WORDS[w.digit], _SLANT_PHRASE.get(w.slant)))


def _t_number(w: Words) -> str:    # "the number 7, thin strokes, leaning right"
    return _join(f"the number {w.digit}", w.thickness and f"{w.thickness} strokes",
                 _SLANT_PHRASE.get(w.slant), sep=", ")


def _t_numeral(w: Words) -> str:   # "a small thin upright 7"
    return _a(_join(w.size, w.thickness, _SLANT_ADJ.get(w.slant), str(w.digit)))


def _h_digit_of(w: Words) -> str:  # "handwritten digit 7 (thick, small, right-leaning)"
    said = _join(w.thickness, w.size, _SLANT_ADJ.get(w.slant), sep=", ")
    return _join(f"handwritten digit {w.digit}", said and f"({said})")


def _h_drawn(w: Words) -> str:     # "someone drew a seven that is thick and small and leans right"
    lean = {"left": "leans left", "upright": "stands straight", "right": "leans right"}.get(w.slant)
    said = _join(_join(w.thickness, w.size, sep=" and ") and "is " + _join(w.thickness, w.size, sep=" and "),
                 lean, sep=" and ")
    return _join(f"someone drew {_a(DIGIT_WORDS[w.digit])}", said and f"that {said}")


TRAIN_TEMPLATES: tuple[Callable[[Words], str], ...] = (_t_word, _t_number, _t_numeral)
HELD_OUT_TEMPLATES: tuple[Callable[[Words], str], ...] = (_h_digit_of, _h_drawn)


def _all_words() -> list[Words]:
    return [Words(d, t, s, z) for d, t, s, z in itertools.product(
        range(10), ("thin", "thick", None), SLANT + (None,), ("small", "large", None))]


def all_captions(templates: Sequence[Callable[[Words], str]] = TRAIN_TEMPLATES) -> list[str]:
    """Every caption ``templates`` can write, sorted; for the training templates the null caption
    ``""`` comes first (index 0 of the embedding table)."""
    texts = sorted({t(w) for t in templates for w in _all_words()})
    return [NULL_CAPTION] + texts if templates is TRAIN_TEMPLATES else texts


def choose_words(digit: int, attrs: Sequence[int], rng: np.random.Generator) -> Words:
    """Each attribute with a word (not the middle third of thickness or size) is said with
    probability 1/2."""
    said = rng.random(3) < 0.5
    words = (THICKNESS[attrs[0]], SLANT[attrs[1]], SIZE[attrs[2]])
    return Words(int(digit), *(w if s else None for w, s in zip(words, said)))


def caption(digit: int, attrs: Sequence[int], seed: int, record: int, epoch: int,
            drop_prob: float = 0.0) -> str:
    """The training caption of ``record`` at ``epoch``: a function of ``(seed, record, epoch)``;
    with probability ``drop_prob`` the null caption (classifier-free guidance)."""
    rng = np.random.default_rng([seed % 2 ** 63, record, epoch, TEMPLATE_VERSION])
    if rng.random() < drop_prob:
        return NULL_CAPTION
    template = TRAIN_TEMPLATES[rng.integers(len(TRAIN_TEMPLATES))]
    return template(choose_words(digit, attrs, rng))


# ---------------------------------------------------------------------------- encodings

class TextContext(NamedTuple):
    """Cross-attention inputs for a list of texts: ``tokens`` (N, L, D) float32 (zero at padded
    positions), ``mask`` (N, L) bool."""
    tokens: np.ndarray
    mask: np.ndarray


@functools.lru_cache(maxsize=4)
def load_encoder(name: str) -> Any:
    """The frozen text encoder ``diffjax.text.load(name)`` (loaded once per process)."""
    from diffjax import text

    return text.load(name)


def encode(texts: Sequence[str], encoder: Any, max_tokens: int) -> TextContext:
    """Token embeddings of ``texts`` padded to ``max_tokens`` positions (a ValueError for a longer
    text). The null caption ``""`` is the empty context: no token (mask all False), which the
    masked cross-attention turns into attending to one zero token (the value projection's bias);
    it needs no encoder, which may refuse empty prompts."""
    tokens = np.zeros((len(texts), max_tokens, encoder.dim), np.float32)
    mask = np.zeros((len(texts), max_tokens), bool)
    rows = [i for i, t in enumerate(texts) if t != NULL_CAPTION]
    if rows:
        # One position more than allowed: a text that fills it was too long (or truncated).
        out = encoder.encode([texts[i] for i in rows], length=max_tokens + 1)
        t, m = np.asarray(out.tokens, np.float32), np.asarray(out.mask) > 0
        if m[:, max_tokens].any():
            long = texts[rows[int(np.argmax(m[:, max_tokens]))]]
            raise ValueError(f"the text {long!r} has more than text.max_tokens={max_tokens} tokens")
        tokens[rows] = t[:, :max_tokens] * m[:, :max_tokens, None]
        mask[rows] = m[:, :max_tokens]
    return TextContext(tokens, mask)


def cache_path(cache_dir: str | None, encoder_name: str) -> str:
    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "diffjax", "captions")
    return os.path.join(cache_dir, f"{encoder_name}_v{TEMPLATE_VERSION}.npz")


def embedding_table(encoder_name: str, max_tokens: int, cache_dir: str | None = None,
                    encoder: Any = None) -> tuple[list[str], TextContext]:
    """``(captions, context)``: every training caption (``all_captions()``, the null caption at
    index 0) and its encoding, read from the cache or encoded once and cached (atomically)."""
    texts = all_captions()
    path = cache_path(cache_dir, encoder_name)
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    if os.path.exists(path):
        with np.load(path) as f:
            if str(f["digest"]) == digest and f["tokens"].shape[1] == max_tokens:
                return texts, TextContext(f["tokens"], f["mask"])
    context = encode(texts, encoder if encoder is not None else load_encoder(encoder_name), max_tokens)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, tokens=context.tokens, mask=context.mask, digest=digest)
    os.replace(tmp, path)
    return texts, context


class CaptionedMNIST:
    """The training captions of an image split: per-record attributes, and each (record, epoch)'s
    caption as an index into the embedding table."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, texts: list[str], context: TextContext,
                 seed: int, drop_prob: float):
        self.labels = np.asarray(labels)
        self.cuts = thresholds(measure(images), self.labels)
        self.attrs = attributes(images, self.labels, self.cuts)
        self.index = {t: i for i, t in enumerate(texts)}
        self.context, self.seed, self.drop_prob = context, seed, drop_prob

    def caption(self, record: int, epoch: int) -> str:
        return caption(self.labels[record], self.attrs[record], self.seed, record, epoch, self.drop_prob)

    def lookup(self, records: Sequence[int], epochs: Sequence[int]) -> dict[str, np.ndarray]:
        """``{"caption": (b,) int32, "context": (b, L, D), "context_mask": (b, L)}``."""
        idx = np.asarray([self.index[self.caption(r, e)] for r, e in zip(records, epochs)], np.int32)
        return {"caption": idx, "context": self.context.tokens[idx], "context_mask": self.context.mask[idx]}
