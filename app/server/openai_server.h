// An OpenAI-compatible HTTP server over one model: /v1/models, /v1/chat/completions (streamed as
// server-sent events or not) and /v1/completions. One queue serves the one model: a request
// waits its turn, and one that finds the queue full is refused (429). The HTTP side is
// cpp-httplib; main.cpp only parses flags and opens the model.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "lightdesk/engine.h"
#include "lightdesk/text.h"

namespace lightdesk::server {

struct ServerOptions {
  std::string host = "127.0.0.1";  // loopback unless told otherwise
  int port = 8080;                 // 0: any free port (bound_port() says which)
  std::string api_key;             // empty: no key asked
  std::string model_name;          // the id /v1/models lists
  std::size_t max_body_bytes = std::size_t{16} << 20;
  std::int64_t max_tokens_limit = 4096;  // most tokens one answer may ask for
  int queue_limit = 8;                   // requests waiting behind the running one
  int threads = 0;                       // tokenizer threads (0: all)
  // Session states kept between requests (ends of prompts and answers), least recently used
  // dropped first; 0 keeps none.
  std::size_t state_cache_bytes = std::size_t{4} << 30;
  // Where they are kept: a session database, or in memory when empty.
  std::filesystem::path state_database;
};

// Counts since start, for GET /health (and the tests).
struct ServerCounters {
  std::int64_t completed = 0;
  std::int64_t cancelled = 0;     // stopped because the client went away
  std::int64_t refused_busy = 0;  // 429s
  std::int64_t reused_tokens = 0; // prompt tokens the session already held (not prefilled again)
};

class Server {
 public:
  // The model, tokenizer and format must outlive the server.
  Server(Model& model, const Tokenizer& tokenizer, const ChatFormat& format, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the address; throws Error naming host and port when it cannot.
  void bind();
  int bound_port() const;
  // Serves until stop() (from another thread or a signal handler's thread).
  void serve();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lightdesk::server
