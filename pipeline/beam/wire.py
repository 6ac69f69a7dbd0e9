"""The tf.train.Example wire format and TFRecord framing, vectorised over a chunk of rows.

The Examples of a chunk are serialized at once with numpy (the protobuf wire format is
written directly), framed as TFRecords (length and masked CRC-32C) and compressed into one
gzip member; tests hold all three byte for byte equal to ``tf.train.Example``,
``tf.io.TFRecordWriter`` and its GZIP writer, so no Beam worker imports TensorFlow.
"""
from __future__ import annotations

import itertools
import zlib
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import google_crc32c
import numpy as np

_VARINT_LIMITS = np.array([1 << (7 * j) for j in range(1, 10)], dtype=np.uint64)


def _varint_lengths(v: np.ndarray) -> np.ndarray:
    """Bytes of the protobuf varint of each uint64 in ``v`` (1..10)."""
    if v.size and v.max() < 0x80:  # the usual ids: one byte each
        return np.ones(v.shape, dtype=np.int64)
    return np.searchsorted(_VARINT_LIMITS, v, side="right").astype(np.int64) + 1


def _varint_matrix(v: np.ndarray, lens: np.ndarray, width: int) -> np.ndarray:
    """Varint bytes of uint64 ``v`` (any shape) as ``v.shape + (width,)`` (padding past each length)."""
    if width == 1:  # every value < 128 is its own byte
        return v.astype(np.uint8)[..., None]
    j = np.arange(width, dtype=np.uint64)
    out = ((v[..., None] >> (np.uint64(7) * j)) & np.uint64(0x7F)).astype(np.uint8)
    out |= ((np.arange(width) < lens[..., None] - 1) * 0x80).astype(np.uint8)
    return out


def _varint_bytes(x: int) -> bytes:
    out = bytearray()
    while True:
        b = x & 0x7F
        x >>= 7
        out.append(b | (0x80 if x else 0))
        if not x:
            return bytes(out)


def _entry_prefix(key: bytes, kind_tag: bytes, packed: int) -> bytes:
    """Map entry bytes up to the packed values of a Feature whose packed length is ``packed``."""
    lst = 1 + len(_varint_bytes(packed)) + packed
    feat = 1 + len(_varint_bytes(lst)) + lst
    entry = 1 + len(_varint_bytes(len(key))) + len(key) + 1 + len(_varint_bytes(feat)) + feat
    return (b"\x0a" + _varint_bytes(entry) + b"\x0a" + _varint_bytes(len(key)) + key + b"\x12"
            + _varint_bytes(feat) + kind_tag + _varint_bytes(lst) + b"\x0a" + _varint_bytes(packed))


class _Rows:
    """Rows under construction: byte pieces (constant, fixed-width, or variable with a mask)."""

    def __init__(self, n: int):
        self.n = n
        self.pieces: List[Tuple[Any, Optional[np.ndarray]]] = []
        self.length = np.zeros(n, dtype=np.int64)

    def const(self, b: bytes) -> None:
        if self.pieces and isinstance(self.pieces[-1][0], bytes):
            self.pieces[-1] = (self.pieces[-1][0] + b, None)
        else:
            self.pieces.append((b, None))
        self.length += len(b)

    def fixed(self, data: np.ndarray) -> None:
        self.pieces.append((data, None))
        self.length += data.shape[1]

    def varint(self, v: np.ndarray) -> None:
        lens = _varint_lengths(v.astype(np.uint64))
        width = int(lens.max())
        self.pieces.append((_varint_matrix(v.astype(np.uint64), lens, width),
                            None if lens.min() == width else np.arange(width) < lens[:, None]))
        self.length += lens

    def compact(self) -> Tuple[np.ndarray, np.ndarray]:
        """(concatenated row bytes, offsets [n + 1])."""
        n = self.n
        widths = [len(d) if isinstance(d, bytes) else d.shape[1] for d, _ in self.pieces]
        template = np.zeros(sum(widths), dtype=np.uint8)  # the constant pieces, copied to all rows at once
        col = 0
        for (d, _), w in zip(self.pieces, widths):
            if isinstance(d, bytes):
                template[col:col + w] = np.frombuffer(d, np.uint8)
            col += w
        data = np.empty((n, len(template)), dtype=np.uint8)
        data[:] = template
        mask = None if all(m is None for _, m in self.pieces) else np.ones(data.shape, dtype=bool)
        col = 0
        for (d, m), w in zip(self.pieces, widths):
            if not isinstance(d, bytes):
                data[:, col:col + w] = d
            if m is not None:
                mask[:, col:col + w] = m
            col += w
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(self.length, out=offsets[1:])
        return (data.reshape(-1) if mask is None else data[mask]), offsets


