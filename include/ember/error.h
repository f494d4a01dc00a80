// Errors carry context (which file, tensor, request, op, what was expected) so that a user can act
// on them; the Python module maps each kind to a Python exception class.
#pragma once

#include <stdexcept>
#include <string>

namespace ember {

// Bad input from the caller: a parameter out of range, a prompt too long, a token id out of range.
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// A model file or directory that is malformed, incomplete or of an unsupported kind.
class ModelFormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A failure inside the engine or a backend (out of memory, a failed kernel launch).
class EngineError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace ember
