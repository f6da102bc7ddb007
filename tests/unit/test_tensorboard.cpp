// TensorBoard event files: the TFRecord framing (lengths and masked CRC32Cs,
// the CRC checked against published check values), the Events read back with
// the generated protobuf classes, the refusal to overwrite, and the scalars
// MetricsLog writes per step (TensorBoard's own reader: tests/cli/test_tensorboard.py).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "trainer/metrics.h"
#include "trainer/proto/event.pb.h"
#include "trainer/tensorboard.h"
#include "test_util.h"

using namespace deco;

namespace {

uint32_t mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

uint64_t le64(const std::string& s, size_t at) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(s[at + i]);
  return v;
}

uint32_t le32(const std::string& s, size_t at) { return static_cast<uint32_t>(le64(s + std::string(8, '\0'), at)); }

// Splits a TFRecord file into its records, checking every length and CRC.
std::vector<tensorflow::Event> read_events(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<tensorflow::Event> events;
  size_t at = 0;
  while (at < bytes.size()) {
    REQUIRE(at + 12 <= bytes.size());
    const uint64_t length = le64(bytes, at);
    CHECK(le32(bytes, at + 8) == tfrecord_masked_crc32c(bytes.data() + at, 8));
    REQUIRE(at + 12 + length + 4 <= bytes.size());
    const std::string data = bytes.substr(at + 12, length);
    CHECK(le32(bytes, at + 12 + length) == tfrecord_masked_crc32c(data.data(), data.size()));
    tensorflow::Event event;
    REQUIRE(event.ParseFromString(data));
    events.push_back(event);
    at += 12 + length + 4;
  }
  CHECK(at == bytes.size());
  return events;
}

