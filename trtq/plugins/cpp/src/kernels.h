// CUDA kernels of trtq's TensorRT plugins (launchers; the kernels are in kernels.cu).
// Storage and math: trtq/plugins/__init__.py (format) and trtq/plugins/trt_face.py (int32 code words).
#pragma once

#include "quant_math.h"

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <cstdint>

namespace trtq
{

//! Wc[n, k] = float(codebook[r(n), code(n, k)]) * float(scales[n, k / groupSize]) for n < nRows, k < K.
//! words: int32 [nRows, rowWords], row n's packed `bits`-bit code stream, little-endian;
//! codebookStride: 0 (one codebook) or 1 << bits (one per row). out: float or half [nRows, K].
template <typename T>
cudaError_t launchCodebookDequantize(int32_t const* words, __half const* codebook, __half const* scales,
    int32_t nRows, int32_t k, int32_t bits, int32_t groupSize, int32_t codebookStride, T* out, cudaStream_t stream);

//! y = s * 2^(-a * max(q, 0)) - c with q = rint(k1 * ln(max(x + c, 0)) + k0), or -c when q >= levels.
template <typename T>
cudaError_t launchLogFakeQuantize(T const* x, int64_t count, float scale, float shift, float k1, float k0,
    float k2, float levels, T* y, cudaStream_t stream);

} // namespace trtq
