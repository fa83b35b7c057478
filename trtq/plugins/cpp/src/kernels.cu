// CUDA kernels of trtq's TensorRT plugins; the per-element math is quant_math.h (also checked on the CPU).
// Built with -fmad=false: each multiply and add rounds as the numpy reference (trtq/plugins/reference.py) does.
#include "kernels.h"

namespace trtq
{
namespace
{

constexpr int32_t kDequantThreads = 128; // columns of one row per block
constexpr int32_t kLogThreads = 256;

template <typename T>
__device__ inline T fromFloat(float v);
template <>
__device__ inline float fromFloat<float>(float v)
{
    return v;
}
template <>
__device__ inline __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}

template <typename T>
__device__ inline float toFloat(T v)
{
    return static_cast<float>(v);
}
template <>
__device__ inline float toFloat<__half>(__half v)
{
    return __half2float(v);
}

// One block = kDequantThreads columns of one row; the row's codebook sits in shared memory.
template <typename T, int32_t BITS>
__global__ void codebookDequantizeKernel(int32_t const* __restrict__ words, __half const* __restrict__ codebook,
    __half const* __restrict__ scales, int32_t k, int32_t groupSize, int32_t codebookStride, T* __restrict__ out)
{
    constexpr int32_t kLevels = 1 << BITS;
    __shared__ float levels[kLevels];
    int32_t const row = blockIdx.y;
    if (threadIdx.x < kLevels)
    {
        levels[threadIdx.x] = __half2float(codebook[row * codebookStride + threadIdx.x]);
    }
    __syncthreads();
    int32_t const col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= k)
    {
        return;
    }
    int32_t const rowWords = packedRowWords(k, BITS);
    int32_t const nGroups = (k + groupSize - 1) / groupSize;
    uint32_t const* rowBits = reinterpret_cast<uint32_t const*>(words) + static_cast<int64_t>(row) * rowWords;
    float const scale = __half2float(scales[static_cast<int64_t>(row) * nGroups + col / groupSize]);
    out[static_cast<int64_t>(row) * k + col] = fromFloat<T>(codebookValue(rowBits, levels, col, BITS, scale));
}

template <typename T>
__global__ void logFakeQuantizeKernel(T const* __restrict__ x, int64_t count, float scale, float shift, float k1,
    float k0, float k2, float levels, T* __restrict__ y)
{
    int64_t const i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= count)
    {
        return;
    }
    y[i] = fromFloat<T>(logFakeQuantizeValue(toFloat(x[i]), scale, shift, k1, k0, k2, levels));
}

} // namespace

template <typename T>
cudaError_t launchCodebookDequantize(int32_t const* words, __half const* codebook, __half const* scales,
    int32_t nRows, int32_t k, int32_t bits, int32_t groupSize, int32_t codebookStride, T* out, cudaStream_t stream)
{
    if (nRows == 0 || k == 0)
    {
        return cudaSuccess;
    }
    dim3 const grid((k + kDequantThreads - 1) / kDequantThreads, nRows);
    if (bits == 4)
    {
        codebookDequantizeKernel<T, 4>
            <<<grid, kDequantThreads, 0, stream>>>(words, codebook, scales, k, groupSize, codebookStride, out);
    }
    else if (bits == 3)
    {
        codebookDequantizeKernel<T, 3>
            <<<grid, kDequantThreads, 0, stream>>>(words, codebook, scales, k, groupSize, codebookStride, out);
    }
    else
    {
        return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

template <typename T>
cudaError_t launchLogFakeQuantize(T const* x, int64_t count, float scale, float shift, float k1, float k0,
    float k2, float levels, T* y, cudaStream_t stream)
{
    if (count == 0)
    {
        return cudaSuccess;
    }
    auto const blocks = static_cast<uint32_t>((count + kLogThreads - 1) / kLogThreads);
    logFakeQuantizeKernel<T><<<blocks, kLogThreads, 0, stream>>>(x, count, scale, shift, k1, k0, k2, levels, y);
    return cudaGetLastError();
}

template cudaError_t launchCodebookDequantize<float>(
    int32_t const*, __half const*, __half const*, int32_t, int32_t, int32_t, int32_t, int32_t, float*, cudaStream_t);
template cudaError_t launchCodebookDequantize<__half>(
    int32_t const*, __half const*, __half const*, int32_t, int32_t, int32_t, int32_t, int32_t, __half*, cudaStream_t);
template cudaError_t launchLogFakeQuantize<float>(
    float const*, int64_t, float, float, float, float, float, float, float*, cudaStream_t);
template cudaError_t launchLogFakeQuantize<__half>(
    __half const*, int64_t, float, float, float, float, float, float, __half*, cudaStream_t);

} // namespace trtq
