"""Hashes of curated files and images: xxh3-128 content hashes and the 64-bit perceptual hash.

The content hashes (:func:`file_hash`, :func:`bytes_hash` of the input bytes; :func:`content_hash`
of the written pixel array) find exact duplicates; the perceptual hash (:func:`perceptual_hash`)
finds near duplicates (:mod:`.dedup` compares them). The pHash is ``imagehash.phash``'s, computed
on a 32 x 32 box-averaged copy of the image without its image round trips
(``tests/test_curation_fast.py`` checks equality).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "PHASH_SIZE",
    "box_means_grey",
    "bytes_hash",
    "content_hash",
    "file_hash",
    "perceptual_hash",
    "phash_of_32",
]

#: pHash input: images are box-averaged to this many pixels on each side first (imagehash's own DCT size)
PHASH_SIZE = 32


def box_means_grey(display: np.ndarray) -> np.ndarray:
    """Box means of a grey integer ``(rows, columns)`` array over a :data:`PHASH_SIZE` grid, as uint8.

    The array is cut into ``PHASH_SIZE x PHASH_SIZE`` boxes of ``rows // PHASH_SIZE`` x
    ``columns // PHASH_SIZE`` pixels (the last ``< PHASH_SIZE`` rows / columns are left out)
    and each box's mean is scaled from the dtype's range to 0..255. Integer sums: exact.
    """
    n = PHASH_SIZE
    fy, fx = display.shape[0] // n, display.shape[1] // n
    rows = display[: fy * n, : fx * n].reshape(n, fy, fx * n)
    acc = rows[:, 0].astype(np.uint32)  # fy row adds over contiguous rows: no full-size temporary
    for k in range(1, fy):
        acc += rows[:, k]
    sums = acc.reshape(n, n, fx).sum(axis=2, dtype=np.uint64)
    scale = 255.0 / (np.iinfo(display.dtype).max * fy * fx)
    return np.rint(sums * scale).astype(np.uint8)


def phash_of_32(grey: np.ndarray) -> str:
    """``str(imagehash.phash(Image.fromarray(grey)))`` of a ``(32, 32)`` uint8 image, without its image round trips.

    The same steps as ``imagehash.phash`` (hash size 8, high-frequency factor 4) once the image is
    32 x 32 grey: DCT-II along the columns then the rows, the low 8 x 8 frequencies compared with
    their median, the 64 bits as 16 hex digits (``tests/test_curation_fast.py`` checks equality).
    """
    from scipy.fft import dct

    low = dct(dct(grey.astype(np.float64), axis=0), axis=1)[:8, :8].ravel()
    s = np.sort(low)
    return np.packbits(low > (s[31] + s[32]) / 2).tobytes().hex()  # the median of 64 values


def perceptual_hash(display: Any) -> str:
    """64-bit pHash (hex) of a display array (``(rows, columns)`` uint8 / uint16, ``(rows, columns, 3)`` uint8)
    or of the PIL image it was decoded from.

    The image is box-averaged to :data:`PHASH_SIZE` x :data:`PHASH_SIZE` (grey: exact integer
    box means in NumPy, scaled to 8 bits; RGB: PIL ``Image.reduce`` then ITU-R 601-2 luma), and
    hashed as ``imagehash.phash`` hashes that 32 x 32 image (:func:`phash_of_32`: the signs of
    the low 8 x 8 DCT frequencies about their median). The cost is one pass over the pixels;
    images below 32 pixels on a side go to ``imagehash.phash`` as they are (it resizes them).
    """
    from PIL import Image

    n = PHASH_SIZE
    if not isinstance(display, Image.Image) and display.ndim == 2:
        if min(display.shape) >= n:
            return phash_of_32(box_means_grey(display))
        if display.dtype != np.uint8:
            display = (display.astype(np.float64) * (255.0 / np.iinfo(display.dtype).max)).round().astype(np.uint8)
        img = Image.fromarray(np.ascontiguousarray(display))
    else:
        img = display if isinstance(display, Image.Image) else Image.fromarray(np.ascontiguousarray(display))
        fx, fy = img.size[0] // n, img.size[1] // n
        if fx and fy and (fx > 1 or fy > 1):
            img = img.reduce((fx, fy), box=(0, 0, fx * n, fy * n))
        if img.mode != "L":
            img = img.convert("L")
        if img.size == (n, n):
            return phash_of_32(np.asarray(img))
    import imagehash

    return str(imagehash.phash(img))


def content_hash(display: np.ndarray) -> str:
    """xxh3-128 (hex) of a display array's dtype, shape and C-order bytes."""
    import xxhash

    h = xxhash.xxh3_128(f"{display.dtype}{display.shape}".encode())
    h.update(np.ascontiguousarray(display).data)
    return h.hexdigest()


def bytes_hash(data: bytes) -> str:
    """xxh3-128 (hex) of ``data`` (a file's bytes already read)."""
    import xxhash

    return xxhash.xxh3_128_hexdigest(data)


def file_hash(path: str) -> str:
    """xxh3-128 (hex) of a file's bytes (read in 1 MiB blocks)."""
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()
