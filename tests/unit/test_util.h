// Helpers shared by the unit tests: random tensors and finite differences.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace deco::test {

// Debian's Python with numpy and h5py, for checks by independent readers.
inline const char* kPython = "/usr/bin/python3";

// The source tree (configs/, tests/reference/): where CMake saw it, unless
// the environment's DECO_SOURCE_DIR says otherwise (a bundle of the test
// binaries run from another checkout, as scripts/gpu_suite.sh does).
inline std::string source_dir() {
  const char* env = std::getenv("DECO_SOURCE_DIR");
  return env != nullptr && *env != '\0' ? std::string(env) : std::string(DECO_SOURCE_DIR);
}

// A fresh directory under /tmp, removed with everything in it at scope exit.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    // mkdtemp replaces the template's six trailing X characters.
    std::string pattern = (std::filesystem::temp_directory_path() / ("deco-test-" + std::string(6, 'X'))).string();
    REQUIRE(::mkdtemp(&pattern[0]) != nullptr);
    path = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
  size_t entries() const {
    return static_cast<size_t>(std::distance(std::filesystem::directory_iterator(path),
                                             std::filesystem::directory_iterator()));
  }
};

// The deco::Error message `f` throws, or a marker that fails any comparison.
template <typename F> std::string error_of(F&& f) {
  try {
    f();
  } catch (const deco::Error& e) {
    return e.what();
  }
  return "<no deco::Error thrown>";
}

// Runs a shell command and returns its stdout; *rc gets the exit status.
inline std::string run_command(const std::string& command, int* rc) {
  std::string out;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) {
    *rc = -1;
    return out;
  }
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  *rc = ::pclose(pipe);
  return out;
}

// Whether the test Python has numpy and h5py (tests that read files with
// them skip their h5py part otherwise).
inline bool have_h5py() {
  if (::access(kPython, X_OK) != 0) return false;
  int rc = 0;
  run_command(std::string(kPython) + " -c 'import numpy, h5py' 2>/dev/null", &rc);
  return rc == 0;
}

// A CPU buffer of N(0, scale^2) values (or uniform in [lo, hi) with fill_uniform).
inline Buffer random_buffer(const Shape& shape, uint64_t seed, double scale = 1.0,
                            DType dtype = DType::F64) {
  Buffer b(dtype, Device::CPU, shape);
  Rng rng(stream_key(seed, 0));
  for (int64_t i = 0; i < b.numel(); ++i) {
    const double v = scale * rng.normal();
    if (dtype == DType::F64) b.data<double>()[i] = v;
    else b.data<float>()[i] = static_cast<float>(v);
  }
  return b;
}

// sum(x * w) for float64 tensors: turns any op output into a scalar loss whose
// gradient with respect to the output is w.
inline double weighted_sum(const Tensor& x, const Tensor& w) {
  double s = 0.0;
  for (int64_t i = 0; i < x.numel(); ++i) s += x.data<double>()[i] * w.data<double>()[i];
  return s;
}

// Central-difference derivative of loss() with respect to every element of
// the float64 tensor x, compared with `analytic`. Returns the largest
// |fd - analytic| / (|fd| + |analytic| + floor); floor keeps exact zeros from
// dividing by zero.
inline double max_fd_error(const Tensor& x, const Tensor& analytic, const std::function<double()>& loss,
                           double h = 1e-6, double floor = 1e-6) {
  double worst = 0.0;
  double* px = x.data<double>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double saved = px[i];
    px[i] = saved + h;
    const double up = loss();
    px[i] = saved - h;
    const double down = loss();
    px[i] = saved;
    const double fd = (up - down) / (2 * h);
    const double a = analytic.data<double>()[i];
    worst = std::max(worst, std::abs(fd - a) / (std::abs(fd) + std::abs(a) + floor));
  }
  return worst;
}

// Relative distance ||a - b|| / ||b|| of two tensors of the same size (any float dtype).
inline double rel_diff(const Tensor& a, const Tensor& b) {
  auto at = [](const Tensor& t, int64_t i) {
    return t.dtype() == DType::F64 ? t.data<double>()[i] : static_cast<double>(t.data<float>()[i]);
  };
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double d = at(a, i) - at(b, i);
    num += d * d;
    den += at(b, i) * at(b, i);
  }
  return den == 0.0 ? std::sqrt(num) : std::sqrt(num / den);
}

}  // namespace deco::test
