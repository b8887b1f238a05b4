#include "engine_worker.h"

#include <QFile>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "remote_chat.h"

namespace lightdesk::gui {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::filesystem::path to_path(const QString& path) { return std::filesystem::path(path.toStdString()); }

QString to_qstring(std::string_view text) { return QString::fromUtf8(text.data(), static_cast<qsizetype>(text.size())); }

}  // namespace

std::uint64_t available_host_memory() {
  QFile meminfo(QStringLiteral("/proc/meminfo"));
  if (!meminfo.open(QIODevice::ReadOnly | QIODevice::Text)) return 0;
  // /proc files report size 0, so read to the end rather than testing atEnd().
  for (const QByteArray& line : meminfo.readAll().split('\n')) {
    if (!line.startsWith("MemAvailable:")) continue;
    const QList<QByteArray> fields = line.simplified().split(' ');  // "MemAvailable: N kB"
    return fields.size() >= 2 ? fields[1].toULongLong() * 1024 : 0;
  }
  return 0;
}

EngineWorker::EngineWorker(QString gpus, QObject* parent) : QObject(parent), gpus_(std::move(gpus)) {}
EngineWorker::~EngineWorker() = default;

void EngineWorker::requestStop() { stop_requested_ = true; }

void EngineWorker::clearStop() { stop_requested_ = false; }

void EngineWorker::forgetSavedState() {
  if (chat_) chat_->forget_saved_state();
}

void EngineWorker::report_gpu_memory() {
  if (model_ && model_->info().backend == BackendKind::Cuda) emit gpuMemoryMeasured(gpu_devices());
}

std::pair<std::uint64_t, QString> available_memory(BackendKind backend) {
  if (backend == BackendKind::Cuda) {
    for (const GpuDevice& gpu : gpu_devices())
      if (gpu.free_bytes) return {*gpu.free_bytes, EngineWorker::tr("GPU %1 (%2)").arg(gpu.index).arg(to_qstring(gpu.name))};
  }
  return {available_host_memory(), EngineWorker::tr("host memory")};
}

ModelCheck memory_check(const ModelInfo& info, std::uint64_t available_bytes, const QString& memory_place) {
  ModelCheck check;
  check.model = info;
  check.directory = QString::fromStdString(info.directory.string());
  check.description = EngineWorker::tr("%1, %2 layers, %3 M parameters")
                          .arg(to_qstring(info.model_type))
                          .arg(info.num_layers)
                          .arg(static_cast<double>(info.parameter_count) / 1e6, 0, 'f', 1);
  check.weight_bytes = info.weight_bytes;
  check.context_tokens = info.max_context;
  check.session_bytes = info.session_bytes(info.max_context);
  check.available_bytes = available_bytes;
  check.memory_place = memory_place;
  // The engine's one planning policy, for the one place the model would live.
  PlanRequest request;
  request.devices = {{memory_place.toStdString(), available_bytes}};
  request.backend = info.backend;
  request.context_tokens = info.max_context;
  check.plan = plan_memory(info, request);
  if (!check.plan.plans.empty() && !check.plan.plans.front().ranks.empty())
    check.workspace_bytes = check.plan.plans.front().ranks.front().workspace_bytes;
  check.fitting_context = longest_fitting_context(info, request);
  return check;
}


ModelOptions EngineWorker::options_for(const QString& backend) const {
  ModelOptions options;
  options.backend = parse_backend_kind(backend.toStdString());
  if (!gpus_.isEmpty()) options.devices = parse_devices(gpus_.toStdString());
  return options;
}

ModelCheck EngineWorker::inspect(const QString& directory, const QString& backend) const {
  const ModelInfo info = Model::inspect(to_path(directory), options_for(backend));
  const auto [available, place] = available_memory(info.backend);
  ModelCheck check = memory_check(info, available, place);
  check.directory = directory;
  return check;
}

void EngineWorker::checkModel(const QString& directory, const QString& backend) {
  try {
    emit modelChecked(inspect(directory, backend));
  } catch (const std::exception& e) {
    emit modelRejected(directory, to_qstring(e.what()));
  }
}

void EngineWorker::unload() {
  endpoint_.clear();
  chat_.reset();
  vision_.reset();
  format_.reset();
  tokenizer_.reset();
  model_.reset();
}

