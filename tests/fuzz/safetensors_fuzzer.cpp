// A safetensors file: the header's JSON, its offsets against the data, and the conversion of
// every tensor's bytes to float32.
#include <cstring>

#include "fuzz_util.h"
#include "lightdesk/safetensors.h"

using namespace lightdesk;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::ScratchDirectory directory;
  const auto file = directory.write("model.safetensors", fuzz::as_text(data, size));
  fuzz::expect_clear_error([&] {
    const SafetensorsFile checkpoint(file);
    for (const auto& [name, tensor] : checkpoint.tensors()) {
      fuzz::check(tensor.data >= static_cast<const void*>(nullptr) && tensor.bytes <= checkpoint.file_size(),
                  "a tensor's bytes lie inside the file");
      fuzz::check(tensor.bytes == static_cast<std::size_t>(tensor.numel()) * dtype_size(tensor.dtype),
                  "a tensor's bytes match its shape and dtype");
    }
    read_safetensors(file);
  });
  return 0;
}
