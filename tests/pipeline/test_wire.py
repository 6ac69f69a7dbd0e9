"""Shard files are concatenated gzip members; TensorFlow's GZIP reader stops, silently, at a
member whose end lies just past one of its 256 KiB input refills, hiding every later member
(rows written but never read). ``wire.tf_readable_members`` moves such ends out of the blind
spot: these tests place a member's end at each offset around a refill boundary."""
import gzip
import struct

import numpy as np
import pytest

import models  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from pipeline.beam.wire import TF_GZIP_REFILL, gzip_member, tf_readable_members, tfrecord_frames


def _members():
    """Two members of incompressible records: A (~255 KiB compressed, 850 records) and B (100)."""
    rng = np.random.default_rng(0)
    out = []
    for n in (850, 100):
        records = [rng.integers(0, 256, 300, dtype=np.uint8).tobytes() for _ in range(n)]
        buf = np.frombuffer(b"".join(records), np.uint8)
        frames, _ = tfrecord_frames(buf, np.cumsum([0] + [len(r) for r in records]))
        out.append((gzip_member(frames, 6), n))
    return out


def _ending_at(member: bytes, end: int) -> bytes:
    """``member`` with a header extra field sized so that it is ``end`` bytes long."""
    pad = end - len(member) - 2
    return bytes([*member[:3], member[3] | 0x04, *member[4:10]]) + struct.pack("<H", pad) + bytes(pad) + member[10:]


def _tf_count(path) -> int:
    return sum(1 for _ in tf.data.TFRecordDataset(str(path), compression_type="GZIP"))


@pytest.mark.parametrize("past", [1, 5, 9, 12, 16])
def test_members_ending_just_past_a_refill_are_all_read(tmp_path, past):
    (a, na), (b, nb) = _members()
    a = _ending_at(a, TF_GZIP_REFILL + past)
    raw, safe = tmp_path / "raw.gz", tmp_path / "safe.gz"
    raw.write_bytes(a + b)
    safe.write_bytes(b"".join(tf_readable_members([a, b])))
    assert gzip.decompress(safe.read_bytes()) == gzip.decompress(raw.read_bytes())  # the same records
    assert _tf_count(safe) == na + nb
    if past <= 9:  # the blind spot measured on this TensorFlow: the bug the function is for
        assert _tf_count(raw) == na


@pytest.mark.parametrize("past", [0, 17, 40])
def test_other_members_are_left_byte_for_byte(past):
    (a, _), (b, _) = _members()
    a = _ending_at(a, TF_GZIP_REFILL + past)
    assert list(tf_readable_members([a, b])) == [a, b]
