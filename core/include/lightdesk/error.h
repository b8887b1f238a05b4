// The exceptions every Lightdesk library reports failures with: the message names the cause
// (file, tensor, field).
#pragma once

#include <stdexcept>

namespace lightdesk {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Thrown by an operation whose progress callback asked it to stop.
class Cancelled : public Error {
 public:
  using Error::Error;
};

}  // namespace lightdesk