void EngineWorker::loadModel(const QString& directory, const QString& backend) {
  try {
    const ModelCheck check = inspect(directory, backend);
    unload();
    const std::filesystem::path path = to_path(directory);
    // One signal per 0.5 % at most: a checkpoint of thousands of tensors must not flood the
    // window's event queue.
    std::uint64_t reported = 0;
    model_ = Model::open(path, options_for(backend), [this, &reported](std::uint64_t done, std::uint64_t total) {
      if (done == total || done - reported >= total / 200) {
        reported = done;
        emit loadProgress(static_cast<qint64>(done), static_cast<qint64>(total));
      }
      return !stop_requested_;
    });
    tokenizer_ = Tokenizer::open(path);
    format_ = ChatFormat::for_model(path, *tokenizer_);
    // A VL-01 checkpoint carries its vision tower (the chat format has checked its placeholder).
    if (model_->info().family == ModelFamily::MiniMaxVL01) vision_ = vision::VisionModel::open(path, options_for(backend));
    chat_ = std::make_unique<conversation::Chat>(*model_, *tokenizer_, *format_, vision_.get());
    const SamplingDefaults defaults = format_->sampling_defaults();
    SamplingSettings sampling;
    sampling.temperature = defaults.temperature;
    sampling.top_p = defaults.top_p;
    report_gpu_memory();
    emit modelLoaded(check, format_->family() == ChatFamily::M1 ? QStringLiteral("M1") : QStringLiteral("Text01"),
                     sampling);
  } catch (const std::exception& e) {
    unload();
    emit modelFailed(directory, to_qstring(e.what()));
  }
}

void EngineWorker::connectEndpoint(const QString& endpoint, const QString& apiKey, const QString& model) {
  try {
    const std::string name = remote::remote_model({endpoint.toStdString(), apiKey.toStdString(), model.toStdString()});
    unload();
    endpoint_ = endpoint;
    api_key_ = apiKey;
    remote_model_ = to_qstring(name);
    emit endpointConnected(endpoint_, remote_model_);
  } catch (const std::exception& e) {
    emit endpointFailed(endpoint, to_qstring(e.what()));
  }
}

void EngineWorker::readDocument(const QString& path) {
  if (!endpoint_.isEmpty()) {
    // The server's tokenizer is not here: the document is read, its tokens are not counted.
    try {
      const Document document = load_document(to_path(path));
      QList<qint64> page_offsets;
      for (const DocumentAnchor& anchor : document.anchors) page_offsets.append(static_cast<qint64>(anchor.offset));
      emit documentReady(path, to_qstring(document.text), page_offsets, 0);
    } catch (const std::exception& e) {
      emit documentFailed(path, to_qstring(e.what()));
    }
    return;
  }
  if (!tokenizer_) {
    emit documentFailed(path, tr("Open a model first: token counts depend on its tokenizer."));
    return;
  }
  try {
    // A progress signal per slice: a large file's count takes long enough to be watched.
    const conversation::ReadDocument read = conversation::read_document(
        to_path(path), *tokenizer_, model_->info().max_context, [this, &path](std::int64_t done, std::int64_t total) {
          emit documentProgress(path, done, total);
          return !stop_requested_;
        });
    QList<qint64> page_offsets;
    for (const DocumentAnchor& anchor : read.document.anchors) page_offsets.append(static_cast<qint64>(anchor.offset));
    emit documentReady(path, to_qstring(read.document.text), page_offsets, read.tokens);
  } catch (const Cancelled&) {
    emit documentFailed(path, tr("stopped"));
  } catch (const std::exception& e) {
    emit documentFailed(path, to_qstring(e.what()));
  }
}

void EngineWorker::generateRemote(const Turns& conversation, const QString& systemPrompt,
                                  const SamplingSettings& sampling) {
  GenerationStats stats;
  try {
    remote::RemoteRequest request;
    if (!systemPrompt.isEmpty()) request.messages.push_back({"system", systemPrompt.toStdString()});
    for (const conversation::Turn& turn : conversation) {
      if (!turn.images.empty()) throw Error("images cannot be sent to a server (documents only, as text)");
      request.messages.push_back({turn.from_user ? "user" : "assistant", conversation::prompt_text(turn)});
    }
    request.max_tokens = sampling.max_new_tokens;
    request.temperature = sampling.temperature;
    request.top_p = sampling.top_p;
    const auto start = Clock::now();
    Clock::time_point first_piece;
    std::int64_t pieces = 0;
    const remote::RemoteAnswer answer = remote::ask_remote(
        {endpoint_.toStdString(), api_key_.toStdString(), remote_model_.toStdString()}, request,
        [&](const std::string& reasoning, const std::string& content) {
          if (pieces++ == 0) first_piece = Clock::now();
          emit textPiece(to_qstring(reasoning), to_qstring(content));
          return !stop_requested_;
        });
    stats.stopped = answer.stopped;
    stats.prompt_tokens = answer.prompt_tokens;
    stats.generated_tokens = answer.completion_tokens > 0 ? answer.completion_tokens : pieces;
    if (pieces > 0) {
      stats.seconds_to_first_token = std::chrono::duration<double>(first_piece - start).count();
      const double decode_seconds = seconds_since(first_piece);
      if (decode_seconds > 0)
        stats.decode_tokens_per_second = static_cast<double>(stats.generated_tokens) / decode_seconds;
    }
    // No state: the server keeps its own.
    emit generationFinished(stats, nullptr);
  } catch (const std::exception& e) {
    emit generationFailed(to_qstring(e.what()));
  }
}

