// Host-side check of libtrtq_plugins.so through TensorRT's plugin interfaces only (no GPU, no libnvinfer):
// entry points, creators, attribute parsing as the ONNX parser passes attributes (INT -> kINT32, FLOAT ->
// kFLOAT32), output types, format combinations, shape checks, serialization round trip, error messages.
// Usage: plugin_api_check path/to/libtrtq_plugins.so   (prints "plugin api: N checks passed" or fails)
#include "NvInferRuntime.h"

#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{
int gChecks = 0;
int gFailures = 0;

void check(bool ok, char const* what)
{
    ++gChecks;
    if (!ok)
    {
        ++gFailures;
        std::printf("FAILED: %s\n", what);
    }
}

class CaptureLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kERROR)
        {
            last = msg;
        }
    }
    std::string last;
};

class Finder : public ILoggerFinder
{
public:
    ILogger* findLogger() override { return &logger; }
    CaptureLogger logger;
};

DynamicPluginTensorDesc desc(DataType type, std::vector<int64_t> const& dims)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = type;
    d.desc.format = TensorFormat::kLINEAR;
    d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        d.desc.dims.d[i] = dims[i];
    }
    d.min = d.max = d.opt = d.desc.dims;
    return d;
}

template <typename T>
T* capability(IPluginV3* plugin, PluginCapabilityType type)
{
    return static_cast<T*>(plugin->getCapabilityInterface(type));
}

