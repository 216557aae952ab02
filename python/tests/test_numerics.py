import numpy as np
import pytest

import fireq

rng = np.random.default_rng()

# Every finite e4m3 value, by code (0x7F and 0xFF are NaN).
FINITE_CODES = np.array([c for c in range(256) if c & 0x7F != 0x7F], dtype=np.uint8)


def test_fp8_known_values():
    x = np.array([0.0, 1.0, -0.5, 448.0, 1000.0, -np.inf, 2.0 ** -9, 2.0 ** -10, 0.0625, np.nan], np.float32)
    codes = fireq.fp8_e4m3(x)
    assert codes.dtype == np.uint8
    assert codes.tolist() == [0x00, 0x38, 0xB0, 0x7E, 0x7E, 0xFE, 0x01, 0x00, 0x18, 0x7F]
    values = fireq.fp8_e4m3_to_float(np.array([0x38, 0x7E, 0x01, 0xC0], np.uint8))
    assert values.tolist() == [1.0, 448.0, 2.0 ** -9, -2.0]
    assert np.isnan(fireq.fp8_e4m3_to_float(np.array([0x7F, 0xFF], np.uint8))).all()


def test_fp8_codes_round_trip():
    values = fireq.fp8_e4m3_to_float(FINITE_CODES)
    back = fireq.fp8_e4m3(values)
    # +0 and -0 both come back as themselves; every other code is its own value's rounding.
    assert np.array_equal(back, FINITE_CODES)


def test_fp8_rounds_to_nearest_and_keeps_shape():
    grid = fireq.fp8_e4m3_to_float(FINITE_CODES).astype(np.float64)
    x = (rng.standard_normal((7, 33)) * rng.choice([1e-3, 1.0, 100.0], (7, 33))).astype(np.float32)
    codes = fireq.fp8_e4m3(x)
    assert codes.shape == x.shape
    rounded = fireq.fp8_e4m3_to_float(codes).astype(np.float64)
    nearest = np.abs(x.astype(np.float64)[..., None] - grid).min(axis=-1)
    np.testing.assert_array_equal(np.abs(x - rounded), nearest)


def unpack_int4(packed):
    low = (packed & 0x0F).astype(np.int8)
    high = (packed >> 4).astype(np.int8)
    q = np.stack([low, high], axis=-1).reshape(packed.shape[0], -1)
    return np.where(q >= 8, q - 16, q)


@pytest.mark.parametrize("group", [64, 128])
def test_int4_packing_and_round_trip(group):
    n, k = 24, 4 * group
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    packed, scales = fireq.quantize_int4(w, group)
    assert packed.shape == (n, k // 2) and packed.dtype == np.uint8
    assert scales.shape == (n, k // group) and scales.dtype == np.uint8

    # The scale is fp8(absmax / 7); q = round(w / scale) in [-8, 7]; canonical nibble order.
    absmax = np.abs(w.reshape(n, k // group, group)).max(axis=-1)
    np.testing.assert_array_equal(scales, fireq.fp8_e4m3(absmax / 7))
    sigma = np.repeat(fireq.fp8_e4m3_to_float(scales), group, axis=1)
    q = unpack_int4(packed)
    assert q.min() >= -8 and q.max() <= 7
    np.testing.assert_array_equal(q, np.clip(np.rint(w / sigma), -8, 7))

    w_hat = fireq.dequantize_int4(packed, scales, group)
    np.testing.assert_array_equal(w_hat, q * sigma)
    assert np.all(np.abs(w - w_hat) <= 0.5 * sigma * (1 + 1e-6) + np.maximum(0, np.abs(w) - 7 * sigma))


def test_int4_bad_input():
    with pytest.raises(fireq.Error, match="not a multiple of the group size"):
        fireq.quantize_int4(rng.standard_normal((4, 100)), 64)
    with pytest.raises(fireq.Error, match="2-D"):
        fireq.quantize_int4(rng.standard_normal(128), 64)
    with pytest.raises(fireq.Error, match="scales must be"):
        fireq.dequantize_int4(np.zeros((4, 64), np.uint8), np.zeros((4, 3), np.uint8), 64)
