// trtq's TensorRT plugins: see plugins.h. Shapes, types and attributes follow trtq/plugins/trt_face.py.
#include "plugins.h"

#include "kernels.h"

#include <cmath>
#include <new>
#include <sstream>

namespace trtq
{
namespace
{

constexpr int32_t kOnnxFloat = 1;
constexpr int32_t kOnnxFloat16 = 10;
char const* const kCodebookName = "CodebookDequantize";
char const* const kLogName = "LogFakeQuantize";

bool readInt(nvinfer1::PluginField const& field, int32_t& value)
{
    if (field.data == nullptr || field.length < 1)
    {
        return false;
    }
    switch (field.type)
    {
    case nvinfer1::PluginFieldType::kINT32: value = *static_cast<int32_t const*>(field.data); return true;
    case nvinfer1::PluginFieldType::kINT64:
        value = static_cast<int32_t>(*static_cast<int64_t const*>(field.data));
        return true;
    case nvinfer1::PluginFieldType::kINT16: value = *static_cast<int16_t const*>(field.data); return true;
    case nvinfer1::PluginFieldType::kINT8: value = *static_cast<int8_t const*>(field.data); return true;
    default: return false;
    }
}

bool readFloat(nvinfer1::PluginField const& field, float& value)
{
    if (field.data == nullptr || field.length < 1)
    {
        return false;
    }
    switch (field.type)
    {
    case nvinfer1::PluginFieldType::kFLOAT32: value = *static_cast<float const*>(field.data); return true;
    case nvinfer1::PluginFieldType::kFLOAT64:
        value = static_cast<float>(*static_cast<double const*>(field.data));
        return true;
    default: return false;
    }
}

bool isLinear(nvinfer1::DynamicPluginTensorDesc const& desc, nvinfer1::DataType type)
{
    return desc.desc.type == type && desc.desc.format == nvinfer1::TensorFormat::kLINEAR;
}

int64_t volume(nvinfer1::Dims const& dims)
{
    int64_t count = 1;
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        count *= dims.d[i];
    }
    return count;
}

} // namespace

nvinfer1::IPluginCapability* PluginBase::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

// ---------------------------------------------------------------- CodebookDequantize

CodebookDequantizePlugin::CodebookDequantizePlugin(int32_t bits, int32_t groupSize, int32_t k, int32_t outDtype) noexcept
    : PluginBase(kCodebookName)
    , mBits(bits)
    , mGroupSize(groupSize)
    , mK(k)
    , mOutDtype(outDtype)
{
    setFields({nvinfer1::PluginField("bits", &mBits, nvinfer1::PluginFieldType::kINT32, 1),
        nvinfer1::PluginField("group_size", &mGroupSize, nvinfer1::PluginFieldType::kINT32, 1),
        nvinfer1::PluginField("k", &mK, nvinfer1::PluginFieldType::kINT32, 1),
        nvinfer1::PluginField("out_dtype", &mOutDtype, nvinfer1::PluginFieldType::kINT32, 1)});
}

nvinfer1::IPluginV3* CodebookDequantizePlugin::clone() noexcept
{
    auto* plugin = new (std::nothrow) CodebookDequantizePlugin(mBits, mGroupSize, mK, mOutDtype);
    if (plugin != nullptr)
    {
        plugin->mRows = mRows;
        plugin->mCodebookStride = mCodebookStride;
    }
    return plugin;
}

nvinfer1::DataType CodebookDequantizePlugin::outputType() const noexcept
{
    return mOutDtype == kOnnxFloat16 ? nvinfer1::DataType::kHALF : nvinfer1::DataType::kFLOAT;
}

std::string CodebookDequantizePlugin::checkShapes(
    nvinfer1::Dims const& codes, nvinfer1::Dims const& codebook, nvinfer1::Dims const& scales) const
{
    std::ostringstream why;
    if (codes.nbDims != 2 || codebook.nbDims != 2 || scales.nbDims != 2)
    {
        why << "codes, codebook and scales must be 2-D";
        return why.str();
    }
    int64_t const rows = scales.d[0];
    if (codes.d[0] != rows || codes.d[1] != packedRowWords(mK, mBits))
    {
        why << "codes are [" << codes.d[0] << ", " << codes.d[1] << "], expected [" << rows << ", "
            << packedRowWords(mK, mBits) << "] int32 words for k=" << mK << " at " << mBits << " bits";
    }
    else if ((codebook.d[0] != 1 && codebook.d[0] != rows) || codebook.d[1] != (1 << mBits))
    {
        why << "codebook is [" << codebook.d[0] << ", " << codebook.d[1] << "], expected [1 or " << rows << ", "
            << (1 << mBits) << "]";
    }
    else if (scales.d[1] != (mK + mGroupSize - 1) / mGroupSize)
    {
        why << "scales have " << scales.d[1] << " groups, expected " << (mK + mGroupSize - 1) / mGroupSize;
    }
    return why.str();
}

