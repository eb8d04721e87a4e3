"""Synthetic pixel data and a bounded cache of it, raw and deflated.

Pixel values look like a 12-bit CT/MR slice to a compressor: little-endian 16-bit words whose low byte
carries a few bits of noise and whose high byte is nearly constant, with a band of "air" (zeros). DEFLATE
shrinks them to roughly 35-50 % (the real archive averages ~35 %), so zips are smaller than the DICOM
total as with the real server, yet the data is not trivially compressible.

Each series has a few pixel *variants* (``PIXEL_VARIANTS``); instance ``i`` uses variant ``i % n``. The
variants are made from a seeded ``random.Random`` (string seeds are hashed with SHA-512, so the bytes are
identical on every run and platform) and transformed with ``bytes.translate``: no numpy, about 20 ms for
5 MB. :class:`PixelStore` keeps recently used variants and their raw-DEFLATE streams in a byte-bounded
LRU so that serving a series compresses each variant once; a multi-GB series therefore costs a few
variants of memory, never the whole series.
"""

from __future__ import annotations

import random
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["PIXEL_VARIANTS", "PixelStore", "PixelVariant", "synthesize_pixels"]

PIXEL_VARIANTS = 4

# Low byte: 16 distinct values around a tissue level (4 bits of entropy).
_LOW_TABLE = bytes((0x40 + (b & 0x0F) * 3) for b in range(256))
# High byte: mostly 0x03, sometimes 0x02/0x04 (about 1 bit of entropy).
_HIGH_TABLE = bytes((0x03 if b < 200 else (0x02 if b < 228 else 0x04)) for b in range(256))


def synthesize_pixels(seed_text: str, length: int) -> bytes:
    """Deterministic, image-like pixel bytes of exactly ``length`` (even) bytes."""
    if length % 2:
        raise ValueError("pixel data length must be even")
    rng = random.Random(seed_text)
    words = length // 2
    noise = rng.randbytes(length)
    data = bytearray(length)
    data[0::2] = noise[:words].translate(_LOW_TABLE)
    data[1::2] = noise[words : 2 * words].translate(_HIGH_TABLE)
    # An "air" band of zero words: the part of a slice outside the body.
    air_words = words // 5
    if air_words:
        start_word = rng.randrange(0, words - air_words + 1)
        data[2 * start_word : 2 * (start_word + air_words)] = bytes(2 * air_words)
    return bytes(data)


@dataclass(frozen=True, slots=True)
class PixelVariant:
    """One variant's raw bytes and the same bytes as one finished raw-DEFLATE stream."""

    raw: bytes
    deflated: bytes


class PixelStore:
    """A byte-bounded, thread-safe LRU of pixel variants (raw + deflated), keyed by series and variant.

    Safe to call from worker threads: the server compresses in an executor. Two threads asking for the
    same missing variant may both build it; the result is identical, so that is only wasted work.
    """

    def __init__(self, *, max_bytes: int = 512 * 1024 * 1024, compression_level: int = 1) -> None:
        self._max_bytes = max_bytes
        self._level = compression_level
        self._entries: OrderedDict[tuple[str, int], PixelVariant] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def compression_level(self) -> int:
        """zlib level used for the pixel streams (1 = fast; the real server uses Java's default 6)."""
        return self._level

    def variant(self, series_key: str, variant: int, length: int) -> PixelVariant:
        """The variant's bytes, building and caching them when absent."""
        key = (series_key, variant)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        raw = synthesize_pixels(f"{series_key}/pixels/{variant}", length)
        compressor = zlib.compressobj(self._level, zlib.DEFLATED, -15)
        deflated = compressor.compress(raw) + compressor.flush(zlib.Z_FINISH)
        built = PixelVariant(raw=raw, deflated=deflated)
        size = len(raw) + len(deflated)
        with self._lock:
            if key not in self._entries:
                self._entries[key] = built
                self._bytes += size
            while self._bytes > self._max_bytes and len(self._entries) > 1:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted.raw) + len(evicted.deflated)
        return built

    def raw(self, series_key: str, variant: int, length: int) -> bytes:
        """Only the raw bytes (used to assemble ``.dcm`` files)."""
        return self.variant(series_key, variant, length).raw
