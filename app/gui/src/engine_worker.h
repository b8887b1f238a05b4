// The engine side of the desktop application: a QObject that lives on its own QThread, owns the
// Model, its tokenizer and chat format and the one engine Session, and talks to the window only
// through queued signals and slots, so the window never waits on the engine.
#pragma once

#include <QObject>
#include <QString>
#include <QStringList>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>

#include "engine_state.h"
#include "sampling_settings.h"
#include "lightdesk/conversation.h"
#include "lightdesk/engine.h"
#include "lightdesk/text.h"
#include "lightdesk/vision.h"

namespace lightdesk::gui {

// What a model directory needs against what this machine has: Model::inspect and the engine's
// memory plan (plan_memory) for the place the model would live.
struct ModelCheck {
  ModelInfo model;
  QString directory;
  QString description;          // e.g. "minimax_m1, 4 layers, 0.3 M parameters"
  std::uint64_t weight_bytes = 0;
  std::int64_t context_tokens = 0;      // the context the session memory is counted for
  std::uint64_t session_bytes = 0;      // state of one session holding context_tokens
  std::uint64_t available_bytes = 0;    // memory available now where the model would live
  QString memory_place;                 // where that is: "host memory", "GPU 0 (NVIDIA H200)"
  std::uint64_t workspace_bytes = 0;    // a prefill chunk's buffers (and on a GPU the runtime's reserve)
  std::int64_t fitting_context = 0;     // the largest context the plan fits (0: none)
  PlanReport plan;                      // for memory_place, at context_tokens
  bool fits() const { return plan.chosen.has_value(); }
};

// A conversation as the engine thread is given it (the shared library's turns).
using Turns = std::vector<lightdesk::conversation::Turn>;

struct GenerationStats {
  std::int64_t prompt_tokens = 0;       // tokens fed for this turn (after the cached prefix)
  std::int64_t reused_tokens = 0;       // tokens of the prompt already in the session's state
  std::int64_t generated_tokens = 0;   // 0 when stopped before the answer began
  double seconds_to_first_token = 0.0;
  double decode_tokens_per_second = 0.0;
  std::int64_t context_used = 0;
  std::int64_t context_size = 0;
  bool stopped = false;                 // the user stopped it
};

// Host memory available for new allocations (MemAvailable of /proc/meminfo), 0 if unknown.
std::uint64_t available_host_memory();
// What the model of `info` needs (weights, one session at its full context) against
// `available_bytes` of `memory_place`, and the largest context that fits.
ModelCheck memory_check(const ModelInfo& info, std::uint64_t available_bytes, const QString& memory_place);
// The memory a model on `backend` would use and how much of it is free now: the current GPU's
// for the CUDA backend (the one the engine runs on), host memory otherwise.
std::pair<std::uint64_t, QString> available_memory(BackendKind backend);

class EngineWorker : public QObject {
  Q_OBJECT

 public:
  // `gpus`: the settings' GPU list ("0,1"; empty: the engine's default), given to every model.
  explicit EngineWorker(QString gpus = {}, QObject* parent = nullptr);
  ~EngineWorker() override;

  // Thread-safe: asks the running load, prefill or generation to stop at its next step. Called
  // directly from the GUI thread (a queued slot would wait behind the running work).
  void requestStop();
  // Thread-safe: forgets an earlier stop. The window calls it as it sends new work (a load, a
  // document, a question), so that a Stop pressed before that work begins still stops it.
  void clearStop();