int32_t CodebookDequantizePlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (nbInputs != 3 || nbOutputs != 1)
    {
        logError("trtq::CodebookDequantize takes 3 inputs (codes, codebook, scales) and gives 1 output");
        return -1;
    }
    std::string const why = checkShapes(in[0].desc.dims, in[1].desc.dims, in[2].desc.dims);
    if (!why.empty())
    {
        logError("trtq::CodebookDequantize: " + why);
        return -1;
    }
    return 0;
}

int32_t CodebookDequantizePlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* /*inputTypes*/, int32_t /*nbInputs*/) const noexcept
{
    if (nbOutputs != 1)
    {
        return -1;
    }
    outputTypes[0] = outputType();
    return 0;
}

int32_t CodebookDequantizePlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != 3 || nbOutputs != 1 || inputs[2].nbDims != 2)
    {
        return -1;
    }
    outputs[0].nbDims = 2;
    outputs[0].d[0] = inputs[2].d[0]; // N: rows of the scales
    outputs[0].d[1] = exprBuilder.constant(mK);
    return 0;
}

bool CodebookDequantizePlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t /*nbInputs*/, int32_t /*nbOutputs*/) noexcept
{
    switch (pos)
    {
    case 0: return isLinear(inOut[0], nvinfer1::DataType::kINT32);
    case 1:
    case 2: return isLinear(inOut[pos], nvinfer1::DataType::kHALF);
    case 3: return isLinear(inOut[3], outputType());
    default: return false;
    }
}

int32_t CodebookDequantizePlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept
{
    if (nbInputs != 3 || !checkShapes(in[0].dims, in[1].dims, in[2].dims).empty())
    {
        return -1;
    }
    mRows = static_cast<int32_t>(in[2].dims.d[0]);
    mCodebookStride = in[1].dims.d[0] == 1 ? 0 : (1 << mBits);
    return 0;
}

int32_t CodebookDequantizePlugin::enqueue(nvinfer1::PluginTensorDesc const* /*inputDesc*/,
    nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs, void* const* outputs,
    void* /*workspace*/, cudaStream_t stream) noexcept
{
    auto const* words = static_cast<int32_t const*>(inputs[0]);
    auto const* codebook = static_cast<__half const*>(inputs[1]);
    auto const* scales = static_cast<__half const*>(inputs[2]);
    cudaError_t const status = outputType() == nvinfer1::DataType::kHALF
        ? launchCodebookDequantize(words, codebook, scales, mRows, mK, mBits, mGroupSize, mCodebookStride,
            static_cast<__half*>(outputs[0]), stream)
        : launchCodebookDequantize(words, codebook, scales, mRows, mK, mBits, mGroupSize, mCodebookStride,
            static_cast<float*>(outputs[0]), stream);
    return status == cudaSuccess ? 0 : -1;
}

// ---------------------------------------------------------------- LogFakeQuantize

LogFakeQuantizePlugin::LogFakeQuantizePlugin(int32_t bits, float scale, float step, float shift) noexcept
    : PluginBase(kLogName)
    , mBits(bits)
    , mScale(scale)
    , mStep(step)
    , mShift(shift)
{
    double const ln2 = std::log(2.0);
    mK1 = static_cast<float>(-1.0 / (static_cast<double>(step) * ln2));
    mK0 = static_cast<float>(std::log(static_cast<double>(scale)) / (static_cast<double>(step) * ln2));
    mK2 = static_cast<float>(-static_cast<double>(step) * ln2);
    setFields({nvinfer1::PluginField("bits", &mBits, nvinfer1::PluginFieldType::kINT32, 1),
        nvinfer1::PluginField("scale", &mScale, nvinfer1::PluginFieldType::kFLOAT32, 1),
        nvinfer1::PluginField("step", &mStep, nvinfer1::PluginFieldType::kFLOAT32, 1),
        nvinfer1::PluginField("shift", &mShift, nvinfer1::PluginFieldType::kFLOAT32, 1)});
}

nvinfer1::IPluginV3* LogFakeQuantizePlugin::clone() noexcept
{
    return new (std::nothrow) LogFakeQuantizePlugin(mBits, mScale, mStep, mShift);
}

int32_t LogFakeQuantizePlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* /*in*/, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    return nbInputs == 1 && nbOutputs == 1 ? 0 : -1;
}

int32_t LogFakeQuantizePlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != 1 || nbOutputs != 1)
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t LogFakeQuantizePlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbInputs != 1 || nbOutputs != 1)
    {
        return -1;
    }
    outputs[0] = inputs[0];
    return 0;
}

