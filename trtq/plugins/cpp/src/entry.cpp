// Entry points TensorRT looks up in a dynamically loaded plugin library: `trtexec --dynamicPlugins=`,
// IPluginRegistry::loadLibrary (Python: trt.get_plugin_registry().load_library(path)).
#include "plugins.h"

#include <iostream>
#include <mutex>

// The library builds with hidden visibility; only these two entry points are exported.
#define TRTQ_EXPORT extern "C" __attribute__((visibility("default")))

namespace trtq
{
namespace
{
std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};
} // namespace

void logError(std::string const& message) noexcept
{
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    nvinfer1::ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
    if (logger != nullptr)
    {
        logger->log(nvinfer1::ILogger::Severity::kERROR, message.c_str());
    }
    else
    {
        std::cerr << "[trtq plugins] " << message << std::endl;
    }
}

} // namespace trtq

TRTQ_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    std::lock_guard<std::mutex> lock(trtq::gLoggerMutex);
    trtq::gLoggerFinder = finder;
}

TRTQ_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static trtq::PluginCreator codebook(trtq::PluginCreator::Kind::kCODEBOOK_DEQUANTIZE);
    static trtq::PluginCreator logQuant(trtq::PluginCreator::Kind::kLOG_FAKE_QUANTIZE);
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&codebook, &logQuant};
    nbCreators = 2;
    return creators;
}