class ExampleEncoder:
    """Serializes rows of fixed-width int64 / float32 columns as ``tf.train.Example`` bytes.

    Example = {1: Features}; Features = repeated {1: map entry}; entry = {1: key, 2: Feature};
    Feature = {2: FloatList | 3: Int64List}; the lists are packed ({1: packed values}).
    A float column, or an int64 column whose values all have the same varint length in
    the chunk, has constant-length entries (a constant prefix + the value bytes); other
    int64 columns get per-row lengths. Rows are assembled as one byte matrix with a
    validity mask whose row-major compaction is the concatenated Examples.
    """

    def __init__(self, columns: Sequence[Tuple[str, str, int]]):
        self.columns = [(name, dtype, int(width)) for name, dtype, width in columns]
        for name, dtype, width in self.columns:
            if dtype not in ("int64", "float32") or width < 1:
                raise ValueError(f"column '{name}': cannot serialize dtype {dtype} width {width}")
        self._float_prefix = {name: _entry_prefix(name.encode(), b"\x12", 4 * width)
                              for name, dtype, width in self.columns if dtype == "float32"}

    def serialize(self, arrays: Dict[str, np.ndarray], n: int) -> Tuple[np.ndarray, np.ndarray]:
        """(concatenated Example bytes uint8, offsets int64 [n + 1]) of ``n`` rows."""
        body = _Rows(n)
        for name, dtype, width in self.columns:
            arr = np.asarray(arrays[name]).reshape(n, width)
            if dtype == "float32":
                body.const(self._float_prefix[name])
                body.fixed(np.ascontiguousarray(arr, dtype="<f4").view(np.uint8).reshape(n, 4 * width))
                continue
            v = np.ascontiguousarray(arr, dtype=np.int64).view(np.uint64)
            vl = _varint_lengths(v)
            low, high = int(vl.min()), int(vl.max())
            if low == high:  # constant layout in this chunk
                body.const(_entry_prefix(name.encode(), b"\x1a", width * low))
                body.fixed(_varint_matrix(v, vl, low).reshape(n, width * low))
                continue
            key = name.encode()
            packed = vl.sum(axis=1)
            lst = 1 + _varint_lengths(packed.astype(np.uint64)) + packed
            feat = 1 + _varint_lengths(lst.astype(np.uint64)) + lst
            entry = 1 + len(_varint_bytes(len(key))) + len(key) + 1 + _varint_lengths(feat.astype(np.uint64)) + feat
            body.const(b"\x0a")
            body.varint(entry)
            body.const(b"\x0a" + _varint_bytes(len(key)) + key + b"\x12")
            body.varint(feat)
            body.const(b"\x1a")
            body.varint(lst)
            body.const(b"\x0a")
            body.varint(packed)
            body.pieces.append((_varint_matrix(v, vl, high).reshape(n, width * high),
                                (np.arange(high) < vl[:, :, None]).reshape(n, width * high)))
            body.length += packed
        rows = _Rows(n)
        rows.const(b"\x0a")
        rows.varint(body.length)
        rows.pieces += body.pieces
        rows.length += body.length
        return rows.compact()


_CRC_MASK_DELTA = np.uint32(0xA282EAD8)


def _masked_crc32c(records: Iterable[bytes], n: int) -> np.ndarray:
    """TFRecord's masked CRC-32C (Castagnoli) of each record: ``rotr(crc, 15) + 0xa282ead8``."""
    crc = np.fromiter(map(google_crc32c.value, records), dtype=np.uint32, count=n)
    return ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + _CRC_MASK_DELTA


