// TensorBoard event files: scalars a TensorBoard (or any tfevents reader)
// shows next to metrics.jsonl. One file per writer,
// <run_dir>/events.out.tfevents.<unix seconds>.<hostname>; TensorBoard
// merges the files of a directory into one run.
//
// The file is a sequence of TFRecords (uint64 little-endian length, masked
// CRC32C of those 8 bytes, the serialized tensorflow.Event, masked CRC32C of
// it); the first Event carries file_version "brain.Event:2", every later one
// a Summary with one simple_value. The messages are serialized by libprotobuf
// from trainer/proto/event.proto.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace deco {

class TensorBoardWriter {
 public:
  // Creates the event file in `run_dir` (which must exist), named after
  // `unix_seconds` (default: now), and writes its file_version record;
  // refuses to overwrite an existing file.
  explicit TensorBoardWriter(const std::string& run_dir, int64_t unix_seconds = -1);
  // The file a writer created at `unix_seconds` on this host would write.
  static std::string path_for(const std::string& run_dir, int64_t unix_seconds);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One Event: `value` (stored as float32) under `tag` at `step`;
  // wall_time in seconds since the Unix epoch.
  void add_scalar(const std::string& tag, int64_t step, double value, double wall_time);
  // One histogram Event of `values` under `tag` at `step`, bucketed by
  // `limits` (ascending upper bounds; a last bucket up to DBL_MAX catches
  // the rest). Runs of empty buckets are merged into one, as TensorFlow's
  // writer does; TensorBoard re-bins for display anyway.
  void add_histogram(const std::string& tag, int64_t step, const std::vector<double>& values,
                     const std::vector<double>& limits, double wall_time);
  // A restart at `step` (a resumed run): TensorBoard then drops the earlier
  // files' events from that step on, which the failed run wrote after the
  // checkpoint it resumes from.
  void add_session_start(int64_t step, double wall_time, const std::string& message);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& data);
  std::string path_;
  std::FILE* file_ = nullptr;
};

// TFRecord's checksum: CRC32C of `data`, rotated and offset as TFRecord masks it.
uint32_t tfrecord_masked_crc32c(const void* data, size_t size);

// Seconds since the Unix epoch, with sub-second resolution (an Event's wall_time).
double unix_time_now();

}  // namespace deco