void EngineWorker::generate(const Turns& conversation, const QString& systemPrompt, const SamplingSettings& sampling,
                            qint64 sessionId) {
  if (!endpoint_.isEmpty()) {
    generateRemote(conversation, systemPrompt, sampling);
    return;
  }
  if (!chat_) {
    emit generationFailed(tr("No model is loaded."));
    return;
  }
  GenerationStats stats;
  stats.context_size = model_->info().max_context;
  try {
    const conversation::Chat::Prompt prompt = chat_->prepare(conversation, sessionId, systemPrompt.toStdString());
    Session& session = chat_->session();
    stats.reused_tokens = prompt.reused;
    stats.prompt_tokens = static_cast<std::int64_t>(prompt.tokens.size());
    const std::int64_t room = stats.context_size - stats.reused_tokens - stats.prompt_tokens;

    GenerationOptions options;
    options.max_new_tokens = std::min<std::int64_t>(sampling.max_new_tokens, room);
    options.sampling = {static_cast<float>(sampling.temperature), sampling.top_k, static_cast<float>(sampling.top_p)};
    options.stop_token = format_->end_of_turn();
    options.prefill.embedding_overrides = prompt.embedding_overrides;
    conversation::PrefillEstimate estimate(prompt.reused, stats.prompt_tokens);
    options.prefill.progress = [this, &estimate](const FeedProgress& progress) {
      estimate.add(progress.tokens_done, progress.seconds);
      const double rate = progress.seconds > 0 ? static_cast<double>(progress.tokens_done) / progress.seconds : 0.0;
      emit prefillProgress(progress.tokens_done, progress.tokens_total, rate, estimate.seconds_left());
      return !stop_requested_;
    };

    ChatOutputParser parser(format_->family());
    const auto start = Clock::now();
    Clock::time_point first_token;
    std::int64_t pieces = 0;
    auto send = [&](const ChatOutputParser::Delta& delta) {
      if (!delta.reasoning.empty() || !delta.answer.empty())
        emit textPiece(to_qstring(delta.reasoning), to_qstring(delta.answer));
    };
    std::vector<TokenId> generated;
    try {
      generated = generate_text(session, *tokenizer_, prompt.tokens, options, [&](std::string_view text) {
        if (pieces++ == 0) first_token = Clock::now();
        send(parser.feed(text));
        if (stop_requested_) throw Cancelled("stopped by the user");
      });
    } catch (const Cancelled&) {
      stats.stopped = true;
    }
    send(parser.finish());
    std::optional<EngineState::Streamed> state;
    // The session now holds the whole turn, so the next question can continue from it.
    if (!stats.stopped) {
      chat_->finish(conversation, parser.answer(), generated);
      state.emplace(chat_->stream_state());
    }
    stats.context_used = session.position();
    // A stop during the prompt's read leaves fewer positions than the prompt: no answer tokens.
    stats.generated_tokens = stats.stopped ? std::max<std::int64_t>(0, stats.context_used - stats.reused_tokens -
                                                                           stats.prompt_tokens)
                                           : static_cast<std::int64_t>(generated.size());
    if (pieces > 0) {
      stats.seconds_to_first_token = std::chrono::duration<double>(first_token - start).count();
      const double decode_seconds = seconds_since(first_token);
      if (decode_seconds > 0)
        stats.decode_tokens_per_second = static_cast<double>(stats.generated_tokens) / decode_seconds;
    }
    report_gpu_memory();
    emit generationFinished(stats, state ? state->state : nullptr);
    if (state) {
      // The repository reads the state from here as it writes it: no second copy of it in
      // memory, this thread waiting on the disk meanwhile. Dropped unread, it is not waited for.
      state->state.reset();
      // A window closing meanwhile stops the wait (its thread waits for this one).
      state->producer.serve(session, [this] { return stop_requested_.load(); });
    }
  } catch (const std::exception& e) {
    emit generationFailed(to_qstring(e.what()));
  }
}

void EngineWorker::adoptState(const SavedStatePtr& state, const Turns& held, const QString& systemPrompt,
                              qint64 sessionId) {
  if (!chat_) return;
  const auto start = Clock::now();
  try {
    chat_->adopt(*state, held, sessionId, systemPrompt.toStdString());
    emit stateAdopted(static_cast<qint64>(state->token_count()), seconds_since(start));
  } catch (const std::exception& e) {
    emit stateRefused(to_qstring(e.what()));
  }
}

}  // namespace lightdesk::gui
