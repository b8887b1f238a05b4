#include "openai_server.h"

#include "answer_text.h"
#include "state_cache.h"

#include <httplib.h>

#include <algorithm>
#include <cstdio>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <span>

#include <nlohmann/json.hpp>

namespace lightdesk::server {
namespace {

using json = nlohmann::json;

std::string dump(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

// A request the server refuses, answered as an OpenAI error object.
struct RequestError : std::runtime_error {
  RequestError(int http_status, std::string error_type, std::string message, std::string error_param = {},
               std::string error_code = {})
      : std::runtime_error(std::move(message)),
        status(http_status),
        type(std::move(error_type)),
        param(std::move(error_param)),
        code(std::move(error_code)) {}
  int status;
  std::string type, param, code;
};

RequestError invalid(std::string message, std::string param = {}, std::string code = {}) {
  return {400, "invalid_request_error", std::move(message), std::move(param), std::move(code)};
}

json error_body(const std::string& message, const std::string& type, const std::string& param = {},
                const std::string& code = {}) {
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

void send_error(httplib::Response& res, const RequestError& e) {
  res.status = e.status;
  res.set_content(dump(error_body(e.what(), e.type, e.param, e.code)), "application/json");
}

std::int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Fields a request may carry; anything else is refused, as OpenAI does, so that a misspelt
// option is not silently ignored.
void check_fields(const json& body, const std::set<std::string>& known) {
  for (const auto& [key, value] : body.items())
    if (!known.count(key)) throw invalid("Unrecognized request argument supplied: " + key, key);
}

template <typename T>
std::optional<T> optional_field(const json& body, const std::string& name) {
  const auto it = body.find(name);
  if (it == body.end() || it->is_null()) return std::nullopt;
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    throw invalid("'" + name + "' has the wrong type", name);
  }
}

json request_object(const std::string& text) {
  json body;
  try {
    body = json::parse(text);
  } catch (const json::parse_error& e) {
    throw invalid(std::string("the body is not valid JSON: ") + e.what());
  }
  if (!body.is_object()) throw invalid("the body must be a JSON object");
  return body;
}

// Options common to chat and text completions.
struct Common {
  std::string model;
  std::int64_t max_tokens = 0;
  SamplingParams sampling;
  std::uint64_t seed = 0;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

Common read_common(const json& body, std::int64_t max_tokens_limit, const SamplingDefaults& defaults) {
  Common c;
  c.model = optional_field<std::string>(body, "model").value_or("");
  auto max_tokens = optional_field<std::int64_t>(body, "max_completion_tokens");
  if (!max_tokens) max_tokens = optional_field<std::int64_t>(body, "max_tokens");
  c.max_tokens = max_tokens.value_or(std::min<std::int64_t>(max_tokens_limit, 1024));
  if (c.max_tokens < 1 || c.max_tokens > max_tokens_limit)
    throw invalid("max_tokens must be from 1 to " + std::to_string(max_tokens_limit) + " (the server's limit), got " +
                      std::to_string(c.max_tokens),
                  "max_tokens");
  const double temperature = optional_field<double>(body, "temperature").value_or(defaults.temperature);
  if (!(temperature >= 0.0 && temperature <= 2.0)) throw invalid("temperature must be from 0 to 2", "temperature");
  const double top_p = optional_field<double>(body, "top_p").value_or(defaults.top_p);
  if (!(top_p > 0.0 && top_p <= 1.0)) throw invalid("top_p must be within (0, 1]", "top_p");
  const int top_k = optional_field<int>(body, "top_k").value_or(0);
  if (top_k < 0) throw invalid("top_k must be 0 or more", "top_k");
  c.sampling = {static_cast<float>(temperature), top_k, static_cast<float>(top_p)};
  // No seed: a fresh one per request, as OpenAI's answers vary.
  const auto seed = optional_field<std::int64_t>(body, "seed");
  c.seed = seed ? static_cast<std::uint64_t>(*seed) : std::random_device{}();
  if (const auto it = body.find("stop"); it != body.end() && !it->is_null()) {
    if (it->is_string())
      c.stop.push_back(it->get<std::string>());
    else if (it->is_array() && it->size() <= 4 && std::all_of(it->begin(), it->end(), [](const json& s) { return s.is_string(); }))
      c.stop = it->get<std::vector<std::string>>();
    else
      throw invalid("stop must be a string or a list of up to 4 strings", "stop");
    std::erase(c.stop, std::string());
  }
  if (optional_field<int>(body, "n").value_or(1) != 1) throw invalid("only n = 1 is supported", "n");
  for (const char* penalty : {"presence_penalty", "frequency_penalty"})
    if (optional_field<double>(body, penalty).value_or(0.0) != 0.0)
      throw invalid(std::string(penalty) + " is not supported (only 0)", penalty);
  c.stream = optional_field<bool>(body, "stream").value_or(false);
  if (const auto it = body.find("stream_options"); it != body.end() && !it->is_null()) {
    if (!it->is_object()) throw invalid("stream_options must be an object", "stream_options");
    check_fields(*it, {"include_usage"});
    c.include_usage = optional_field<bool>(*it, "include_usage").value_or(false);
  }
  return c;
}

struct Generation {
  std::string finish_reason = "length";  // "stop", "length", "tool_calls", or "cancelled"
  std::int64_t prompt_tokens = 0, completion_tokens = 0, reused_tokens = 0;
  std::string reasoning, content;
  std::vector<ToolCall> tool_calls;
};

// The requests waiting for the model, in arrival order; the first one runs.
class Queue {
 public:
  explicit Queue(int limit) : limit_(limit) {}
  // A place in the queue, left when destroyed.
  class Place {
   public:
    Place(Queue& queue, std::uint64_t id) : queue_(queue), id_(id) {}
    ~Place() { queue_.leave(id_); }
    Place(const Place&) = delete;
    Place& operator=(const Place&) = delete;
    // Blocks until this request is first; false when the server stops first.
    bool wait_turn() { return queue_.wait_for_front(id_); }

   private:
    Queue& queue_;
    std::uint64_t id_;
  };
  // Null when `limit` requests are waiting already (or the server is stopping).
  std::unique_ptr<Place> join() {
    std::lock_guard lock(mutex_);
    if (stopping_ || waiting_.size() > static_cast<std::size_t>(limit_)) return nullptr;
    waiting_.push_back(next_id_);
    return std::make_unique<Place>(*this, next_id_++);
  }
  void stop() {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    changed_.notify_all();
  }

 private:
  bool wait_for_front(std::uint64_t id) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return stopping_ || waiting_.front() == id; });
    return !stopping_;
  }
  void leave(std::uint64_t id) {
    std::lock_guard lock(mutex_);
    std::erase(waiting_, id);
    changed_.notify_all();
  }

