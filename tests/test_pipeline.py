"""tf.data pipeline: shapes, filters, no augmentation outside training, mixing ratio, determinism."""

import math
import types

import numpy as np
import pytest
import tensorflow as tf
from harness import two_cpu_script

from cardigan_tf.data import h5layout
from cardigan_tf.data.augment import AugmentConfig, augment_batch
from cardigan_tf.data.dataset_info import dataset_info, format_info
from cardigan_tf.data.pipeline import Selection, Training, count_samples, make_dataset, synthetic_samples
from cardigan_tf.data.sample import EmptyDatasetError
from cardigan_tf.data.tfrecord import write_tfrecords

TAG = 0.123  # constant image value marking synthetic samples


def _synthetic(n=12, size=48):
    return {"image": np.full((n, size, size, 1), TAG, np.float32), "mask": np.ones((n, size, size), np.uint8)}


def _is_syn(images):
    return np.all(np.abs(images.reshape(len(images), -1) - TAG) < 1e-6, axis=1)


def test_shapes_and_dtypes(phantom_h5):
    x, y = next(iter(make_dataset(phantom_h5, "train", size=32, batch_size=4, training=Training())))
    assert x.shape == (4, 32, 32, 1) and x.dtype == tf.float32
    assert y.shape == (4, 32, 32) and y.dtype == tf.int32
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0
    assert set(np.unique(y.numpy())) <= {0, 1, 2, 3}
    x, y = next(iter(make_dataset(phantom_h5, "valid", size=32, batch_size=4, one_hot=True)))
    assert y.shape == (4, 32, 32, 4) and y.dtype == tf.float32
    np.testing.assert_array_equal(y.numpy().sum(-1), 1.0)


def test_filters(phantom_h5):
    def frames(**kw):
        return sum(int(x.shape[0]) for x, _ in make_dataset(phantom_h5, "train", size=16, batch_size=5, select=Selection(**kw)))

    n_train = len(h5layout.list_patients(phantom_h5)["train"])
    assert frames() == 4 * n_train == count_samples(phantom_h5, "train")
    assert frames(views=["4CH"]) == 2 * n_train
    assert frames(views=["4CH"], phases=["ES"]) == n_train
    one = h5layout.list_patients(phantom_h5)["train"][:1]
    assert frames(patients=one) == 4
    arrays = h5layout.load_arrays(phantom_h5, "train")
    q = str(arrays["quality"][0])
    assert frames(qualities=[q]) == int((arrays["quality"] == q).sum())
    # a dict source is filtered the same way
    n = sum(int(x.shape[0]) for x, _ in make_dataset(arrays, "train", size=16, batch_size=5,
                                                     select=Selection(phases=["ED"])))
    assert n == 2 * n_train
    assert count_samples(arrays, "train", phases=["ED"]) == n
    with pytest.raises(EmptyDatasetError):
        make_dataset(phantom_h5, "train", select=Selection(patients=["nobody"]))
    with pytest.raises(ValueError, match="views"):
        Selection(views=["3CH"])
    with pytest.raises(ValueError, match="views"):
        count_samples(phantom_h5, "train", views=["3CH"])


def test_validation_is_one_ordered_pass_equal_to_direct_resize(phantom_h5):
    arrays = h5layout.load_arrays(phantom_h5, "valid")
    want_i = tf.image.resize(arrays["image"], [48, 48], method="area").numpy()
    want_m = tf.image.resize(arrays["mask"][..., None], [48, 48], method="nearest").numpy()[..., 0]
    got = list(make_dataset(phantom_h5, "valid", size=48, batch_size=3))
    got_i = np.concatenate([x.numpy() for x, _ in got])
    got_m = np.concatenate([y.numpy() for _, y in got])
    np.testing.assert_allclose(got_i, np.clip(want_i, 0, 1), atol=1e-6)
    np.testing.assert_array_equal(got_m, want_m)
    sizes = [int(x.shape[0]) for x, _ in got]  # one ordered pass, the last batch kept
    assert sum(sizes) == len(want_i) and sizes[-1] == (len(want_i) % 3 or 3)


def test_training_is_augmented_and_batches_are_full(phantom_h5):
    plain = make_dataset(phantom_h5, "train", size=32, batch_size=7, training=Training(seed=1, augment=None))
    aug = make_dataset(phantom_h5, "train", size=32, batch_size=7, training=Training(seed=1))
    for (xp, yp), (xa, ya) in zip(plain.take(3), aug.take(3)):
        assert xp.shape[0] == 7 and xa.shape[0] == 7  # drop_remainder for training
        assert not np.array_equal(xp.numpy(), xa.numpy())
    # repeats beyond one epoch
    n_train = count_samples(phantom_h5, "train")
    assert sum(1 for _ in plain.take(2 * math.ceil(n_train / 7))) == 2 * math.ceil(n_train / 7)


