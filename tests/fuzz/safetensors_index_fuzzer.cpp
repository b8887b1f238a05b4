// model.safetensors.index.json of a sharded checkpoint: the weight map against two fixed shards.
#include <vector>

#include "fuzz_util.h"
#include "lightdesk/safetensors.h"

using namespace lightdesk;

namespace {

// A directory with two shards holding "a" and "b" (F32 [2, 3]) and "c" (I64 [4]).
struct TwoShards {
  fuzz::ScratchDirectory directory;
  TwoShards() {
    const std::vector<float> values{1, 2, 3, 4, 5, 6};
    const std::vector<std::int64_t> ids{7, 8, 9, 10};
    write_safetensors(directory.path() / "model-00001-of-00002.safetensors",
                      {{"a", {2, 3}, values, {}}, {"b", {2, 3}, values, {}}});
    write_safetensors(directory.path() / "model-00002-of-00002.safetensors", {{"c", {4}, {}, ids}});
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const TwoShards shards;
  const fuzz::ScratchDirectory& directory = shards.directory;
  directory.write("model.safetensors.index.json", fuzz::as_text(data, size));
  fuzz::expect_clear_error([&] {
    const Checkpoint checkpoint(directory.path());
    for (const auto& [name, tensor] : checkpoint.tensors()) {
      fuzz::check(tensor != nullptr && tensor->name == name, "the index maps a name to that tensor");
      if (!is_float_dtype(tensor->dtype)) continue;
      std::vector<float> out(static_cast<std::size_t>(tensor->numel()));
      tensor->to_f32(out.data());
    }
  });
  return 0;
}