  int limit_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::uint64_t> waiting_;
  std::uint64_t next_id_ = 0;
  bool stopping_ = false;
};

std::unique_ptr<StateCache> make_state_cache(const ServerOptions& options, const ModelInfo& model) {
  if (options.state_database.empty()) return std::make_unique<MemoryStateCache>(options.state_cache_bytes);
  return std::make_unique<StoredStateCache>(options.state_database, model, options.state_cache_bytes);
}

}  // namespace

struct Server::Impl {
  Impl(Model& served, const Tokenizer& served_tokenizer, const ChatFormat& served_format, ServerOptions server_options)
      : model(served),
        tokenizer(served_tokenizer),
        format(served_format),
        options(std::move(server_options)),
        queue(options.queue_limit),
        states(make_state_cache(options, served.info())),
        session(served.create_session()) {}

  Model& model;
  const Tokenizer& tokenizer;
  const ChatFormat& format;
  ServerOptions options;
  Queue queue;
  httplib::Server http;
  int port = 0;
  std::atomic<std::uint64_t> next_id{1};
  std::atomic<bool> stopping{false};
  std::mutex counters_mutex;
  ServerCounters counters;

  // Used by the request at the queue's front only. The session keeps the last request's prompt
  // and answer; `states` the ends of earlier prompts and answers.
  std::unique_ptr<StateCache> states;
  std::unique_ptr<Session> session;

  void routes();
  // Keeps the session's state for later requests; a failure to keep it fails no request.
  void keep_state();
  bool authorized(const httplib::Request& req) const;

  // Generates the answer to `prompt` (the caller holds the queue's front). `on_piece` gets the
  // text as it comes and returns false when the client has gone, which stops the generation.
  Generation generate(std::span<const TokenId> prompt, const Common& c, TokenId stop_token, bool chat,
                      const std::function<bool(const AnswerPiece&)>& on_piece);