def test_synthetic_count_is_exact_in_every_prefix(phantom_h5):
    """Among the first n samples exactly floor(n * f) are synthetic, batch by batch, so a run's
    real and synthetic exposure is known exactly (the study's add/replace arms rest on it)."""
    for f in (0.25, 0.6, 9 / 34):
        ds = make_dataset(phantom_h5, "train", size=48, batch_size=16,
                          training=Training(seed=3, augment=None, synthetic=_synthetic(), synthetic_fraction=f))
        n = syn = 0
        for x, y in ds.take(12):
            tagged = _is_syn(x.numpy())
            syn += int(tagged.sum())
            n += len(tagged)
            assert (y.numpy()[tagged] == 1).all()  # masks travel with their images
            assert syn == math.floor(n * f + 1e-9) == synthetic_samples(n, f), (f, syn, n)
    assert synthetic_samples(34 * 16 * 3, 9 / 34) == 9 * 16 * 3


def test_fraction_zero_gives_no_synthetic(phantom_h5):
    ds = make_dataset(phantom_h5, "train", size=48, batch_size=16,
                      training=Training(augment=None, synthetic=_synthetic(), synthetic_fraction=0.0))
    assert not any(_is_syn(x.numpy()).any() for x, _ in ds.take(20))


def test_synthetic_of_another_size_is_resized(phantom_h5):
    ds = make_dataset(phantom_h5, "train", size=40, batch_size=8,
                      training=Training(synthetic=_synthetic(size=24), synthetic_fraction=0.5))
    x, y = next(iter(ds))
    assert x.shape == (8, 40, 40, 1) and y.shape == (8, 40, 40)


def test_deterministic_for_a_seed_and_resumable(phantom_h5):
    def batches(seed, skip=0, n=4):
        training = Training(seed=seed, skip_batches=skip, synthetic=_synthetic(), synthetic_fraction=0.3)
        ds = make_dataset(phantom_h5, "train", size=32, batch_size=4, training=training)
        return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]

    a, b, c = batches(5), batches(5), batches(6)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not all(np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    resumed = batches(5, skip=2, n=2)
    for (xa, ya), (xr, yr) in zip(a[2:], resumed):
        np.testing.assert_array_equal(xa, xr)
        np.testing.assert_array_equal(ya, yr)


def test_the_warp_is_passed_in(phantom_h5):
    """Each batch is the plain batch through augment_batch with seed (seed, batch index) and the
    chosen warp, also after skipped batches."""
    cfg = AugmentConfig(p_geometric=1.0)
    plain = list(make_dataset(phantom_h5, "train", size=32, batch_size=4, training=Training(seed=2, augment=None)).take(3))
    for warp in ("pillow", "tf"):
        aug = make_dataset(phantom_h5, "train", size=32, batch_size=4,
                           training=Training(seed=2, augment=cfg, warp_impl=warp, skip_batches=1))
        for b, ((x, y), (xa, ya)) in enumerate(zip(plain[1:], aug.take(2)), start=1):
            want_x, want_y = augment_batch(x, y, tf.constant([2, b], tf.int64), cfg, warp)
            np.testing.assert_array_equal(xa.numpy(), want_x.numpy())
            np.testing.assert_array_equal(ya.numpy(), want_y.numpy())


def test_bad_arguments(phantom_h5):
    for f in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="synthetic_fraction"):
            Training(synthetic=_synthetic(), synthetic_fraction=f)
    with pytest.raises(ValueError, match="synthetic source"):
        Training(synthetic_fraction=0.2)
    with pytest.raises(TypeError, match="augment"):
        Training(augment={"rotation": 5})
    with pytest.raises(ValueError, match="warp_impl"):
        Training(warp_impl="cv2")
    with pytest.raises(ValueError, match="skip_batches"):
        Training(skip_batches=-1)
    with pytest.raises(TypeError, match="Training"):
        make_dataset(phantom_h5, "train", training=True)
    with pytest.raises(TypeError, match="Selection"):
        make_dataset(phantom_h5, "train", select={"views": ["2CH"]})
    with pytest.raises(ValueError, match="split"):
        make_dataset(phantom_h5, "training")
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(phantom_h5, "train", batch_size=8, strategy=types.SimpleNamespace(num_replicas_in_sync=3))
    with pytest.raises(Exception, match="not found"):
        make_dataset(phantom_h5.with_name("missing.h5"), "train")


