#include "models/graph.h"

#include "models/minimax01.h"

namespace lightdesk {

ModelForward model_forward(const ModelConfig& config) {
  switch (config.family) {
    case ModelFamily::MiniMaxText01:
    case ModelFamily::MiniMaxM1:
    case ModelFamily::MiniMaxNative:
    case ModelFamily::MiniMaxVL01:
      return minimax01_forward;
  }
  throw Error("internal: no graph for model_type \"" + config.model_type + "\"");
}

}  // namespace lightdesk
