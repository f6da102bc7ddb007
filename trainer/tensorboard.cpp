#include "trainer/tensorboard.h"

#include <unistd.h>

#include <algorithm>
#include <boost/crc.hpp>
#include <limits>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "core/error.h"
#include "trainer/proto/event.pb.h"

namespace deco {

namespace {

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

void put_le64(char* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

void put_le32(char* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

}  // namespace

uint32_t tfrecord_masked_crc32c(const void* data, size_t size) {
  // CRC-32C (Castagnoli): polynomial 0x1EDC6F41, reflected, init and final xor all ones.
  boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> crc;
  crc.process_bytes(data, size);
  const uint32_t c = crc.checksum();
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

double unix_time_now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

std::string TensorBoardWriter::path_for(const std::string& run_dir, int64_t unix_seconds) {
  return str(run_dir, "/events.out.tfevents.", static_cast<long long>(unix_seconds), ".", host_name());
}

TensorBoardWriter::TensorBoardWriter(const std::string& run_dir, int64_t unix_seconds)
    : path_(path_for(run_dir, unix_seconds >= 0 ? unix_seconds : static_cast<int64_t>(std::time(nullptr)))) {
  // "x": fail rather than truncate if the file exists (even if it appears
  // between a check and the open).
  if (!std::filesystem::exists(path_)) file_ = std::fopen(path_.c_str(), "wbx");
  if (!file_) {
    if (std::filesystem::exists(path_))
      fail(path_, " already exists; TensorBoard event files are never overwritten: wait a second "
           "before restarting in the same run directory, or pass --run-dir with a new directory.");
    fail("cannot create ", path_, " (", std::strerror(errno), "); check that the run directory is writable.");
  }
  tensorflow::Event event;
  event.set_wall_time(unix_time_now());
  event.set_step(0);
  event.set_file_version("brain.Event:2");
  write_record(event.SerializeAsString());
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_) std::fclose(file_);
}

void TensorBoardWriter::add_scalar(const std::string& tag, int64_t step, double value, double wall_time) {
  tensorflow::Event event;
  event.set_wall_time(wall_time);
  event.set_step(step);
  auto* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  v->set_simple_value(static_cast<float>(value));
  write_record(event.SerializeAsString());
}

void TensorBoardWriter::add_histogram(const std::string& tag, int64_t step, const std::vector<double>& values,
                                      const std::vector<double>& limits, double wall_time) {
  DECO_ASSERT(std::is_sorted(limits.begin(), limits.end()), "histogram limits must ascend");
  std::vector<double> bounds = limits;
  bounds.push_back(std::numeric_limits<double>::max());
  std::vector<double> counts(bounds.size(), 0.0);
  double lo = std::numeric_limits<double>::infinity(), hi = -lo, sum = 0, sum_sq = 0;
  for (double v : values) {
    // The first bucket whose upper bound is >= v: (limit[i-1], limit[i]].
    counts[static_cast<size_t>(std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin())] += 1;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    sum += v;
    sum_sq += v * v;
  }
  tensorflow::Event event;
  event.set_wall_time(wall_time);
  event.set_step(step);
  auto* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  auto* h = v->mutable_histo();
  h->set_min(values.empty() ? 0.0 : lo);
  h->set_max(values.empty() ? 0.0 : hi);
  h->set_num(static_cast<double>(values.size()));
  h->set_sum(sum);
  h->set_sum_squares(sum_sq);
  for (size_t i = 0; i < bounds.size(); ++i) {
    // Of a run of empty buckets keep only the last (its limit closes the run).
    if (counts[i] == 0 && i + 1 < bounds.size() && counts[i + 1] == 0) continue;
    h->add_bucket_limit(bounds[i]);
    h->add_bucket(counts[i]);
  }
  write_record(event.SerializeAsString());
}

void TensorBoardWriter::add_session_start(int64_t step, double wall_time, const std::string& message) {
  tensorflow::Event event;
  event.set_wall_time(wall_time);
  event.set_step(step);
  event.mutable_session_log()->set_status(tensorflow::SessionLog::START);
  event.mutable_session_log()->set_msg(message);
  write_record(event.SerializeAsString());
}

void TensorBoardWriter::write_record(const std::string& data) {
  char header[12], footer[4];
  put_le64(header, data.size());
  put_le32(header + 8, tfrecord_masked_crc32c(header, 8));
  put_le32(footer, tfrecord_masked_crc32c(data.data(), data.size()));
  if (std::fwrite(header, 1, sizeof(header), file_) != sizeof(header) ||
      std::fwrite(data.data(), 1, data.size(), file_) != data.size() ||
      std::fwrite(footer, 1, sizeof(footer), file_) != sizeof(footer))
    fail("writing ", path_, " failed; is the disk full?");
}

void TensorBoardWriter::flush() {
  if (std::fflush(file_) != 0) fail("writing ", path_, " failed; is the disk full?");
}

}  // namespace deco