  std::vector<TokenId> chat_prompt(const json& body, const Common& c);
  std::vector<TokenId> text_prompt(const json& body);
  void check_room(std::size_t prompt_tokens, const Common& c) const;

  void chat_completions(const httplib::Request& req, httplib::Response& res);
  void completions(const httplib::Request& req, httplib::Response& res);
  void respond(httplib::Response& res, bool chat, std::vector<TokenId> prompt, Common c);
};

void Server::Impl::keep_state() {
  try {
    states->keep(*session);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lightdesk-server: a state was not kept: %s\n", e.what());
  }
}

bool Server::Impl::authorized(const httplib::Request& req) const {
  if (options.api_key.empty()) return true;
  const std::string expected = "Bearer " + options.api_key;
  const std::string& given = req.get_header_value("Authorization");
  // Compared in time independent of where the strings differ.
  unsigned char difference = given.size() == expected.size() ? 0 : 1;
  for (std::size_t i = 0; i < given.size() && i < expected.size(); ++i)
    difference |= static_cast<unsigned char>(given[i] ^ expected[i]);
  return difference == 0;
}

void Server::Impl::check_room(std::size_t prompt_tokens, const Common& c) const {
  const std::int64_t context = model.info().max_context;
  if (prompt_tokens == 0) throw invalid("the prompt is empty");
  if (context > 0 && static_cast<std::int64_t>(prompt_tokens) + c.max_tokens > context)
    throw invalid("the prompt's " + std::to_string(prompt_tokens) + " tokens and max_tokens " +
                      std::to_string(c.max_tokens) + " exceed the model's context of " + std::to_string(context) +
                      " tokens",
                  "messages", "context_length_exceeded");
}

std::vector<TokenId> Server::Impl::chat_prompt(const json& body, const Common& c) {
  const auto messages = body.find("messages");
  if (messages == body.end() || !messages->is_array() || messages->empty())
    throw invalid("'messages' must be a non-empty list", "messages");
  Conversation conversation;
  for (std::size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string param = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw invalid(param + " must be an object", param);
    check_fields(m, {"role", "content", "name", "tool_call_id"});
    const std::string role = optional_field<std::string>(m, "role").value_or("");
    ChatMessage message;
    if (role == "system" || role == "developer")
      message.role = ChatMessage::Role::System;
    else if (role == "user")
      message.role = ChatMessage::Role::User;
    else if (role == "assistant")
      message.role = ChatMessage::Role::Assistant;
    else if (role == "tool")
      message.role = ChatMessage::Role::Tool;
    else
      throw invalid(param + ".role must be system, user, assistant or tool, got \"" + role + "\"", param + ".role");
    std::string text;
    const auto content = m.find("content");
    if (content == m.end() || content->is_null()) {
      if (message.role != ChatMessage::Role::Assistant) throw invalid(param + " has no content", param + ".content");
    } else if (content->is_string()) {
      text = content->get<std::string>();
    } else if (content->is_array()) {
      for (const json& part : *content) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
          throw invalid(param + ".content: only text parts are supported", param + ".content");
        text += part["text"].get<std::string>();
      }
    } else {
      throw invalid(param + ".content must be a string or a list of parts", param + ".content");
    }
    ChatPart part;
    part.text = std::move(text);
    // A tool result names its tool: `name`, else the call's id.
    if (message.role == ChatMessage::Role::Tool)
      part.name = optional_field<std::string>(m, "name").value_or(optional_field<std::string>(m, "tool_call_id").value_or(""));
    message.parts.push_back(std::move(part));
    conversation.messages.push_back(std::move(message));
  }
  if (const auto tools = body.find("tools"); tools != body.end() && !tools->is_null()) {
    if (!tools->is_array()) throw invalid("'tools' must be a list", "tools");
    for (const json& tool : *tools) {
      if (!tool.is_object() || tool.value("type", "") != "function" || !tool.contains("function") ||
          !tool["function"].is_object())
        throw invalid("each tool must be {\"type\": \"function\", \"function\": {...}}", "tools");
      conversation.tools.push_back(dump(tool["function"]));
    }
  }
  if (const auto choice = optional_field<json>(body, "tool_choice"); choice && *choice != "auto")
    throw invalid("only tool_choice \"auto\" is supported", "tool_choice");
  std::vector<TokenId> ids;
  try {
    ids = format.render(conversation).encode(tokenizer, options.threads);
  } catch (const Error& e) {
    throw invalid(e.what(), "messages");
  }
  check_room(ids.size(), c);
  return ids;
}