int32_t fieldInt(PluginFieldCollection const* fc, char const* name)
{
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        if (std::strcmp(fc->fields[i].name, name) == 0)
        {
            return *static_cast<int32_t const*>(fc->fields[i].data);
        }
    }
    return -12345;
}
} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::printf("usage: %s libtrtq_plugins.so\n", argv[0]);
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        std::printf("FAILED: dlopen: %s\n", dlerror());
        return 1;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
    check(getCreators != nullptr && setLoggerFinder != nullptr, "getCreators and setLoggerFinder are exported");
    if (getCreators == nullptr || setLoggerFinder == nullptr)
    {
        return 1;
    }
    Finder finder;
    setLoggerFinder(&finder);
    int32_t nbCreators = 0;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    check(nbCreators == 2, "two creators");
    check(std::strcmp(creators[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0, "creator is V3One");
    auto* codebookCreator = static_cast<IPluginCreatorV3One*>(creators[0]);
    auto* logCreator = static_cast<IPluginCreatorV3One*>(creators[1]);
    check(std::string(codebookCreator->getPluginName()) == "CodebookDequantize"
            && std::string(codebookCreator->getPluginNamespace()) == "trtq"
            && std::string(codebookCreator->getPluginVersion()) == "1",
        "CodebookDequantize / trtq / 1");
    check(std::string(logCreator->getPluginName()) == "LogFakeQuantize", "LogFakeQuantize creator");
    check(codebookCreator->getFieldNames()->nbFields == 4 && logCreator->getFieldNames()->nbFields == 4,
        "4 fields each");

    // CodebookDequantize: bits 3, group 64, k 100, float16 output, as the ONNX parser passes them (kINT32).
    int32_t bits = 3, group = 64, k = 100, outDtype = 10;
    PluginField fields[] = {PluginField("bits", &bits, PluginFieldType::kINT32, 1),
        PluginField("group_size", &group, PluginFieldType::kINT32, 1), PluginField("k", &k, PluginFieldType::kINT32, 1),
        PluginField("out_dtype", &outDtype, PluginFieldType::kINT32, 1)};
    PluginFieldCollection fc{4, fields};
    IPluginV3* plugin = codebookCreator->createPlugin("w0", &fc, TensorRTPhase::kBUILD);
    check(plugin != nullptr, "codebook plugin created");
    if (plugin == nullptr)
    {
        return 1;
    }
    auto* core = capability<IPluginV3OneCore>(plugin, PluginCapabilityType::kCORE);
    auto* build = capability<IPluginV3OneBuild>(plugin, PluginCapabilityType::kBUILD);
    auto* runtime = capability<IPluginV3OneRuntime>(plugin, PluginCapabilityType::kRUNTIME);
    check(std::string(core->getPluginName()) == "CodebookDequantize", "core name");
    check(std::string(build->getInterfaceInfo().kind) == "PLUGIN_V3ONE_BUILD", "build capability");
    check(build->getNbOutputs() == 1, "one output");
    DataType inTypes[] = {DataType::kINT32, DataType::kHALF, DataType::kHALF};
    DataType outType = DataType::kFLOAT;
    check(build->getOutputDataTypes(&outType, 1, inTypes, 3) == 0 && outType == DataType::kHALF, "fp16 output");
    // N = 5 rows; 3 * ceil(100 / 8) = 39 bytes -> 10 words; ceil(100 / 64) = 2 groups
    DynamicPluginTensorDesc io[] = {desc(DataType::kINT32, {5, 10}), desc(DataType::kHALF, {1, 8}),
        desc(DataType::kHALF, {5, 2}), desc(DataType::kHALF, {5, 100})};
    check(build->supportsFormatCombination(0, io, 3, 1), "codes int32");
    check(build->supportsFormatCombination(1, io, 3, 1) && build->supportsFormatCombination(2, io, 3, 1),
        "codebook and scales fp16");
    check(build->supportsFormatCombination(3, io, 3, 1), "output fp16");
    DynamicPluginTensorDesc wrongType = desc(DataType::kINT8, {5, 39});
    DynamicPluginTensorDesc ioInt8[] = {wrongType, io[1], io[2], io[3]};
    check(!build->supportsFormatCombination(0, ioInt8, 3, 1), "int8 codes refused");
    check(build->configurePlugin(io, 3, io + 3, 1) == 0, "shapes accepted");
    DynamicPluginTensorDesc perRow[] = {io[0], desc(DataType::kHALF, {5, 8}), io[2]};
    check(build->configurePlugin(perRow, 3, io + 3, 1) == 0, "one codebook per row accepted");
    DynamicPluginTensorDesc badWords[] = {desc(DataType::kINT32, {5, 13}), io[1], io[2]};
    check(build->configurePlugin(badWords, 3, io + 3, 1) != 0, "wrong word count refused");
    check(finder.logger.last.find("expected [5, 10] int32 words") != std::string::npos, "error names the shape");
    DynamicPluginTensorDesc badGroups[] = {io[0], io[1], desc(DataType::kHALF, {5, 3})};
    check(build->configurePlugin(badGroups, 3, io + 3, 1) != 0, "wrong group count refused");
    PluginTensorDesc shapes[] = {io[0].desc, perRow[1].desc, io[2].desc};
    check(runtime->onShapeChange(shapes, 3, &io[3].desc, 1) == 0, "onShapeChange");

    // serialization round trip: the runtime phase recreates the plugin from getFieldsToSerialize
    PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
    check(fieldInt(saved, "bits") == 3 && fieldInt(saved, "group_size") == 64 && fieldInt(saved, "k") == 100
            && fieldInt(saved, "out_dtype") == 10,
        "serialized fields");
    IPluginV3* restored = codebookCreator->createPlugin("w0", saved, TensorRTPhase::kRUNTIME);
    check(restored != nullptr, "recreated from serialized fields");
    IPluginV3* cloned = plugin->clone();
    check(cloned != nullptr && cloned != plugin, "clone");

    // int64 attributes (tensorrt.plugin / trtexec style) are read too; bad values are refused with a message
    int64_t bits64 = 4;
    PluginField fields64[] = {PluginField("bits", &bits64, PluginFieldType::kINT64, 1), fields[1], fields[2], fields[3]};
    PluginFieldCollection fc64{4, fields64};
    IPluginV3* plugin64 = codebookCreator->createPlugin("w1", &fc64, TensorRTPhase::kBUILD);
    check(plugin64 != nullptr, "int64 bits accepted");
    int32_t badBits = 5;
    PluginField badFields[] = {PluginField("bits", &badBits, PluginFieldType::kINT32, 1), fields[1], fields[2], fields[3]};
    PluginFieldCollection badFc{4, badFields};
    check(codebookCreator->createPlugin("w2", &badFc, TensorRTPhase::kBUILD) == nullptr, "bits 5 refused");
    check(finder.logger.last.find("needs bits 3 or 4") != std::string::npos, "error names the fix");

    // LogFakeQuantize: float attributes, output type follows the input
    int32_t logBits = 4;
    float scale = 1.0F, step = 0.5F, shift = 0.0F;
    PluginField logFields[] = {PluginField("bits", &logBits, PluginFieldType::kINT32, 1),
        PluginField("scale", &scale, PluginFieldType::kFLOAT32, 1), PluginField("step", &step, PluginFieldType::kFLOAT32, 1),
        PluginField("shift", &shift, PluginFieldType::kFLOAT32, 1)};
    PluginFieldCollection logFc{4, logFields};
    IPluginV3* logPlugin = logCreator->createPlugin("a0", &logFc, TensorRTPhase::kBUILD);
    check(logPlugin != nullptr, "log plugin created");
    if (logPlugin != nullptr)
    {
        auto* logBuild = capability<IPluginV3OneBuild>(logPlugin, PluginCapabilityType::kBUILD);
        DataType halfIn = DataType::kHALF;
        DataType logOut = DataType::kFLOAT;
        check(logBuild->getOutputDataTypes(&logOut, 1, &halfIn, 1) == 0 && logOut == DataType::kHALF, "log keeps fp16");
        DynamicPluginTensorDesc logIo[] = {desc(DataType::kFLOAT, {2, 3}), desc(DataType::kFLOAT, {2, 3})};
        check(logBuild->supportsFormatCombination(0, logIo, 1, 1) && logBuild->supportsFormatCombination(1, logIo, 1, 1),
            "log fp32 in/out");
        DynamicPluginTensorDesc logMixed[] = {desc(DataType::kFLOAT, {2, 3}), desc(DataType::kHALF, {2, 3})};
        check(!logBuild->supportsFormatCombination(1, logMixed, 1, 1), "log output type must equal input type");
    }
    float badScale = 0.0F;
    PluginField badLog[] = {logFields[0], PluginField("scale", &badScale, PluginFieldType::kFLOAT32, 1), logFields[2],
        logFields[3]};
    PluginFieldCollection badLogFc{4, badLog};
    check(logCreator->createPlugin("a1", &badLogFc, TensorRTPhase::kBUILD) == nullptr, "scale 0 refused");

    delete plugin;
    delete restored;
    delete cloned;
    delete plugin64;
    delete logPlugin;
    std::printf("plugin api: %d checks, %d failed\n", gChecks, gFailures);
    return gFailures == 0 ? 0 : 1;
}
