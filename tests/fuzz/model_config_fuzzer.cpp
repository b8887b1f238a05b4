// config.json as the language model (both checkpoint layouts) and the vision model read it. Input
// after a NUL byte becomes preprocessor_config.json, which the vision config reads too.
#include "fuzz_util.h"
#include "lightdesk/vision.h"
#include "src/model_config.h"

using namespace lightdesk;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::ScratchDirectory directory;
  const std::string_view input = fuzz::as_text(data, size);
  const std::size_t split = input.find('\0');
  directory.write("config.json", input.substr(0, split));
  if (split == std::string_view::npos)
    directory.remove("preprocessor_config.json");
  else
    directory.write("preprocessor_config.json", input.substr(split + 1));
  for (bool rope_full_head : {false, true}) {
    fuzz::expect_clear_error([&] {
      const ModelConfig config = load_model_config(directory.path(), rope_full_head);
      fuzz::check(config.num_layers > 0 && config.hidden_size > 0 && config.vocab_size > 0 && config.head_dim > 0,
                  "an accepted config has layers, heads of some width and a vocabulary");
      fuzz::check(config.layer_kinds.size() == static_cast<std::size_t>(config.num_layers),
                  "every layer has a kind");
      fuzz::check(config.num_heads % config.num_kv_heads == 0, "query heads share key/value heads evenly");
      fuzz::check(config.rotary_dim >= 0 && config.rotary_dim <= config.head_dim && config.rotary_dim % 2 == 0,
                  "the rotated width is even and within a head");
    });
  }
  fuzz::expect_clear_error([&] {
    const vision::VisionConfig config = vision::load_vision_config(directory.path());
    fuzz::check(config.patch_size > 0 && config.image_size > 0, "an accepted vision config has patches");
  });
  return 0;
}