std::vector<TokenId> Server::Impl::text_prompt(const json& body) {
  const auto prompt = body.find("prompt");
  std::string text;
  if (prompt != body.end() && prompt->is_string())
    text = prompt->get<std::string>();
  else if (prompt != body.end() && prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string())
    text = (*prompt)[0].get<std::string>();
  else
    throw invalid("'prompt' must be a string (one prompt per request)", "prompt");
  return tokenizer.encode(text, options.threads);
}

Generation Server::Impl::generate(std::span<const TokenId> prompt, const Common& c, TokenId stop_token, bool chat,
                                  const std::function<bool(const AnswerPiece&)>& on_piece) {
  Generation g;
  g.prompt_tokens = static_cast<std::int64_t>(prompt.size());
  // The state that holds the longest prefix of the prompt: the session's own (the last request's
  // prompt and answer) or a kept one. Only the rest is fed.
  const std::vector<TokenId>& held = session->tokens();
  const std::int64_t held_prefix = held.size() < prompt.size() && std::equal(held.begin(), held.end(), prompt.begin())
                                       ? static_cast<std::int64_t>(held.size())
                                       : -1;
  const auto kept = states->longest_prefix_of(prompt);
  if (kept && kept->token_count() > held_prefix) {
    try {
      kept->import_into(*session, {});  // found by its token ids, system messages included
      g.reused_tokens = kept->token_count();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "lightdesk-server: a kept state was refused: %s\n", e.what());
      session->reset();
    }
  } else if (held_prefix >= 0) {
    g.reused_tokens = held_prefix;
  } else {
    session->reset();
  }
  session->set_seed(c.seed);
  bool client_gone = false;
  FeedOptions feed_options;
  // Between chunks of a long prompt the client may have gone: an empty piece asks.
  feed_options.progress = [&](const FeedProgress&) {
    return !(client_gone = stopping || !on_piece(AnswerPiece{}));
  };
  try {
    session->feed(prompt.subspan(static_cast<std::size_t>(g.reused_tokens)), feed_options);
  } catch (const Cancelled&) {
    g.finish_reason = "cancelled";
    return g;
  }
  keep_state();

  TokenStreamDecoder decoder(tokenizer);
  AnswerText answer(chat ? std::optional(format.family()) : std::nullopt, c.stop);
  auto emit = [&](const AnswerPiece& piece) {
    g.reasoning += piece.reasoning;
    g.content += piece.content;
    if (!piece.empty()) client_gone = !on_piece(piece);
  };
  // Every id but the last is fed as it comes.
  std::vector<TokenId> generated;
  while (g.completion_tokens < c.max_tokens && !client_gone && !answer.stopped()) {
    // A server told to stop ends the running answer as if its client had gone.
    if (stopping) client_gone = true;
    if (client_gone) break;
    const TokenId next = session->sample(c.sampling);
    generated.push_back(next);
    if (next == stop_token) {
      g.finish_reason = "stop";
      break;
    }
    ++g.completion_tokens;
    emit(answer.feed(decoder.feed(next)));
    if (answer.stopped()) g.finish_reason = "stop";
    if (g.completion_tokens < c.max_tokens && !client_gone && !answer.stopped()) session->feed(std::span(&next, 1));
  }
  if (client_gone) {
    g.finish_reason = "cancelled";
    return g;
  }
  emit(answer.feed(decoder.finish()));
  emit(answer.finish());
  if (chat) {
    g.tool_calls = answer.tool_calls();
    if (!g.tool_calls.empty()) g.finish_reason = "tool_calls";
    // The answer's turn closed as a render of the conversation has it, for a follow-up.
    if (!generated.empty()) {
      finish_assistant_turn(*session, generated, format.end_of_turn());
      keep_state();
    }
  }
  return g;
}