GLOBAL_BATCH = two_cpu_script("global_batch", """
import numpy as np
import tensorflow as tf
from cardigan_tf.data.pipeline import Training, make_dataset
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
def dataset(batch_size=6):
    return make_dataset(ARGS["phantom_h5"], "train", size=16, batch_size=batch_size, training=Training(seed=4),
                        strategy=strategy)
x, y = next(iter(dataset()))
assert tuple(x.shape) == (6, 16, 16, 1) and tuple(y.shape) == (6, 16, 16), (x.shape, y.shape)  # the global batch
xd, yd = next(iter(strategy.experimental_distribute_dataset(dataset())))
xs, ys = strategy.experimental_local_results(xd), strategy.experimental_local_results(yd)
assert [tuple(p.shape) for p in xs] == [(3, 16, 16, 1)] * 2, [p.shape for p in xs]  # per replica: half of it
assert [tuple(p.shape) for p in ys] == [(3, 16, 16)] * 2
np.testing.assert_array_equal(np.concatenate([p.numpy() for p in xs]), x.numpy())  # the same global batch, split
np.testing.assert_array_equal(np.concatenate([p.numpy() for p in ys]), y.numpy())
try:
    dataset(batch_size=5)
except ValueError as exc:
    assert "batch_size" in str(exc) and "2 replicas" in str(exc), exc
else:
    raise AssertionError("a global batch of 5 for 2 replicas was accepted")
print("GLOBAL-BATCH-OK")
""")


def test_strategy_global_batch(phantom_h5, two_cpus):
    """batch_size is the GLOBAL batch: 2 replicas (two logical CPUs, configured before TF starts,
    in a fresh process: conftest's ``two_cpus``) get half of each batch each; the default
    strategy gets all of it."""
    strategy = tf.distribute.get_strategy()
    x, _ = next(iter(make_dataset(phantom_h5, "train", size=16, batch_size=6, training=Training(), strategy=strategy)))
    assert strategy.num_replicas_in_sync == 1 and x.shape[0] == 6
    result = two_cpus[GLOBAL_BATCH]
    assert result["ok"], result["error"]
    assert "GLOBAL-BATCH-OK" in result["stdout"]


def test_tfrecord_source_matches_h5(phantom_h5, tmp_path):
    write_tfrecords(phantom_h5, tmp_path / "tfr", shards=2, progress=False)
    from_h5 = np.concatenate([x.numpy() for x, _ in make_dataset(phantom_h5, "valid", size=32, batch_size=4)])
    from_tfr = np.concatenate([x.numpy() for x, _ in make_dataset(tmp_path / "tfr", "valid", size=32, batch_size=4)])
    key = lambda a: np.sort(a.reshape(len(a), -1).sum(1))  # noqa: E731  (shard order differs)
    np.testing.assert_allclose(key(from_h5), key(from_tfr), rtol=1e-5)
    train = make_dataset(tmp_path / "tfr", "train", size=32, batch_size=4, training=Training(), one_hot=True)
    x, y = next(iter(train))
    assert x.shape == (4, 32, 32, 1) and y.shape == (4, 32, 32, 4)
    assert count_samples(tmp_path / "tfr", "valid") == len(from_h5)
    # training streams repeat past one epoch, as from a .h5 file
    epoch = math.ceil(count_samples(tmp_path / "tfr", "train") / 4)
    assert sum(1 for _ in train.take(2 * epoch)) == 2 * epoch


def test_dataset_info(phantom_h5):
    info = dataset_info(phantom_h5)
    pats = h5layout.list_patients(phantom_h5)
    for split, d in info.items():
        assert d["patients"] == len(pats[split]) and d["frames"] == 4 * len(pats[split])
        assert d["views"] == {"2CH": 2 * len(pats[split]), "4CH": 2 * len(pats[split])}
    assert "train:" in format_info(info)


def test_iterators_end_without_the_autotune_thread(phantom_h5):
    """tf.data's autotuning thread could hold up an iterator's destruction (the end of ``fit``) for
    tens of seconds when two training processes share the cores; every dataset turns it off."""
    for training in (Training(augment=None), Training(), None):
        ds = make_dataset(phantom_h5, "train" if training else "valid", size=16, batch_size=4, training=training)
        assert ds.options().autotune.enabled is False
        assert next(iter(ds))[0].shape == (4, 16, 16, 1)
