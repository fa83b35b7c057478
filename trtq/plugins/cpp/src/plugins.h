// trtq's TensorRT plugins (IPluginV3): trtq::CodebookDequantize and trtq::LogFakeQuantize, version "1".
// The ONNX nodes they implement are written by trtq/plugins/trt_face.py (`trtq quantize --plugins`); the
// TensorRT ONNX parser maps a node to a plugin by its op_type, `plugin_namespace` and `plugin_version`.
#pragma once

#include "NvInferRuntime.h"

#include <string>
#include <utility>
#include <vector>

namespace trtq
{

constexpr char const* kNamespace = "trtq";
constexpr char const* kVersion = "1";

//! Log a plugin error through the logger TensorRT handed to setLoggerFinder (stderr when none).
void logError(std::string const& message) noexcept;

//! Name, version, namespace and the three capabilities shared by both plugins.
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit PluginBase(char const* name) noexcept : mName(name) {}

    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    char const* getPluginName() const noexcept override { return mName; }
    char const* getPluginVersion() const noexcept override { return kVersion; }
    char const* getPluginNamespace() const noexcept override { return kNamespace; }
    int32_t getNbOutputs() const noexcept override { return 1; }
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept override
    {
        return clone();
    }
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &mFieldCollection; }

protected:
    //! The attributes serialized into the engine: fields pointing at the derived plugin's own members.
    void setFields(std::vector<nvinfer1::PluginField> fields) noexcept
    {
        mFields = std::move(fields);
        mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
        mFieldCollection.fields = mFields.data();
    }

private:
    char const* mName;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

//! Wc [N, K] (float or half) from int32 code words [N, W], a float16 codebook [R, 2^bits] (R = 1 or N)
//! and float16 scales [N, ceil(K / group_size)]: Wc[n, k] = codebook[r(n), code] * scales[n, k / G].
class CodebookDequantizePlugin final : public PluginBase
{
public:
    CodebookDequantizePlugin(int32_t bits, int32_t groupSize, int32_t k, int32_t outDtype) noexcept;

    nvinfer1::IPluginV3* clone() noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    //! Empty when the shapes match the attributes, else what is wrong.
    std::string checkShapes(nvinfer1::Dims const& codes, nvinfer1::Dims const& codebook,
        nvinfer1::Dims const& scales) const;

private:
    nvinfer1::DataType outputType() const noexcept;

    int32_t mBits;
    int32_t mGroupSize;
    int32_t mK;
    int32_t mOutDtype; // ONNX TensorProto type of the output: 1 FLOAT, 10 FLOAT16
    int32_t mRows{0};
    int32_t mCodebookStride{0};
};

//! x_hat = s * 2^(-step * max(q, 0)) - shift, q = round(-log2((x + shift) / s) / step), zero code 2^bits - 1.
class LogFakeQuantizePlugin final : public PluginBase
{
public:
    LogFakeQuantizePlugin(int32_t bits, float scale, float step, float shift) noexcept;

    nvinfer1::IPluginV3* clone() noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

private:
    int32_t mBits;
    float mScale;
    float mStep;
    float mShift;
    float mK1; // -1 / (step ln 2), rounded to float as the reference rounds it
    float mK0; // ln(scale) / (step ln 2)
    float mK2; // -step ln 2
};

//! Creator of one plugin type: parses the node's attributes (INT32/INT64, FLOAT32/FLOAT64 fields).
class PluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    enum class Kind
    {
        kCODEBOOK_DEQUANTIZE,
        kLOG_FAKE_QUANTIZE
    };

    explicit PluginCreator(Kind kind) noexcept;

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mFieldCollection; }
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override { return kVersion; }
    char const* getPluginNamespace() const noexcept override { return kNamespace; }

private:
    Kind mKind;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace trtq