bool LogFakeQuantizePlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t /*nbInputs*/, int32_t /*nbOutputs*/) noexcept
{
    if (pos == 0)
    {
        return isLinear(inOut[0], nvinfer1::DataType::kFLOAT) || isLinear(inOut[0], nvinfer1::DataType::kHALF);
    }
    return pos == 1 && isLinear(inOut[1], inOut[0].desc.type);
}

int32_t LogFakeQuantizePlugin::onShapeChange(nvinfer1::PluginTensorDesc const* /*in*/, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    return nbInputs == 1 && nbOutputs == 1 ? 0 : -1;
}

int32_t LogFakeQuantizePlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs, void* const* outputs,
    void* /*workspace*/, cudaStream_t stream) noexcept
{
    int64_t const count = volume(inputDesc[0].dims);
    float const levels = static_cast<float>((1 << mBits) - 1);
    cudaError_t const status = inputDesc[0].type == nvinfer1::DataType::kHALF
        ? launchLogFakeQuantize(static_cast<__half const*>(inputs[0]), count, mScale, mShift, mK1, mK0, mK2, levels,
            static_cast<__half*>(outputs[0]), stream)
        : launchLogFakeQuantize(static_cast<float const*>(inputs[0]), count, mScale, mShift, mK1, mK0, mK2, levels,
            static_cast<float*>(outputs[0]), stream);
    return status == cudaSuccess ? 0 : -1;
}

// ---------------------------------------------------------------- creator

PluginCreator::PluginCreator(Kind kind) noexcept
    : mKind(kind)
{
    if (kind == Kind::kCODEBOOK_DEQUANTIZE)
    {
        for (char const* name : {"bits", "group_size", "k", "out_dtype"})
        {
            mFields.emplace_back(name, nullptr, nvinfer1::PluginFieldType::kINT32, 1);
        }
    }
    else
    {
        mFields.emplace_back("bits", nullptr, nvinfer1::PluginFieldType::kINT32, 1);
        for (char const* name : {"scale", "step", "shift"})
        {
            mFields.emplace_back(name, nullptr, nvinfer1::PluginFieldType::kFLOAT32, 1);
        }
    }
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

char const* PluginCreator::getPluginName() const noexcept
{
    return mKind == Kind::kCODEBOOK_DEQUANTIZE ? kCodebookName : kLogName;
}

nvinfer1::IPluginV3* PluginCreator::createPlugin(
    char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    int32_t bits = 0;
    int32_t groupSize = 0;
    int32_t k = 0;
    int32_t outDtype = kOnnxFloat;
    float scale = 0.0F;
    float step = 0.0F;
    float shift = 0.0F;
    bool ok = fc != nullptr;
    for (int32_t i = 0; ok && i < fc->nbFields; ++i)
    {
        nvinfer1::PluginField const& field = fc->fields[i];
        std::string const key = field.name == nullptr ? "" : field.name;
        if (key == "bits") ok = readInt(field, bits);
        else if (key == "group_size") ok = readInt(field, groupSize);
        else if (key == "k") ok = readInt(field, k);
        else if (key == "out_dtype") ok = readInt(field, outDtype);
        else if (key == "scale") ok = readFloat(field, scale);
        else if (key == "step") ok = readFloat(field, step);
        else if (key == "shift") ok = readFloat(field, shift);
    }
    std::string const node = name == nullptr ? "" : name;
    if (!ok)
    {
        logError("trtq::" + std::string(getPluginName()) + " node " + node + ": an attribute has the wrong type");
        return nullptr;
    }
    if (mKind == Kind::kCODEBOOK_DEQUANTIZE)
    {
        if ((bits != 3 && bits != 4) || groupSize < 1 || k < 1 || (outDtype != kOnnxFloat && outDtype != kOnnxFloat16))
        {
            logError("trtq::CodebookDequantize node " + node
                + ": needs bits 3 or 4, group_size >= 1, k >= 1, out_dtype 1 or 10 (re-export with trtq quantize "
                  "--plugins)");
            return nullptr;
        }
        return new (std::nothrow) CodebookDequantizePlugin(bits, groupSize, k, outDtype);
    }
    if (bits < 1 || bits > 16 || !(scale > 0.0F) || !(step > 0.0F) || !(shift >= 0.0F))
    {
        logError("trtq::LogFakeQuantize node " + node
            + ": needs bits in 1..16, scale > 0, step > 0, shift >= 0 (re-export with trtq quantize --plugins)");
        return nullptr;
    }
    return new (std::nothrow) LogFakeQuantizePlugin(bits, scale, step, shift);
}

} // namespace trtq