void Server::Impl::respond(httplib::Response& res, bool chat, std::vector<TokenId> prompt, Common c) {
  std::shared_ptr<Queue::Place> place = queue.join();
  if (!place) {
    {
      std::lock_guard lock(counters_mutex);
      ++counters.refused_busy;
    }
    res.set_header("Retry-After", "1");
    throw RequestError(429, "rate_limit_exceeded",
                       "the server is busy: " + std::to_string(options.queue_limit) +
                           " requests are waiting for the model already; try again later",
                       {}, "queue_full");
  }
  const TokenId stop_token = chat ? format.end_of_turn() : model.info().eos_token_id.value_or(-1);
  const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id++);
  const std::int64_t created = unix_seconds();
  const std::string model_name = options.model_name;
  auto usage_json = [](const Generation& g) {
    return json{{"prompt_tokens", g.prompt_tokens},
                {"completion_tokens", g.completion_tokens},
                {"total_tokens", g.prompt_tokens + g.completion_tokens},
                {"prompt_tokens_details", {{"cached_tokens", g.reused_tokens}}}};
  };
  auto count = [this](const Generation& g) {
    std::lock_guard lock(counters_mutex);
    if (g.finish_reason == "cancelled")
      ++counters.cancelled;
    else
      ++counters.completed;
    counters.reused_tokens += g.reused_tokens;
  };

  if (!c.stream) {
    if (!place->wait_turn()) throw RequestError(503, "server_error", "the server is shutting down");
    const Generation g = generate(prompt, c, stop_token, chat, [](const AnswerPiece&) { return true; });
    count(g);
    json choice = {{"index", 0}, {"finish_reason", g.finish_reason}, {"logprobs", nullptr}};
    if (chat) {
      choice["message"] = assistant_message_json(g.reasoning, g.content, g.tool_calls);
    } else {
      choice["text"] = g.content;
    }
    const json body = {{"id", id},
                       {"object", chat ? "chat.completion" : "text_completion"},
                       {"created", created},
                       {"model", model_name},
                       {"choices", json::array({choice})},
                       {"usage", usage_json(g)}};
    res.set_content(dump(body), "application/json");
    return;
  }

  // Streamed: server-sent events, one chunk per piece of text, then the finish reason, the
  // usage when asked, and [DONE]. A failed write means the client has gone: the generation stops.
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, place, chat, prompt = std::move(prompt), c, stop_token, id, created, model_name, usage_json,
       count](std::size_t, httplib::DataSink& sink) {
        auto send = [&](const json& data) {
          const std::string event = "data: " + dump(data) + "\n\n";
          return sink.write(event.data(), event.size());
        };
        auto chunk = [&](json choice) {
          choice["index"] = 0;
          if (!choice.contains("finish_reason")) choice["finish_reason"] = nullptr;
          return json{{"id", id},
                      {"object", chat ? "chat.completion.chunk" : "text_completion"},
                      {"created", created},
                      {"model", model_name},
                      {"choices", json::array({choice})}};
        };
        if (!place->wait_turn()) {
          send(error_body("the server is shutting down", "server_error"));
          sink.done();
          return true;
        }
        if (chat && !send(chunk({{"delta", {{"role", "assistant"}, {"content", ""}}}}))) return false;
        Generation g;
        try {
          g = generate(prompt, c, stop_token, chat, [&](const AnswerPiece& piece) {
            // An empty piece (during the prompt's read) is a keep-alive comment, which also finds
            // out whether the client is still there.
            if (piece.empty()) {
              static constexpr std::string_view comment = ": reading the prompt\n\n";
              return sink.write(comment.data(), comment.size());
            }
            if (!chat) return send(chunk({{"text", piece.content}, {"logprobs", nullptr}}));
            json delta = json::object();
            if (!piece.reasoning.empty()) delta["reasoning_content"] = piece.reasoning;
            if (!piece.content.empty()) delta["content"] = piece.content;
            return send(chunk({{"delta", delta}}));
          });
        } catch (const std::exception& e) {
          // The status is sent already: the error goes in the stream, as OpenAI's do.
          send(error_body(e.what(), "server_error"));
          sink.done();
          return true;
        }
        count(g);
        if (g.finish_reason == "cancelled") return false;
        json last = chat ? json{{"delta", json::object()}} : json{{"text", ""}};
        if (chat && !g.tool_calls.empty()) last["delta"]["tool_calls"] = tool_calls_json(g.tool_calls, true);
        last["finish_reason"] = g.finish_reason;
        send(chunk(last));
        if (c.include_usage) {
          json usage = chunk({});
          usage["choices"] = json::array();
          usage["usage"] = usage_json(g);
          send(usage);
        }
        static constexpr std::string_view done = "data: [DONE]\n\n";
        sink.write(done.data(), done.size());
        sink.done();
        return true;
      });
}

