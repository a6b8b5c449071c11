"""U-Net builder: shapes for every depth / norm / upsampling, errors, save-load round trip."""

import keras
import numpy as np
import pytest

from cardigan_tf.configs.seg import PRESETS as SEG_PRESETS
from cardigan_tf.models.unet import ConvBlock, UNetConfig, UpSample, build_unet, inference_model

from harness import run_layer_test, run_model_saving_test


@pytest.mark.parametrize("depth", [4, 5, 6])
def test_shapes_for_each_depth(depth):
    cfg = UNetConfig(size=64, depth=depth, base_filters=4, max_filters=16)
    model = build_unet(cfg)
    probs = np.asarray(model(np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32)))
    assert probs.shape == (2, 64, 64, 4)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # the bottleneck sits at size / 2**depth
    assert model.get_layer(f"pool{depth - 1}").output.shape[1] == 64 // 2**depth


@pytest.mark.parametrize("norm", ["batch", "group", "instance", "none"])
@pytest.mark.parametrize("upsampling", ["transpose", "nearest"])
def test_shapes_for_each_norm_and_upsampling(norm, upsampling):
    cfg = UNetConfig(size=32, depth=4, base_filters=4, max_filters=16, norm=norm, upsampling=upsampling,
                     dropout=0.2)
    probs = np.asarray(build_unet(cfg)(np.zeros((1, 32, 32, 1), np.float32), training=True))
    assert probs.shape == (1, 32, 32, 4)
    assert np.isfinite(probs).all()


def test_size_not_divisible_raises():
    with pytest.raises(ValueError, match="divisible"):
        build_unet(UNetConfig(size=48, depth=5))
    with pytest.raises(ValueError, match="depth"):
        build_unet(UNetConfig(size=64, depth=3))
    with pytest.raises(ValueError, match="norm"):
        build_unet(UNetConfig(norm="layer"))


def test_deep_supervision_outputs_and_inference_model():
    model = build_unet(UNetConfig(size=32, depth=4, base_filters=4, deep_supervision=True))
    outs = model(np.zeros((2, 32, 32, 1), np.float32))
    assert len(outs) == 3 and all(tuple(o.shape) == (2, 32, 32, 4) for o in outs)
    main = inference_model(model)
    assert len(main.outputs) == 1
    np.testing.assert_allclose(np.asarray(main(np.ones((1, 32, 32, 1), np.float32))),
                               np.asarray(model(np.ones((1, 32, 32, 1), np.float32))[0]), atol=1e-6)
    plain = build_unet(UNetConfig(size=32, depth=4, base_filters=4))
    assert inference_model(plain) is plain


def test_output_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_unet(UNetConfig(size=32, depth=4, base_filters=4))
        assert model.get_layer("enc0").compute_dtype == "bfloat16"
        assert np.asarray(model(np.zeros((1, 32, 32, 1), np.float32))).dtype == np.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("norm", ["batch", "group", "instance", "none"])
def test_conv_block_round_trip(norm):
    x = np.random.default_rng(2).random((2, 16, 16, 4), dtype=np.float32)
    run_layer_test(ConvBlock, dict(filters=8, norm=norm, groups=4, dropout=0.1, name="b"), x,
                   expected_output_shape=(2, 16, 16, 8), call_kwargs={"training": True})


@pytest.mark.parametrize("mode", ["transpose", "nearest"])
def test_upsample_round_trip(mode):
    x = np.random.default_rng(3).random((2, 8, 8, 4), dtype=np.float32)
    run_layer_test(UpSample, dict(filters=8, mode=mode, name="u"), x, expected_output_shape=(2, 16, 16, 8),
                   expected_num_trainable_weights=2)  # the (transposed) convolution's kernel and bias


def test_save_load_round_trip(tmp_path):
    model = build_unet(UNetConfig(size=32, depth=4, base_filters=4, norm="group", upsampling="transpose"))
    x = np.random.default_rng(1).random((2, 32, 32, 1), dtype=np.float32)
    run_model_saving_test(model, x, tmp_path, atol=1e-6, name="m.keras")


def test_presets():
    UNET_PRESETS = {k: f().model for k, f in SEG_PRESETS.items()}
    assert UNET_PRESETS["tiny"].size == 64 and UNET_PRESETS["tiny"].depth == 4
    assert UNET_PRESETS["camus"].size == 256 and UNET_PRESETS["camus"].base_filters == 32
    assert SEG_PRESETS["camus"]().train.epochs == 60 and SEG_PRESETS["camus"]().train.patience == 15
    for cfg in UNET_PRESETS.values():
        cfg.validate()