std::vector<std::string> event_files(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

TEST_CASE("TFRecord's masked CRC32C matches the CRC-32C check values", "[tensorboard]") {
  // CRC-32C check value ("123456789") and RFC 3720's 32 zero bytes.
  CHECK(tfrecord_masked_crc32c("123456789", 9) == mask(0xE3069283u));
  const std::string zeros(32, '\0');
  CHECK(tfrecord_masked_crc32c(zeros.data(), zeros.size()) == mask(0x8A9136AAu));
  CHECK(tfrecord_masked_crc32c("", 0) == mask(0u));
}

TEST_CASE("TensorBoardWriter writes framed Events: file_version first, then scalars", "[tensorboard]") {
  deco::test::TempDir dir;
  std::string path;
  {
    TensorBoardWriter w(dir.path.string(), 1700000000);
    path = w.path();
    CHECK(std::filesystem::path(path).filename().string().rfind("events.out.tfevents.1700000000.", 0) == 0);
    w.add_scalar("train/lm_loss", 1, 6.25, 1700000001.5);
    w.add_scalar("train/lr", 1, 1e-4, 1700000001.5);
    w.add_scalar("train/lm_loss", 2, 5.1234567891, 1700000002.25);
    w.flush();
  }
  const auto events = read_events(path);
  REQUIRE(events.size() == 4);
  CHECK(events[0].file_version() == "brain.Event:2");
  CHECK_FALSE(events[0].has_summary());
  CHECK(events[0].wall_time() > 1.6e9);
  const std::vector<std::tuple<std::string, int64_t, float, double>> expected = {
      {"train/lm_loss", 1, 6.25f, 1700000001.5},
      {"train/lr", 1, 1e-4f, 1700000001.5},
      {"train/lm_loss", 2, static_cast<float>(5.1234567891), 1700000002.25}};
  for (size_t i = 0; i < expected.size(); ++i) {
    const auto& e = events[i + 1];
    CHECK(e.step() == std::get<1>(expected[i]));
    CHECK(e.wall_time() == std::get<3>(expected[i]));
    REQUIRE(e.summary().value_size() == 1);
    CHECK(e.summary().value(0).tag() == std::get<0>(expected[i]));
    CHECK(e.summary().value(0).has_simple_value());
    CHECK(e.summary().value(0).simple_value() == std::get<2>(expected[i]));
  }
  // The first record by hand: the Event is wall_time (field 1, fixed64),
  // file_version (field 3, length-delimited); step 0 is not serialized.
  std::ifstream in(path, std::ios::binary);
  std::string head(12 + 9 + 2 + 13, '\0');
  in.read(&head[0], static_cast<std::streamsize>(head.size()));
  CHECK(le64(head, 0) == 9 + 2 + 13);
  CHECK(head[12] == '\x09');
  CHECK(head[21] == '\x1a');
  CHECK(head[22] == 13);
  CHECK(head.substr(23) == "brain.Event:2");
}

TEST_CASE("TensorBoardWriter refuses to overwrite an event file", "[tensorboard]") {
  deco::test::TempDir dir;
  TensorBoardWriter first(dir.path.string(), 1700000000);
  const std::string msg = deco::test::error_of([&] { TensorBoardWriter(dir.path.string(), 1700000000); });
  CHECK_THAT(msg, Catch::Contains(first.path()) && Catch::Contains("already exists"));
  // The first file is untouched.
  CHECK(read_events(first.path()).size() == 1);
  const std::string missing = deco::test::error_of([&] { TensorBoardWriter(dir / "no/such/dir"); });
  CHECK_THAT(missing, Catch::Contains("cannot create") && Catch::Contains("no/such/dir"));
}

TEST_CASE("MetricsLog writes the step's scalars, a resumed log opens a new event file", "[tensorboard]") {
  deco::test::TempDir dir;
  StepMetrics m;
  m.step = 7;
  m.lm_loss = 3.5;
  m.reg_loss = 0.01;
  m.lr = 3e-3;
  m.grad_norm = 0.8;
  m.reg_coef = 2e-3;
  m.tokens_per_second = 12345.0;
  m.tflops = 0.5;
  m.data_wait_s = 0.001;
  m.skipped_steps = 1;
  m.activation_ratio = 0.25;
  m.activation_ratio_per_layer = {0.2, 0.3};
  m.deco_layer_index = {3, 12};
  m.expert_tokens_per_layer = {{1, 2}, {3, 4}};
  m.expert_max_violation = {0.5, 0.75};
  m.dead_experts = {0, 2};
  m.idle_token_share = {0.01, 0.02};
  m.router_entropy = {1.5, 1.25};
  m.val_loss = 3.75;
  m.peak_memory_bytes = int64_t{3} << 29;  // 1.5 GiB
  {
    MetricsLog log(dir.path.string());
    log.write(m);
  }
  auto files = event_files(dir.path.string());
  REQUIRE(files.size() == 1);
  std::map<std::string, float> got;
  for (const auto& e : read_events(files[0])) {
    if (!e.has_summary()) continue;
    CHECK(e.step() == 7);
    got[e.summary().value(0).tag()] = e.summary().value(0).simple_value();
  }
  const std::map<std::string, float> want = {
      {"train/lm_loss", 3.5f}, {"train/reg_loss", 0.01f}, {"train/lr", 3e-3f}, {"train/grad_norm", 0.8f},
      {"train/reg_coef", 2e-3f}, {"train/tokens_per_second", 12345.0f}, {"train/tflops", 0.5f},
      {"train/data_wait_s", 0.001f}, {"train/skipped_steps", 1.0f}, {"train/peak_memory_gib", 1.5f},
      {"val/loss", 3.75f},
      {"sparsity/activation_ratio", 0.25f},
      {"sparsity/layer_03/activation_ratio", 0.2f}, {"sparsity/layer_12/activation_ratio", 0.3f},
      {"experts/layer_03/max_violation", 0.5f}, {"experts/layer_12/max_violation", 0.75f},
      {"experts/layer_03/dead_experts", 0.0f}, {"experts/layer_12/dead_experts", 2.0f},
      {"experts/layer_03/idle_token_share", 0.01f}, {"experts/layer_12/idle_token_share", 0.02f},
      {"experts/layer_03/router_entropy", 1.5f}, {"experts/layer_12/router_entropy", 1.25f}};
  CHECK(got == want);

  // Resuming at step 5 (even within the same second) adds a second file that sorts after the first.
  {
    MetricsLog log(dir.path.string(), 5);
    m.step = 6;
    m.val_loss.reset();
    log.write(m);
  }
  files = event_files(dir.path.string());
  REQUIRE(files.size() == 2);
  const auto resumed = read_events(files[1]);
  REQUIRE(resumed.size() == 23);  // file_version, SessionLog START, 21 scalars (no val/loss)
  CHECK(resumed[1].has_session_log());
  CHECK(resumed[2].step() == 6);
  CHECK(read_events(files[0]).size() == 23);
}