void Server::Impl::chat_completions(const httplib::Request& req, httplib::Response& res) {
  const json body = request_object(req.body);
  check_fields(body, {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
                      "seed", "stop", "stream", "stream_options", "n", "presence_penalty", "frequency_penalty",
                      "tools", "tool_choice", "user"});
  const Common c = read_common(body, options.max_tokens_limit, format.sampling_defaults());
  respond(res, true, chat_prompt(body, c), c);
}

void Server::Impl::completions(const httplib::Request& req, httplib::Response& res) {
  const json body = request_object(req.body);
  check_fields(body, {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream",
                      "stream_options", "n", "presence_penalty", "frequency_penalty", "user"});
  const Common c = read_common(body, options.max_tokens_limit, SamplingDefaults{1.0f, 1.0f});
  std::vector<TokenId> prompt = text_prompt(body);
  check_room(prompt.size(), c);
  respond(res, false, std::move(prompt), c);
}

void Server::Impl::routes() {
  // Every handler's RequestError becomes its OpenAI error object; anything else a 500, never
  // a crash.
  auto guarded = [](auto handler) {
    return [handler](const httplib::Request& req, httplib::Response& res) {
      try {
        handler(req, res);
      } catch (const RequestError& e) {
        send_error(res, e);
      } catch (const std::exception& e) {
        send_error(res, RequestError(500, "server_error", e.what()));
      }
    };
  };
  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (req.path == "/health" || authorized(req)) return httplib::Server::HandlerResponse::Unhandled;
    send_error(res, RequestError(401, "invalid_request_error",
                                 "a valid API key is needed: send the header \"Authorization: Bearer KEY\"", {},
                                 "invalid_api_key"));
    return httplib::Server::HandlerResponse::Handled;
  });
  http.Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& res) {
             const json body = {{"object", "list"},
                                {"data", json::array({{{"id", options.model_name},
                                                       {"object", "model"},
                                                       {"created", 0},
                                                       {"owned_by", "lightdesk"},
                                                       {"max_model_len", model.info().max_context}}})}};
             res.set_content(dump(body), "application/json");
           }));
  http.Post("/v1/chat/completions",
            guarded([this](const httplib::Request& req, httplib::Response& res) { chat_completions(req, res); }));
  http.Post("/v1/completions",
            guarded([this](const httplib::Request& req, httplib::Response& res) { completions(req, res); }));
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    std::lock_guard lock(counters_mutex);
    const json body = {{"status", "ok"},
                       {"completed", counters.completed},
                       {"cancelled", counters.cancelled},
                       {"refused_busy", counters.refused_busy},
                       {"reused_tokens", counters.reused_tokens}};
    res.set_content(dump(body), "application/json");
  });
  // Statuses httplib sets itself (404, 413 for an oversized body, 400 for a bad request line)
  // get an error object too.
  http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string message = "HTTP " + std::to_string(res.status);
    if (res.status == 404) message = "no such endpoint: " + req.method + " " + req.path;
    if (res.status == 413)
      message = "the request body exceeds the server's limit of " + std::to_string(options.max_body_bytes) + " bytes";
    if (res.status == 405) message = "method " + req.method + " is not allowed on " + req.path;
    res.set_content(dump(error_body(message, "invalid_request_error")), "application/json");
  });
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    send_error(res, RequestError(500, "server_error", "internal error"));
  });
  http.set_payload_max_length(options.max_body_bytes);
  // One thread for the running request, one per waiting place, and two to answer the refused,
  // the /health and /v1/models requests.
  const int threads = options.queue_limit + 3;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<std::size_t>(threads)); };
}

Server::Server(Model& model, const Tokenizer& tokenizer, const ChatFormat& format, ServerOptions options)
    : impl_(std::make_unique<Impl>(model, tokenizer, format, std::move(options))) {
  impl_->routes();
}

Server::~Server() = default;

void Server::bind() {
  const auto& o = impl_->options;
  if (o.port == 0)
    impl_->port = impl_->http.bind_to_any_port(o.host);
  else
    impl_->port = impl_->http.bind_to_port(o.host, o.port) ? o.port : -1;
  if (impl_->port < 0) throw Error("cannot listen on " + o.host + ":" + std::to_string(o.port));
}

int Server::bound_port() const { return impl_->port; }

void Server::serve() { impl_->http.listen_after_bind(); }

void Server::stop() {
  impl_->stopping = true;
  impl_->queue.stop();
  impl_->http.stop();
}

}  // namespace lightdesk::server
