#include "core/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/error.h"

namespace deco {
namespace {

// Writes every part to `tmp` and fsyncs it: the data must be on disk before
// the rename makes it the file at the real path, or a crash could leave an
// empty file there. Returns 0 or the errno of the failure.
int write_and_sync(const std::string& tmp, const std::vector<std::pair<const void*, size_t>>& parts,
                   size_t& done) {
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) return errno;
  int err = 0;
  for (const auto& [data, size] : parts) {
    size_t written = 0;
    while (err == 0 && written < size) {
      const ssize_t n = ::write(fd, static_cast<const char*>(data) + written, size - written);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) err = n < 0 ? errno : EIO;
      else written += static_cast<size_t>(n);
    }
    done += written;
  }
  if (err == 0 && ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  return err;
}

}  // namespace

std::string parent_dir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

void check_output_path(const std::string& path) {
  const std::string dir = parent_dir(path);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    fail("cannot write ", path, ": directory ", dir, " does not exist; create it first or choose "
         "another path");
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    fail("cannot write ", path, ": it is a directory; choose a file name inside it");
}

void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void write_file_atomic(const std::string& path, const std::vector<std::pair<const void*, size_t>>& parts) {
  check_output_path(path);
  const std::string dir = parent_dir(path);
  // The pid keeps two processes writing the same path from sharing a temporary.
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  size_t done = 0, total = 0;
  for (const auto& part : parts) total += part.second;
  int err = write_and_sync(tmp, parts, done);
  const char* step = "writing";
  if (err == 0 && std::rename(tmp.c_str(), path.c_str()) != 0) {
    err = errno;
    step = "renaming";
  }
  if (err != 0) {
    std::remove(tmp.c_str());
    fail("cannot write ", path, ": ", step, " ", tmp, " failed after ", done, " of ", total,
         " bytes: ", std::strerror(err), "; ", path, " was left unchanged");
  }
  fsync_dir(dir);
}

void write_file_atomic(const std::string& path, const std::string& text) {
  write_file_atomic(path, {{text.data(), text.size()}});
}

}  // namespace deco
