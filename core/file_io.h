// Writing files so that nothing a user has is ever half-overwritten.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace deco {

// Writes the concatenation of `parts` to `path` atomically: into
// <path>.tmp-<pid> in the same directory, fsync'ed, renamed over `path`, then
// the directory fsync'ed so the rename is durable. On any failure the
// temporary is removed, `path` keeps its old contents, and a deco::Error
// names the file and the cause ("cannot write P: ...; P was left unchanged").
void write_file_atomic(const std::string& path, const std::vector<std::pair<const void*, size_t>>& parts);
void write_file_atomic(const std::string& path, const std::string& text);

}  // namespace deco