def tfrecord_frames(buf: np.ndarray, offsets: np.ndarray) -> Tuple[bytes, np.ndarray]:
    """The TFRecord frames of records ``buf[offsets[i]:offsets[i+1]]`` as one bytes object,
    and the offset of each frame in it [n + 1].

    A frame is TF's record format: uint64 length, masked CRC-32C of those 8 bytes, the
    data, masked CRC-32C of the data (little-endian). The CRCs come from ``google-crc32c``
    (C, hardware CRC instructions), the rest from numpy and one ``bytes.join``, so no
    worker imports TensorFlow; a test holds the frames equal to ``tf.io.TFRecordWriter``'s.
    """
    n = len(offsets) - 1
    base = offsets - offsets[0]
    starts = base + 16 * np.arange(n + 1, dtype=np.int64)
    if n == 0:
        return b"", starts
    data = buf[offsets[0]:offsets[-1]].tobytes()
    b = base.tolist()
    records = list(map(data.__getitem__, map(slice, b[:-1], b[1:])))
    lengths = np.diff(offsets).astype("<u8")
    distinct, which = np.unique(lengths, return_inverse=True)  # few distinct lengths per chunk
    length_crc = _masked_crc32c(map(bytes, distinct.view(np.uint8).reshape(-1, 8)), len(distinct))[which]
    # row i: the data CRC closing record i-1, then the header (length, its CRC) of record i
    sep = np.zeros((n + 1, 16), np.uint8)
    sep[:n, 4:12] = lengths.view(np.uint8).reshape(n, 8)
    sep[:n, 12:] = length_crc.astype("<u4").view(np.uint8).reshape(n, 4)
    sep[1:, :4] = _masked_crc32c(records, n).astype("<u4").view(np.uint8).reshape(n, 4)
    sep = sep.tobytes()
    pieces = [sep[4:16]] + list(map(sep.__getitem__, map(slice, range(16, 16 * n, 16), range(32, 16 * n + 16, 16))))
    frames = b"".join(itertools.chain.from_iterable(zip(pieces, records))) + sep[16 * n:16 * n + 4]
    return frames, starts


def gzip_member(frames, level: int) -> bytes:
    """One gzip member of ``frames``, byte-identical to what TF's GZIP TFRecordWriter writes:
    zlib deflate at ``level`` with a 2^15 window and memLevel 9 (TF's ZlibCompressionOptions)
    and zlib's own gzip header. TFRecordDataset reads concatenated gzip members as one
    stream, so a shard file is the concatenation of its chunks' members (through
    :func:`tf_readable_members`)."""
    z = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 9)
    return z.compress(frames) + z.flush()


# TensorFlow's GZIP reader (ZlibInputStream) refills its compressed input TF_GZIP_REFILL bytes at a
# time, and an inflate call that ends a member without new output reads to it as the end of the
# file: a member ending 1-9 bytes past a refill boundary (its 8-byte trailer split across two
# refills; measured on TF 2.15, tests/pipeline/test_wire.py) silently hides every later member.
TF_GZIP_REFILL = 256 * 1024
TF_GZIP_BLIND_SPOT = 16  # member ends 1..16 bytes past a refill boundary are moved (9 measured)


def _with_extra_subfield(member: bytes, subfield: bytes) -> bytes:
    """``member`` with ``subfield`` appended to its header's extra field (created if absent)."""
    flags, rest = member[3], member[10:]
    extra = b""
    if flags & 0x04:
        size = int.from_bytes(rest[:2], "little")
        extra, rest = rest[2:2 + size], rest[2 + size:]
    extra += subfield
    return bytes([*member[:3], flags | 0x04, *member[4:10]]) + len(extra).to_bytes(2, "little") + extra + rest


def tf_readable_members(members: Iterable[bytes]) -> Iterable[bytes]:
    """The gzip members of one file, in order, each that would end in TensorFlow's blind spot
    (above) given 16 more header extra-field bytes (RFC 1952 FEXTRA, a subfield 'cf' of 12 zero
    bytes), which move its end past it; the decompressed bytes are unchanged."""
    offset = 0
    for member in members:
        if 0 < (offset + len(member)) % TF_GZIP_REFILL <= TF_GZIP_BLIND_SPOT:
            member = _with_extra_subfield(member, b"cf" + (12).to_bytes(2, "little") + bytes(12))
        offset += len(member)
        yield member
