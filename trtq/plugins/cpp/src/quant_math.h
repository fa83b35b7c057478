// Per-element math of trtq's plugins, shared by the CUDA kernels (kernels.cu) and the CPU check
// (test/math_check.cpp, which compares it with trtq's numpy reference). Plain C++: no CUDA header needed.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TRTQ_HOST_DEVICE __host__ __device__
#else
#define TRTQ_HOST_DEVICE
#endif

namespace trtq
{

//! Int32 words per packed row: bits * ceil(k / 8) bytes rounded up to whole words.
TRTQ_HOST_DEVICE inline int32_t packedRowWords(int32_t k, int32_t bits)
{
    return (bits * ((k + 7) / 8) + 3) / 4;
}

//! Code `col` of a packed row: bits [bits * col, bits * col + bits) of the row's little-endian word stream.
TRTQ_HOST_DEVICE inline uint32_t packedCode(uint32_t const* rowWords, int32_t col, int32_t bits)
{
    int32_t const bit = col * bits;
    uint32_t const offset = static_cast<uint32_t>(bit % 32);
    uint32_t code = rowWords[bit / 32] >> offset;
    if (offset + static_cast<uint32_t>(bits) > 32U) // a 3-bit code starting at bit 30 or 31 spills over
    {
        code |= rowWords[bit / 32 + 1] << (32U - offset);
    }
    return code & ((1U << bits) - 1U);
}

// Multiply and add rounded on their own (no FMA contraction), as the numpy reference rounds them.
TRTQ_HOST_DEVICE inline float mulRn(float a, float b)
{
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    volatile float product = a * b;
    return product;
#endif
}

TRTQ_HOST_DEVICE inline float addRn(float a, float b)
{
#if defined(__CUDA_ARCH__)
    return __fadd_rn(a, b);
#else
    volatile float sum = a + b;
    return sum;
#endif
}

//! Wc[n, col] = level * scale: the row's codebook level of code `col` times the group's scale, one fp32 multiply.
TRTQ_HOST_DEVICE inline float codebookValue(uint32_t const* rowWords, float const* levels, int32_t col, int32_t bits,
    float scale)
{
    return mulRn(levels[packedCode(rowWords, col, bits)], scale);
}

//! x_hat = scale * exp(k2 * max(q, 0)) - shift with q = rint(k1 * ln(max(x + shift, 0)) + k0), or -shift when
//! q >= levels (the zero code; also x + shift <= 0, where ln gives -inf and q = +inf, and NaN).
TRTQ_HOST_DEVICE inline float logFakeQuantizeValue(
    float x, float scale, float shift, float k1, float k0, float k2, float levels)
{
    float const v = fmaxf(addRn(x, shift), 0.0F);
    float const q = rintf(addRn(mulRn(logf(v), k1), k0));
    float const value = q < levels ? mulRn(scale, expf(mulRn(fmaxf(q, 0.0F), k2))) : 0.0F;
    return addRn(value, -shift);
}

} // namespace trtq
