"""Sharded TFRecords: round trip equals the HDF5 content; atomic, no overwrite."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

from cardigan_tf.data.h5layout import iter_samples
from cardigan_tf.data.prepare import prepare
from cardigan_tf.data.sample import DataError
from cardigan_tf.data.source import resolve_data
from cardigan_tf.data.tfrecord import list_shards, read_index, read_tfrecords, to_pairs, write_tfrecords
from cardigan_tf.files import OverwriteError

import camus_fixtures as cf


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfr")
    exp = cf.write_2019_tree(d / "CAMUS", n_train=5, n_test=1, sequences=False, lists=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare(exp["root"], d / "c.h5", size=24, seed=1, tfrecords=d / "shards", shards=2, progress=False)


def _records(directory, split):
    out = {}
    for d in read_tfrecords(directory, split).as_numpy_iterator():
        out[(d["patient"].decode(), d["view"].decode(), d["phase"].decode())] = d
    return out


def test_roundtrip_equals_h5(prepared):
    shards = prepared.parent / "shards"
    index = read_index(shards)
    assert index["image_dtype"] == "float32" and index["size"] == [24, 24]
    for split in ("train", "valid", "test", "unlabelled"):
        names = [p.rsplit("/", 1)[-1] for p in list_shards(shards, split)]
        assert names == [f"{split}-00000-of-00002.tfrecord", f"{split}-00001-of-00002.tfrecord"]
        recs = _records(shards, split)
        ref = {(s.patient, s.view, s.phase): s for _, s in iter_samples(prepared, [split])}
        assert set(recs) == set(ref) and index["splits"][split]["examples"] == len(ref)
        for key, s in ref.items():
            r = recs[key]
            np.testing.assert_array_equal(r["image"], s.image)
            assert r["has_mask"] == (s.mask is not None)
            if s.mask is not None:
                np.testing.assert_array_equal(r["mask"], s.mask)
            np.testing.assert_allclose(r["spacing"], s.spacing, rtol=1e-6)
            assert tuple(r["original_shape"]) == s.original_shape
            assert r["quality"].decode() == s.quality and r["split"].decode() == split
    assert not list(shards.glob(".*tmp*"))


def test_patients_not_split_across_shards(prepared):
    shards = prepared.parent / "shards"
    where = {}
    for f in list_shards(shards, "train"):
        for raw in tf.data.TFRecordDataset(f).as_numpy_iterator():
            ex = tf.train.Example.FromString(raw)
            p = ex.features.feature["patient"].bytes_list.value[0].decode()
            where.setdefault(p, set()).add(f)
    assert where and all(len(v) == 1 for v in where.values())


def test_uint8_pairs_and_overwrite(prepared, tmp_path):
    out = tmp_path / "u8"
    write_tfrecords(prepared, out, shards=3, splits=["train"], image_dtype="uint8", progress=False)
    recs = _records(out, "train")
    ref = {(s.patient, s.view, s.phase): s for _, s in iter_samples(prepared, ["train"])}
    for key, s in ref.items():
        assert np.abs(recs[key]["image"] - s.image).max() <= 0.5 / 255 + 1e-6
    pairs = to_pairs(read_tfrecords(out, "train")).batch(4)
    image, mask = next(iter(pairs))
    assert image.shape == (4, 24, 24, 1) and image.dtype == tf.float32 and mask.dtype == tf.int32
    with pytest.raises(OverwriteError, match="--overwrite"):
        write_tfrecords(prepared, out, shards=1, splits=["train"], progress=False)
    write_tfrecords(prepared, out, shards=1, splits=["train"], overwrite=True, progress=False)
    assert sorted(p.name for p in out.glob("*.tfrecord")) == ["train-00000-of-00001.tfrecord"]


def test_resolve_data_passes_shard_folders_through(prepared, tmp_path):
    shards = prepared.parent / "shards"
    assert resolve_data(str(shards), tmp_path) == shards
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "index.json").write_text('{"format": "other"}')
    with pytest.raises(DataError, match="index.json: format"):
        resolve_data(str(fake), tmp_path)
