"""trtq.plugins.reference: the numpy single source of truth against known answers."""

from __future__ import annotations

import numpy as np
import pytest

from trtq.plugins.reference import (
    NF4_LEVELS,
    assign_codes,
    dequantize_codebook,
    fake_quantize_log,
    pack_codes,
    packed_row_bytes,
    quantize_log,
    unpack_codes,
)


def test_nf4_levels_are_qlora_normal_map():
    from scipy.stats import norm

    offset = 0.9677083
    pos = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
    neg = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
    levels = np.sort(np.concatenate([pos, neg, [0.0]]))
    np.testing.assert_allclose(NF4_LEVELS, levels / levels.max(), atol=1e-7)


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("k", [1, 7, 8, 9, 61, 128])
def test_pack_unpack_round_trip_with_ragged_rows(bits, k):
    codes = np.random.default_rng(k).integers(0, 1 << bits, (3, k)).astype(np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.shape == (3, packed_row_bytes(k, bits))
    np.testing.assert_array_equal(unpack_codes(packed, bits, k), codes)


def test_packing_is_lsb_first():
    # 4-bit: low nibble first; 3-bit: codes 1..7,0 -> 24-bit word sum(c_i << 3i), little endian
    np.testing.assert_array_equal(pack_codes(np.array([[1, 2, 3]], np.uint8), 4), [[0x21, 0x03, 0, 0]])
    word = sum(c << (3 * i) for i, c in enumerate([1, 2, 3, 4, 5, 6, 7, 0]))
    np.testing.assert_array_equal(pack_codes(np.array([[1, 2, 3, 4, 5, 6, 7, 0]], np.uint8), 3),
                                  [[word & 255, (word >> 8) & 255, word >> 16]])
    with pytest.raises(ValueError):
        pack_codes(np.array([[8]], np.uint8), 3)


def test_dequantize_and_nearest_assignment_with_ragged_group():
    codebook = np.array([[-1.0, -0.25, 0.5, 1.0]], np.float16)  # a 2-bit book is enough here
    scales = np.array([[2.0, 0.5], [1.0, 4.0]], np.float16)  # K = 5, G = 3: groups [0:3], [3:5]
    w = np.array([[-1.9, 0.4, 1.2, 0.3, -0.1], [0.6, -0.3, 1.0, -3.0, 2.2]], np.float32)
    codes = assign_codes(w, codebook, scales, 3)
    np.testing.assert_array_equal(codes, [[0, 2, 2, 2, 1], [2, 1, 3, 0, 2]])
    out = dequantize_codebook(pack_codes(codes, 3), codebook, scales, 3, 3, 5)
    np.testing.assert_array_equal(out, [[-2.0, 1.0, 1.0, 0.25, -0.125], [0.5, -0.25, 1.0, -4.0, 2.0]])
    per_row = np.array([[0, 1, 2, 3], [0, 10, 20, 30]], np.float16)
    out = dequantize_codebook(pack_codes(np.array([[1, 3], [2, 1]], np.uint8), 3), per_row,
                              np.ones((2, 1), np.float16), 3, 8, 2)
    np.testing.assert_array_equal(out, [[1, 3], [20, 10]])


def test_log_sqrt2_levels_and_zero_code():
    x = np.array([1.0, 2 ** -0.5, 0.5, 0.3, 2.0, 0.0, -1.0, 1e-9], np.float32)
    codes = quantize_log(x, scale=1.0, step=0.5, shift=0.0, bits=4)
    np.testing.assert_array_equal(codes, [0, 1, 2, 3, 0, 15, 15, 15])
    out = fake_quantize_log(x, 1.0, 0.5, 0.0, 4)
    np.testing.assert_allclose(out, [1, 2 ** -0.5, 0.5, 2 ** -1.5, 1, 0, 0, 0], rtol=1e-6)


def test_shifted_log_maps_gelu_minimum_to_itself():
    shift = 0.25
    out = fake_quantize_log(np.array([-shift, 0.25, 3.0], np.float32), 4.0, 1.0, shift, 8)
    np.testing.assert_allclose(out, [-shift, 0.25, 3.75], rtol=1e-6)
