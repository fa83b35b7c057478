// CPU run of the plugins' per-element math (src/quant_math.h, the code the CUDA kernels call), for
// tests/test_plugins_cpp.py to compare with trtq's numpy reference. Reads one request on stdin, writes float32
// results on stdout, all little-endian:
//   dequantize: int32 0, bits, n, k, group, r; int32 words[n * W]; float32 codebook[r * 2^bits]; float32 scales[n * G]
//   log:        int32 1, count; float32 scale, shift, k1, k0, k2, levels; float32 x[count]
// Codebook and scales arrive as the float32 values of their float16 storage (the kernel's __half2float).
#include "quant_math.h"

#include <cstdio>
#include <vector>

namespace
{
template <typename T>
bool readAll(std::vector<T>& values)
{
    return std::fread(values.data(), sizeof(T), values.size(), stdin) == values.size();
}

bool dequantize()
{
    std::vector<int32_t> head(5);
    if (!readAll(head))
    {
        return false;
    }
    int32_t const bits = head[0], n = head[1], k = head[2], group = head[3], r = head[4];
    int32_t const rowWords = trtq::packedRowWords(k, bits);
    int32_t const nGroups = (k + group - 1) / group;
    std::vector<uint32_t> words(static_cast<size_t>(n) * rowWords);
    std::vector<float> codebook(static_cast<size_t>(r) << bits);
    std::vector<float> scales(static_cast<size_t>(n) * nGroups);
    if (!readAll(words) || !readAll(codebook) || !readAll(scales))
    {
        return false;
    }
    std::vector<float> out(static_cast<size_t>(n) * k);
    for (int32_t row = 0; row < n; ++row)
    {
        float const* levels = codebook.data() + (r == 1 ? 0 : static_cast<size_t>(row) << bits);
        for (int32_t col = 0; col < k; ++col)
        {
            out[static_cast<size_t>(row) * k + col] = trtq::codebookValue(words.data() + static_cast<size_t>(row) * rowWords,
                levels, col, bits, scales[static_cast<size_t>(row) * nGroups + col / group]);
        }
    }
    return std::fwrite(out.data(), sizeof(float), out.size(), stdout) == out.size();
}

bool logFakeQuantize()
{
    std::vector<int32_t> count(1);
    std::vector<float> c(6);
    if (!readAll(count) || !readAll(c))
    {
        return false;
    }
    std::vector<float> x(static_cast<size_t>(count[0]));
    if (!readAll(x))
    {
        return false;
    }
    for (float& v : x)
    {
        v = trtq::logFakeQuantizeValue(v, c[0], c[1], c[2], c[3], c[4], c[5]);
    }
    return std::fwrite(x.data(), sizeof(float), x.size(), stdout) == x.size();
}
} // namespace

int main()
{
    std::vector<int32_t> mode(1);
    if (!readAll(mode))
    {
        return 2;
    }
    bool const ok = mode[0] == 0 ? dequantize() : logFakeQuantize();
    return ok ? 0 : 1;
}
