// Errors. Two kinds, kept apart on purpose:
//  - deco::Error: something the *user* can fix (config, data, weights file,
//    launch). Its message is one sentence naming the file, the field and the
//    fix; the CLI prints it and exits non-zero.
//  - DECO_ASSERT: an internal invariant. Failing it is a bug in deco, so the
//    message carries file and line for the bug report.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace deco {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {
inline void append_all(std::ostringstream&) {}
template <typename Head, typename... Tail>
void append_all(std::ostringstream& out, const Head& head, const Tail&... tail) {
  out << head;
  append_all(out, tail...);
}
}  // namespace detail

// Builds a message from any streamable pieces: str("expected ", n, " rows").
template <typename... Parts>
std::string str(const Parts&... parts) {
  std::ostringstream out;
  detail::append_all(out, parts...);
  return out.str();
}

// Throws a user-facing deco::Error built from the given pieces.
template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  throw Error(str(parts...));
}

[[noreturn]] void internal_error(const char* file, int line, const std::string& what);

}  // namespace deco

#define DECO_ASSERT(cond, ...)                                                     \
  do {                                                                             \
    if (!(cond)) ::deco::internal_error(__FILE__, __LINE__,                        \
                                        ::deco::str("assertion `" #cond "` failed. ", \
                                                    ##__VA_ARGS__));               \
  } while (0)
