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

// The directory part of a path ("." for a bare file name, "/" for /file).
std::string parent_dir(const std::string& path);

// Refuses a path a file cannot be written to: its directory is missing, or
// the path is itself a directory (deco::Error naming the path and the fix).
void check_output_path(const std::string& path);

// Best effort: makes a directory's entries (a new file, a rename) durable
// sooner; some filesystems cannot fsync a directory, and the data is already
// safe by then.
void fsync_dir(const std::string& dir);

}  // namespace deco