 public slots:
  // Validates the directory without loading weights, for `backend` ("auto", "cpu", "cuda":
  // parse_backend_kind); emits modelChecked or modelRejected (the loaded model, if any, stays).
  void checkModel(const QString& directory, const QString& backend);
  // Loads weights, tokenizer and chat format; emits loadProgress, then modelLoaded or modelFailed.
  void loadModel(const QString& directory, const QString& backend);
  // Reads a document and counts its tokens (documentProgress as it goes; Stop ends it); emits
  // documentReady or documentFailed (also for one larger than the model's context). Virtual, as
  // generate: a stand-in (the tests') can play a slow engine.
  virtual void readDocument(const QString& path);
  // Renders the conversation of repository session `sessionId` (ending with a user message)
  // after its system prompt (empty: none), feeds what the session does not hold yet and streams
  // the answer: prefillProgress, textPiece..., then generationFinished or generationFailed.
  virtual void generate(const lightdesk::gui::Turns& conversation, const QString& systemPrompt,
                        const lightdesk::gui::SamplingSettings& sampling, qint64 sessionId);
  // Takes `state` (saved in repository session `sessionId` after the turns `held`; a store
  // checkpoint is read here, part by part) as the session's state, so that a conversation
  // continuing them feeds only what follows: emits stateAdopted, or stateRefused (a state of
  // another system prompt than `systemPrompt` among them; the session then starts the next
  // conversation from an empty state).
  void adoptState(const lightdesk::gui::SavedStatePtr& state, const lightdesk::gui::Turns& held,
                  const QString& systemPrompt, qint64 sessionId);
  // Answers from an OpenAI-compatible server at `endpoint` (lightdesk-server, or vLLM or SGLang on
  // a cluster) instead of a local model, which is unloaded: asks the server for `model` (empty:
  // the first it lists), then emits endpointConnected or endpointFailed. Documents then go to it
  // as text; no model state is kept on this computer. loadModel goes back to a local model.
  void connectEndpoint(const QString& endpoint, const QString& apiKey, const QString& model);
  // A state handed out for saving may not have been saved (a write failed): the next finished
  // turn's state is copied whole rather than as what follows the held one.
  void forgetSavedState();

 signals:
  void modelChecked(const lightdesk::gui::ModelCheck& check);
  // Each GPU's memory, measured on this thread while a model runs on a GPU: before modelLoaded
  // and before each generationFinished (the window's thread never starts a CUDA query itself).
  void gpuMemoryMeasured(const std::vector<lightdesk::GpuDevice>& gpus);
  void loadProgress(qint64 bytesDone, qint64 bytesTotal);
  // `family` names the chat format ("M1", "Text01"); `sampling` is its recommended sampling.
  void modelLoaded(const lightdesk::gui::ModelCheck& check, const QString& family,
                   const lightdesk::gui::SamplingSettings& sampling);
  void modelRejected(const QString& directory, const QString& message);
  // Loading failed: no model is loaded any more.
  void modelFailed(const QString& directory, const QString& message);
  // `pageOffsets`: PDF only, the byte offset in the UTF-8 text where each page starts.
  void documentReady(const QString& path, const QString& text, const QList<qint64>& pageOffsets, qint64 tokens);
  void documentFailed(const QString& path, const QString& message);
  void documentProgress(const QString& path, qint64 bytesDone, qint64 bytesTotal);
  // `secondsLeft` < 0: not known yet.
  void prefillProgress(qint64 tokensDone, qint64 tokensTotal, double tokensPerSecond, double secondsLeft);
  void textPiece(const QString& reasoning, const QString& answer);
  // `state`: a copy of the session's state after the finished turn, to save with it; null when
  // the answer was stopped (the state then holds no complete turn).
  void generationFinished(const lightdesk::gui::GenerationStats& stats, const lightdesk::gui::EngineStatePtr& state);
  void stateAdopted(qint64 tokens, double seconds);
  void stateRefused(const QString& message);
  void generationFailed(const QString& message);
  void endpointConnected(const QString& endpoint, const QString& model);
  void endpointFailed(const QString& endpoint, const QString& message);

 private:
  ModelOptions options_for(const QString& backend) const;
  void report_gpu_memory();
  ModelCheck inspect(const QString& directory, const QString& backend) const;
  void unload();
  void generateRemote(const Turns& conversation, const QString& systemPrompt, const SamplingSettings& sampling);

  const QString gpus_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::optional<ChatFormat> format_;
  std::unique_ptr<vision::VisionModel> vision_;  // a MiniMax-VL-01 model's vision tower
  std::unique_ptr<conversation::Chat> chat_;
  std::atomic<bool> stop_requested_{false};
  // The server that answers instead of a local model (connectEndpoint); empty endpoint: none.
  QString endpoint_, api_key_, remote_model_;
};

}  // namespace lightdesk::gui
