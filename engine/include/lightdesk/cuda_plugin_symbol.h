// For libraries above the engine whose CUDA code lives in the engine's CUDA plugin too
// (liblightdesk_cuda.so: the vision tower): the plugin the engine loads, once per process.
#pragma once

namespace lightdesk {

// The address of the extern "C" symbol `name` in the CUDA plugin; throws Error saying why there
// is none (the plugin is not installed, does not load, or lacks the symbol).
void* cuda_plugin_symbol(const char* name);

}  // namespace lightdesk
