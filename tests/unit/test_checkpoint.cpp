// Checkpoints: bit-exact round trips, what h5py and h5ls see, latest and
// keep_last, the background writer's snapshot, every damaged-checkpoint
// error, a full disk, SIGKILL in the middle of saves, resolve_checkpoint.
#include <fcntl.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/ops.h"
#include "model/params.h"
#include "trainer/checkpoint.h"
#include "trainer/weights_io.h"
#include "test_util.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using deco::CheckpointTensors;
using deco::CheckpointWriter;
using deco::DType;
using deco::ParamLayout;
using deco::ParamSpec;
using deco::ParamStore;
using deco::TrainingState;

using deco::test::TempDir;
using deco::test::error_of;
using deco::test::have_h5py;
using deco::test::kPython;
using deco::test::run_command;

namespace {

// Two layers (one dense, one DECO) of width `hidden`: about
// 2 * vocab * hidden + 20 * hidden^2 parameters.
deco::ModelConfig model_config(int64_t hidden = 16, int64_t vocab = 32) {
  deco::ModelConfig c;
  c.num_layers = 2;
  c.hidden_size = hidden;
  c.num_attention_heads = 2;
  c.num_query_groups = 2;
  c.ffn_hidden_size = 2 * hidden;
  c.vocab_size = vocab;
  c.seq_length = 8;
  c.num_experts = 4;
  c.moe_ffn_hidden_size = hidden / 4;
  c.moe_shared_expert_intermediate_size = hidden / 2;
  c.dense_layers = 1;
  return c;
}

// A model's three stores (weights and both AdamW moments) in one dtype.
struct Stores {
  ParamStore params, exp_avg, exp_avg_sq;
  Stores(const ParamLayout& layout, DType dtype)
      : params(layout, dtype, deco::Device::CPU),
        exp_avg(layout, dtype, deco::Device::CPU),
        exp_avg_sq(layout, dtype, deco::Device::CPU) {}
  CheckpointTensors tensors() const { return {&params, &exp_avg, &exp_avg_sq}; }
  std::vector<const ParamStore*> all() const { return {&params, &exp_avg, &exp_avg_sq}; }
};

// Distinct values per store and seed, with all 24 mantissa bits in use
// (float64 stores get 53, so that saving them must round).
void fill(const Stores& s, uint64_t seed) {
  int which = 0;
  for (const ParamStore* store : s.all()) {
    deco::Rng rng(deco::stream_key(seed, static_cast<uint64_t>(which++)));
    const deco::Tensor& flat = store->flat();
    for (int64_t i = 0; i < flat.numel(); ++i) {
      double v = (rng.uniform() - 0.5) * 0.1;
      if (store == &s.exp_avg_sq) v = v * v;
      if (flat.dtype() == DType::F64) flat.data<double>()[i] = v;
      else flat.data<float>()[i] = static_cast<float>(v);
    }
  }
}

bool same_bytes(const ParamStore& a, const ParamStore& b) {
  for (const ParamSpec& spec : a.layout().specs()) {
    const deco::Tensor ta = a.get(spec), tb = b.get(spec);
    if (ta.nbytes() != tb.nbytes() || std::memcmp(ta.raw(), tb.raw(), ta.nbytes()) != 0) return false;
  }
  return true;
}

bool all_zero(const ParamStore& s) {
  const auto* p = static_cast<const unsigned char*>(s.flat().raw());
  for (size_t i = 0; i < s.flat().nbytes(); ++i)
    if (p[i] != 0) return false;
  return true;
}

// CRC-32 of every parameter of a store, in layout order.
uint32_t store_crc(const ParamStore& s) {
  uint32_t crc = 0;
  for (const ParamSpec& spec : s.layout().specs()) {
    const deco::Tensor t = s.get(spec);
    const uint32_t c = deco::crc32_of(t.raw(), t.nbytes());
    crc = deco::crc32_of(&c, sizeof c) ^ (crc * 31);
  }
  return crc;
}

TrainingState sample_state(int64_t step) {
  TrainingState s;
  s.step = step;
  s.consumed_samples = step * 64 + 3;
  s.evaluations = step / 5;
  s.reg_coef = 1.0 / 3.0 * 1e-3;  // no short decimal: must survive as float64 bits
  s.elapsed_s = 1234.5678 + static_cast<double>(step);
  s.seed = 0x8000000000000005ull;  // above INT64_MAX: stored as uint64
  return s;
}

const std::string kConfigYaml = "model:\n  hidden_size: 16  # \xc3\xbc, UTF-8\ntraining:\n  seed: 7\n";

void save_now(const std::string& save_dir, int64_t keep_last, const Stores& s, int64_t step) {
  CheckpointWriter writer(save_dir, keep_last);
  writer.save(s.tensors(), sample_state(step), kConfigYaml);
  writer.wait();
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::set<std::string> entries(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

size_t tmp_entries(const std::string& dir) {
  size_t n = 0;
  for (const std::string& name : entries(dir)) n += name.find(".tmp-") != std::string::npos;
  return n;
}

// The file offset of a contiguous dataset's data.
haddr_t data_offset(const std::string& file, const std::string& where) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  REQUIRE(f >= 0);
  const hid_t d = H5Dopen2(f, where.c_str(), H5P_DEFAULT);
  REQUIRE(d >= 0);
  const haddr_t offset = H5Dget_offset(d);
  H5Dclose(d);
  H5Fclose(f);
  return offset;
}

void flip_byte(const std::string& file, uint64_t offset) {
  std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
  REQUIRE(io.good());
  io.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  io.read(&c, 1);
  c = static_cast<char>(c ^ 0x10);
  io.seekp(static_cast<std::streamoff>(offset));
  io.write(&c, 1);
}

}  // namespace

TEST_CASE("checkpoint: directory names", "[checkpoint]") {
  CHECK(deco::checkpoint_dir_name(0) == "step_0000000");
  CHECK(deco::checkpoint_dir_name(1000) == "step_0001000");
  CHECK(deco::checkpoint_dir_name(123456789) == "step_123456789");
}

TEST_CASE("checkpoint: save and load round trip", "[checkpoint]") {
  TempDir dir;
  const ParamLayout layout(model_config());
  Stores saved(layout, DType::F32);
  fill(saved, 1);
  const std::string save_dir = dir / "ckpt";  // created by the first save
  CheckpointWriter writer(save_dir, 0);
  writer.save(saved.tensors(), sample_state(20), kConfigYaml);
  writer.wait();

  const std::string step_dir = save_dir + "/step_0000020";
  CHECK(entries(save_dir) == std::set<std::string>{"latest", "step_0000020"});
  CHECK(entries(step_dir) == std::set<std::string>{"model.h5", "optimizer.h5", "state.h5"});
  CHECK(read_text(save_dir + "/latest") == "step_0000020\n");
  const int64_t bytes = static_cast<int64_t>(fs::file_size(step_dir + "/model.h5") +
                                             fs::file_size(step_dir + "/optimizer.h5") +
                                             fs::file_size(step_dir + "/state.h5"));
  CHECK(writer.last_write_bytes() == bytes);
  CHECK(writer.last_write_seconds() > 0.0);
  // model.h5 holds one store, optimizer.h5 two: the data dominate the sizes.
  const int64_t data = layout.num_parameters() * 4;
  CHECK(static_cast<int64_t>(fs::file_size(step_dir + "/model.h5")) >= data);
  CHECK(static_cast<int64_t>(fs::file_size(step_dir + "/optimizer.h5")) >= 2 * data);
  CHECK(deco::resolve_checkpoint("auto", save_dir) == step_dir);

  SECTION("into float32 stores: bit-exact, state and config exact") {
    Stores loaded(layout, DType::F32);
    const deco::LoadedCheckpoint got = deco::load_checkpoint(step_dir, loaded.tensors());
    CHECK(same_bytes(saved.params, loaded.params));
    CHECK(same_bytes(saved.exp_avg, loaded.exp_avg));
    CHECK(same_bytes(saved.exp_avg_sq, loaded.exp_avg_sq));
    const TrainingState want = sample_state(20);
    CHECK(got.state.step == 20);
    CHECK(got.state.consumed_samples == want.consumed_samples);
    CHECK(got.state.evaluations == 4);
    CHECK(got.state.reg_coef == want.reg_coef);
    CHECK(got.state.elapsed_s == want.elapsed_s);
    CHECK(got.state.seed == 0x8000000000000005ull);
    CHECK(got.config_yaml == kConfigYaml);
    CHECK(got.version == DECO_VERSION);
  }
  SECTION("into float64 stores: every value exact") {
    Stores loaded(layout, DType::F64);
    deco::load_checkpoint(step_dir, loaded.tensors());
    int64_t mismatches = 0;
    for (int k = 0; k < 3; ++k)
      for (const ParamSpec& spec : layout.specs()) {
        const deco::Tensor a = saved.all()[k]->get(spec), b = loaded.all()[k]->get(spec);
        for (int64_t i = 0; i < a.numel(); ++i)
          mismatches += static_cast<double>(a.data<float>()[i]) != b.data<double>()[i];
      }
    CHECK(mismatches == 0);
  }
  SECTION("float64 stores are saved as float32, rounded to nearest") {
    Stores wide(layout, DType::F64);
    fill(wide, 2);
    CheckpointWriter w64(save_dir, 0);
    w64.save(wide.tensors(), sample_state(30), kConfigYaml);
    w64.wait();
    Stores loaded(layout, DType::F32);
    deco::load_checkpoint(save_dir + "/step_0000030", loaded.tensors());
    int64_t mismatches = 0, rounded = 0;
    for (int k = 0; k < 3; ++k)
      for (const ParamSpec& spec : layout.specs()) {
        const deco::Tensor a = wide.all()[k]->get(spec), b = loaded.all()[k]->get(spec);
        for (int64_t i = 0; i < a.numel(); ++i) {
          mismatches += static_cast<float>(a.data<double>()[i]) != b.data<float>()[i];
          rounded += static_cast<double>(b.data<float>()[i]) != a.data<double>()[i];
        }
      }
    CHECK(mismatches == 0);
    CHECK(rounded > 0);
  }
  SECTION("null stores are skipped: the state alone, or the weights alone") {
    const deco::LoadedCheckpoint state_only = deco::load_checkpoint(step_dir, {});
    CHECK(state_only.state.step == 20);
    CHECK(state_only.config_yaml == kConfigYaml);
    Stores loaded(layout, DType::F32);
    deco::load_checkpoint(step_dir, {&loaded.params, nullptr, nullptr});
    CHECK(same_bytes(saved.params, loaded.params));
    CHECK(all_zero(loaded.exp_avg));
    CHECK(all_zero(loaded.exp_avg_sq));
  }
  SECTION("model.h5 is a weights file: load_weights_h5 (--load, export) reads it") {
    ParamStore weights(layout, DType::F32, deco::Device::CPU);
    deco::load_weights_h5(step_dir + "/model.h5", weights);
    CHECK(same_bytes(saved.params, weights));
    ParamStore moment(layout, DType::F32, deco::Device::CPU);
    deco::load_weights_h5(step_dir + "/optimizer.h5", moment, "exp_avg_sq");
    CHECK(same_bytes(saved.exp_avg_sq, moment));
  }
}

TEST_CASE("checkpoint: h5py and h5ls show what is inside", "[checkpoint]") {
  if (!have_h5py()) {
    WARN("skipped: " << kPython << " with numpy and h5py not found");
    return;
  }
  TempDir dir;
  const ParamLayout layout(model_config());
  Stores s(layout, DType::F32);
  fill(s, 3);
  save_now(dir / "ckpt", 0, s, 20);
  const std::string step_dir = dir / "ckpt/step_0000020";

  // An independent reader: every dataset float32, its crc32 attribute equal
  // to zlib.crc32 of its bytes, the state's fields with their HDF5 types.
  // One "key<TAB>value" line per fact.
  std::ofstream(dir / "check.py") << R"PY(
import json, sys, zlib
import h5py
d = sys.argv[1]
for name in ("model.h5", "optimizer.h5"):
    with h5py.File(f"{d}/{name}", "r") as f:
        for group in f:
            n = bad = 0
            for ds in f[group].values():
                a = ds[()]
                n += 1
                bad += not (a.dtype.str == "<f4" and zlib.crc32(a.tobytes()) == int(ds.attrs["crc32"]))
            print(f"{name} /{group}\t{n} tensors, {bad} bad")
        print(f"{name} attrs\t{f.attrs['format']} {f.attrs['format_version']} {f.attrs['step']} "
              f"{f.attrs['deco_version']}")
with h5py.File(f"{d}/model.h5", "r") as f:
    w = f["model/lm_head.weight"]
    print(f"lm_head\t{w.shape} {float(w[3, 5])!r}")
with h5py.File(f"{d}/state.h5", "r") as f:
    for key in ("step", "consumed_samples", "evaluations", "seed"):
        print(f"{key}\t{f[key].dtype.str} {int(f[key][()])}")
    for key in ("reg_coef", "elapsed_s"):
        print(f"{key}\t{f[key].dtype.str} {float(f[key][()])!r}")
    for key in ("config", "version"):
        print(f"{key}\t{json.dumps(f[key][()].decode())}")
)PY";
  int rc = 0;
  std::istringstream lines(
      run_command(std::string(kPython) + " " + (dir / "check.py") + " " + step_dir, &rc));
  REQUIRE(rc == 0);
  std::map<std::string, std::string> seen;
  for (std::string line; std::getline(lines, line);) {
    const size_t tab = line.find('\t');
    REQUIRE(tab != std::string::npos);
    seen[line.substr(0, tab)] = line.substr(tab + 1);
  }
  const std::string n = std::to_string(layout.specs().size());
  CHECK(seen["model.h5 /model"] == n + " tensors, 0 bad");
  CHECK(seen["optimizer.h5 /exp_avg"] == n + " tensors, 0 bad");
  CHECK(seen["optimizer.h5 /exp_avg_sq"] == n + " tensors, 0 bad");
  CHECK(seen["model.h5 attrs"] == "deco-weights 1 20 " DECO_VERSION);
  CHECK(seen["optimizer.h5 attrs"] == "deco-weights 1 20 " DECO_VERSION);
  const float w35 = s.params.get("lm_head.weight").data<float>()[3 * 16 + 5];
  REQUIRE(seen["lm_head"].rfind("(32, 16) ", 0) == 0);
  CHECK(std::stod(seen["lm_head"].substr(9)) == static_cast<double>(w35));
  const TrainingState want = sample_state(20);
  CHECK(seen["step"] == "<i8 20");
  CHECK(seen["consumed_samples"] == "<i8 " + std::to_string(want.consumed_samples));
  CHECK(seen["evaluations"] == "<i8 4");
  CHECK(seen["seed"] == "<u8 " + std::to_string(want.seed));
  REQUIRE(seen["reg_coef"].rfind("<f8 ", 0) == 0);
  CHECK(std::stod(seen["reg_coef"].substr(4)) == want.reg_coef);
  CHECK(std::stod(seen["elapsed_s"].substr(4)) == want.elapsed_s);
  CHECK(seen["config"] == "\"model:\\n  hidden_size: 16  # \\u00fc, UTF-8\\ntraining:\\n  seed: 7\\n\"");
  CHECK(seen["version"] == "\"" DECO_VERSION "\"");

  // The HDF5 command-line tools, when installed.
  if (::access("/usr/bin/h5ls", X_OK) == 0) {
    const std::string listing = run_command("/usr/bin/h5ls -r " + step_dir + "/optimizer.h5", &rc);
    REQUIRE(rc == 0);
    CHECK_THAT(listing, Contains("/exp_avg/lm_head.weight") && Contains("/exp_avg_sq/lm_head.weight") &&
                            Contains("Dataset {32, 16}"));
    const std::string state = run_command("/usr/bin/h5ls " + step_dir + "/state.h5", &rc);
    CHECK_THAT(state, Contains("consumed_samples") && Contains("reg_coef") && Contains("config"));
  }
}

TEST_CASE("checkpoint: latest and keep_last over several saves", "[checkpoint]") {
  TempDir dir;
  const ParamLayout layout(model_config());
  Stores s(layout, DType::F32);
  const std::string save_dir = dir / "ckpt";

  SECTION("keep_last 2 keeps the two newest; 0 keeps all") {
    CheckpointWriter keep2(save_dir, 2), keep_all(dir / "all", 0);
    for (int64_t step = 1; step <= 5; ++step) {
      fill(s, static_cast<uint64_t>(step));
      keep2.save(s.tensors(), sample_state(step * 10), kConfigYaml);
      keep_all.save(s.tensors(), sample_state(step * 10), kConfigYaml);
      keep2.wait();
      CHECK(read_text(save_dir + "/latest") == deco::checkpoint_dir_name(step * 10) + "\n");
      CHECK(entries(save_dir).size() == static_cast<size_t>(1 + std::min<int64_t>(step, 2)));
    }
    keep_all.wait();
    CHECK(entries(save_dir) == std::set<std::string>{"latest", "step_0000040", "step_0000050"});
    CHECK(entries(dir / "all") == std::set<std::string>{"latest", "step_0000010", "step_0000020",
                                                        "step_0000030", "step_0000040",
                                                        "step_0000050"});
    // Each directory holds its own step's values.
    Stores loaded(layout, DType::F32);
    CHECK(deco::load_checkpoint(dir / "all/step_0000030", loaded.tensors()).state.step == 30);
    fill(s, 3);
    CHECK(same_bytes(s.params, loaded.params));
    CHECK(same_bytes(s.exp_avg_sq, loaded.exp_avg_sq));
  }
  SECTION("after resuming from an older step: later directories are left alone, a step saved "
          "again is replaced") {
    CheckpointWriter writer(save_dir, 2);
    for (int64_t step : {10, 20, 30}) {
      fill(s, static_cast<uint64_t>(step));
      writer.save(s.tensors(), sample_state(step), kConfigYaml);
    }
    writer.wait();
    CHECK(entries(save_dir) == std::set<std::string>{"latest", "step_0000020", "step_0000030"});
    // Resumed from step 20 (say), the run saves step 25: latest follows it,
    // step 30 (the abandoned future) is not counted or removed.
    fill(s, 25);
    writer.save(s.tensors(), sample_state(25), kConfigYaml);
    writer.wait();
    CHECK(read_text(save_dir + "/latest") == "step_0000025\n");
    CHECK(entries(save_dir) ==
          std::set<std::string>{"latest", "step_0000020", "step_0000025", "step_0000030"});
    // Reaching step 30 again replaces the old directory.
    fill(s, 31);
    writer.save(s.tensors(), sample_state(30), kConfigYaml);
    writer.wait();
    CHECK(entries(save_dir) == std::set<std::string>{"latest", "step_0000025", "step_0000030"});
    Stores loaded(layout, DType::F32);
    deco::load_checkpoint(save_dir + "/step_0000030", loaded.tensors());
    CHECK(same_bytes(s.params, loaded.params));
    CHECK(same_bytes(s.exp_avg, loaded.exp_avg));
  }
}

TEST_CASE("checkpoint: the background save writes the snapshot save() took", "[checkpoint]") {
  TempDir dir;
  const ParamLayout layout(model_config(256, 4096));  // ~3.4M parameters, 40 MB a checkpoint
  Stores live(layout, DType::F32);
  fill(live, 7);
  Stores before(layout, DType::F32);
  fill(before, 7);
  CheckpointWriter writer(dir / "ckpt", 0);
  for (int round = 0; round < 2; ++round) {  // the second reuses the writer's host copy
    const int64_t step = 100 + round;
    fill(before, 7 + static_cast<uint64_t>(round));
    fill(live, 7 + static_cast<uint64_t>(round));
    writer.save(live.tensors(), sample_state(step), kConfigYaml);
    // Training goes on: the live stores change while the thread writes.
    fill(live, 1000 + static_cast<uint64_t>(round));
    writer.wait();
    Stores loaded(layout, DType::F32);
    deco::load_checkpoint(dir / ("ckpt/" + deco::checkpoint_dir_name(step)), loaded.tensors());
    CHECK(same_bytes(before.params, loaded.params));
    CHECK(same_bytes(before.exp_avg, loaded.exp_avg));
    CHECK(same_bytes(before.exp_avg_sq, loaded.exp_avg_sq));
    CHECK_FALSE(same_bytes(live.params, loaded.params));
  }
  CHECK(writer.last_write_bytes() > 3 * 4 * layout.num_parameters());
}

TEST_CASE("checkpoint: damaged checkpoints are errors naming the file and tensor", "[checkpoint]") {
  TempDir dir;
  const deco::ModelConfig config = model_config();
  const ParamLayout layout(config);
  Stores s(layout, DType::F32);
  fill(s, 5);
  save_now(dir / "ckpt", 0, s, 20);
  const std::string step_dir = dir / "ckpt/step_0000020";
  const std::string model = step_dir + "/model.h5", optimizer = step_dir + "/optimizer.h5";
  Stores loaded(layout, DType::F32);
  const auto nothing_loaded = [&] {
    return all_zero(loaded.params) && all_zero(loaded.exp_avg) && all_zero(loaded.exp_avg_sq);
  };

  SECTION("a flipped bit inside a tensor fails its checksum, and no store is touched") {
    // In optimizer.h5, so that model.h5 (read first) is fine: the check of
    // every file comes before any store is written.
    const deco::Tensor t = s.exp_avg_sq.get("model.layers.1.mlp.expert_up_proj.weight");
    const haddr_t offset = data_offset(optimizer, "/exp_avg_sq/model.layers.1.mlp.expert_up_proj.weight");
    flip_byte(optimizer, offset + 10);
    std::vector<unsigned char> bytes(static_cast<const unsigned char*>(t.raw()),
                                     static_cast<const unsigned char*>(t.raw()) + t.nbytes());
    const uint32_t stored = deco::crc32_of(bytes.data(), bytes.size());
    bytes[10] ^= 0x10;
    const uint32_t computed = deco::crc32_of(bytes.data(), bytes.size());
    CHECK(error_of([&] { deco::load_checkpoint(step_dir, loaded.tensors()); }) ==
          optimizer + ": tensor /exp_avg_sq/model.layers.1.mlp.expert_up_proj.weight fails its "
                      "checksum (crc32 " + std::to_string(stored) + " stored, " +
              std::to_string(computed) + " computed); the file is corrupted: resume from an "
                                         "earlier checkpoint");
    CHECK(nothing_loaded());
    // Weights-only loading checks the same checksums.
    flip_byte(model, data_offset(model, "/model/lm_head.weight") + 4);
    CHECK_THAT(error_of([&] { deco::load_weights_h5(model, loaded.params); }),
               StartsWith(model + ": tensor /model/lm_head.weight fails its checksum (crc32 ") &&
                   Contains("; the file is corrupted: copy or save it again"));
  }
  SECTION("truncated model.h5") {
    fs::resize_file(model, fs::file_size(model) - 100);
    const std::string message = error_of([&] { deco::load_checkpoint(step_dir, loaded.tensors()); });
    CHECK_THAT(message, StartsWith("cannot load checkpoint file " + model +
                                   ": HDF5 cannot open it (HDF5: truncated file"));
    CHECK_THAT(message, Contains("; the file may be truncated or corrupt (resume from an earlier "
                                 "checkpoint)"));
    CHECK(nothing_loaded());
  }
  SECTION("a file that is not HDF5") {
    std::ofstream(optimizer, std::ios::trunc) << "not hdf5";
    CHECK(error_of([&] { deco::load_checkpoint(step_dir, loaded.tensors()); }) ==
          "cannot load checkpoint file " + optimizer + ": it is not an HDF5 file; the file is "
          "corrupted: resume from an earlier checkpoint");
    CHECK(nothing_loaded());
  }
  SECTION("a missing tensor") {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    const hid_t f = H5Fopen(optimizer.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    REQUIRE(f >= 0);
    REQUIRE(H5Ldelete(f, "/exp_avg_sq/model.norm.weight", H5P_DEFAULT) >= 0);
    REQUIRE(H5Fclose(f) >= 0);
    CHECK_THAT(error_of([&] { deco::load_checkpoint(step_dir, loaded.tensors()); }),
               StartsWith(optimizer + " has no tensor /exp_avg_sq/model.norm.weight;"));
    CHECK(nothing_loaded());
  }
  SECTION("a tensor without its crc32") {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    const hid_t f = H5Fopen(model.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    REQUIRE(f >= 0);
    REQUIRE(H5Adelete_by_name(f, "/model/model.norm.weight", "crc32", H5P_DEFAULT) >= 0);
    REQUIRE(H5Fclose(f) >= 0);
    CHECK_THAT(error_of([&] { deco::load_checkpoint(step_dir, loaded.tensors()); }),
               StartsWith(model + ": tensor /model/model.norm.weight has no crc32 attribute;"));
    deco::load_weights_h5(model, loaded.params);  // weights files need not carry one
    CHECK(same_bytes(s.params, loaded.params));
  }
  SECTION("a checkpoint of another config: both shapes in the message") {
    const ParamLayout wide(model_config(24, 32));
    Stores other(wide, DType::F32);
    CHECK(error_of([&] { deco::load_checkpoint(step_dir, other.tensors()); }) ==
          model + ": tensor /model/model.embed_tokens.weight has shape [32, 16] but the config "
                  "expects [32, 24]; it was written for a different model config (check "
                  "vocab_size, hidden_size)");
    CHECK(all_zero(other.params));
  }
  SECTION("missing or incomplete state.h5") {
    fs::remove(step_dir + "/state.h5");
    CHECK(error_of([&] { deco::load_checkpoint(step_dir, loaded.tensors()); }) ==
          "cannot load checkpoint " + step_dir + ": " + step_dir + "/state.h5 is missing, so the "
          "checkpoint is incomplete; resume from an earlier checkpoint");
    deco::save_scalars_h5(step_dir + "/state.h5", {{"step", int64_t{20}}, {"config", std::string("x")}});
    CHECK(error_of([&] { deco::load_checkpoint(step_dir, loaded.tensors()); }) ==
          step_dir + "/state.h5 has no /consumed_samples; the checkpoint's training state is "
                     "incomplete: resume from an earlier checkpoint");
    CHECK(nothing_loaded());
  }
  SECTION("missing optimizer.h5") {
    fs::remove(optimizer);
    CHECK(error_of([&] { deco::load_checkpoint(step_dir, loaded.tensors()); }) ==
          "cannot load checkpoint " + step_dir + ": " + optimizer + " is missing, so the "
          "checkpoint is incomplete; resume from an earlier checkpoint");
    CHECK(nothing_loaded());
    deco::load_checkpoint(step_dir, {&loaded.params, nullptr, nullptr});  // weights alone load
    CHECK(same_bytes(s.params, loaded.params));
  }
  SECTION("a directory that does not exist, or a file") {
    CHECK_THAT(error_of([&] { deco::load_checkpoint(dir / "nope", loaded.tensors()); }),
               StartsWith("cannot load checkpoint " + (dir / "nope") + ": No such file or directory"));
    CHECK_THAT(error_of([&] { deco::load_checkpoint(model, loaded.tensors()); }),
               StartsWith("cannot load checkpoint " + model + ": it is not a directory"));
  }
}

TEST_CASE("checkpoint: a full disk fails the save and keeps the previous checkpoint", "[checkpoint]") {
  TempDir dir;
  const ParamLayout layout(model_config(64, 512));  // ~120K parameters, 480 KB a store
  Stores first(layout, DType::F32), second(layout, DType::F32);
  fill(first, 1);
  fill(second, 2);
  const std::string save_dir = dir / "ckpt";
  save_now(save_dir, 1, first, 10);

  // A child process with a file-size limit: writes beyond 256 KiB fail with
  // EFBIG the way a full disk fails with ENOSPC (latest and state.h5 fit).
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit limit {};
    ::getrlimit(RLIMIT_FSIZE, &limit);
    limit.rlim_cur = 256 << 10;
    ::setrlimit(RLIMIT_FSIZE, &limit);
    std::string message = "<no error>";
    try {
      CheckpointWriter writer(save_dir, 1);
      writer.save(second.tensors(), sample_state(20), kConfigYaml);
      writer.wait();
    } catch (const std::exception& e) {
      message = e.what();
    }
    const ssize_t n = ::write(fds[1], message.data(), message.size());
    ::_exit(n == static_cast<ssize_t>(message.size()) ? 0 : 1);
  }
  ::close(fds[1]);
  std::string message;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof buf)) > 0) message.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));

  const std::string tmp_model = save_dir + "/step_0000020.tmp-" + std::to_string(pid) + "/model.h5";
  CHECK_THAT(message, StartsWith("checkpoint step_0000020 was not saved: cannot write " + tmp_model +
                                 ": writing failed after "));
  CHECK_THAT(message, Contains(" bytes: File too large; " + save_dir +
                               "/latest still names step_0000010, which is intact"));
  CHECK(entries(save_dir) == std::set<std::string>{"latest", "step_0000010"});  // no temporary left
  CHECK(read_text(save_dir + "/latest") == "step_0000010\n");
  Stores loaded(layout, DType::F32);
  CHECK(deco::load_checkpoint(deco::resolve_checkpoint("auto", save_dir), loaded.tensors()).state.step == 10);
  CHECK(same_bytes(first.params, loaded.params));
  CHECK(same_bytes(first.exp_avg_sq, loaded.exp_avg_sq));

  // With space again the next save works (and keep_last 1 removes step 10).
  save_now(save_dir, 1, second, 20);
  CHECK(entries(save_dir) == std::set<std::string>{"latest", "step_0000020"});
  deco::load_checkpoint(save_dir + "/step_0000020", loaded.tensors());
  CHECK(same_bytes(second.params, loaded.params));
}

TEST_CASE("checkpoint: SIGKILL at any moment of a save leaves latest loadable", "[checkpoint]") {
  TempDir dir;
  // ~12M parameters: 150 MB a checkpoint, long enough to be killed mid-write.
  const ParamLayout layout(model_config(384, 12288));
  Stores s(layout, DType::F32);
  fill(s, 1);
  const std::string save_dir = dir / "ckpt";
  save_now(save_dir, 2, s, 1);
  const uint32_t first_crc = store_crc(s.exp_avg_sq);
  fill(s, 2);  // what the children save
  const uint32_t second_crc = store_crc(s.exp_avg_sq);
  REQUIRE(first_crc != second_crc);

  Stores loaded(layout, DType::F32);
  int killed_mid_save = 0, killed_while_writing = 0, completed = 0;
  std::string expected_latest = "step_0000001";
  const int delays_ms[] = {0, 1, 3, 10, 30, 60, 100, 150, 250, 400, 700};
  for (size_t round = 0; round < std::size(delays_ms); ++round) {
    const int64_t step = 10 + static_cast<int64_t>(round);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      try {
        CheckpointWriter writer(save_dir, 2);
        writer.save(s.tensors(), sample_state(step), kConfigYaml);
        writer.wait();
      } catch (...) {
        ::_exit(1);
      }
      ::_exit(0);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(delays_ms[round]));
    ::kill(pid, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    const bool killed = WIFSIGNALED(status);
    const std::string child_tmp = save_dir + "/" + deco::checkpoint_dir_name(step) + ".tmp-" +
                                  std::to_string(pid);
    killed_while_writing += killed && fs::exists(child_tmp + "/model.h5");
    if (!killed) {
      INFO("the child's save failed");
      REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    }

    // Whatever latest names is complete and passes every checksum.
    const std::string resolved = deco::resolve_checkpoint("auto", save_dir);
    const std::string name = read_text(save_dir + "/latest");
    INFO("round " << round << ", killed after " << delays_ms[round] << " ms: latest = " << name);
    REQUIRE(resolved == save_dir + "/" + name.substr(0, name.size() - 1));
    const deco::LoadedCheckpoint got = deco::load_checkpoint(resolved, loaded.tensors());
    CHECK(deco::checkpoint_dir_name(got.state.step) + "\n" == name);
    CHECK(store_crc(loaded.exp_avg_sq) == (got.state.step == 1 ? first_crc : second_crc));
    if (killed && name == expected_latest + "\n") ++killed_mid_save;
    if (name != expected_latest + "\n") {
      CHECK(name == deco::checkpoint_dir_name(step) + "\n");  // the child got through
      ++completed;
      expected_latest = deco::checkpoint_dir_name(step);
    }
  }
  INFO(killed_mid_save << " saves killed midway (" << killed_while_writing << " of them with "
       "files half-written), " << completed << " completed");
  CHECK(killed_mid_save >= 3);
  CHECK(killed_while_writing >= 1);

  // The next save clears what the killed ones left behind.
  save_now(save_dir, 2, s, 100);
  CHECK(tmp_entries(save_dir) == 0);
  CHECK(read_text(save_dir + "/latest") == "step_0000100\n");
}

TEST_CASE("checkpoint: resolve_checkpoint", "[checkpoint]") {
  TempDir dir;
  const ParamLayout layout(model_config());
  Stores s(layout, DType::F32);
  const std::string save_dir = dir / "ckpt";

  CHECK(deco::resolve_checkpoint("", save_dir).empty());
  CHECK(deco::resolve_checkpoint("auto", "").empty());
  CHECK(deco::resolve_checkpoint("auto", save_dir).empty());  // nothing saved yet: start fresh
  save_now(save_dir, 0, s, 10);
  save_now(save_dir, 0, s, 20);
  CHECK(deco::resolve_checkpoint("auto", save_dir) == save_dir + "/step_0000020");
  CHECK(deco::resolve_checkpoint("auto", save_dir + "/") == save_dir + "/step_0000020");
  CHECK(deco::resolve_checkpoint(save_dir, "") == save_dir + "/step_0000020");  // a save directory
  CHECK(deco::resolve_checkpoint(save_dir + "/step_0000010", save_dir) == save_dir + "/step_0000010");

  SECTION("leftover temporaries are ignored, refused by name, and cleaned by the next save") {
    // One of a process that no longer exists (pids never reach 10^9), one
    // of a live process (this test's parent) that may still be writing.
    const std::string dead = save_dir + "/step_0000030.tmp-999999999";
    const std::string live = save_dir + "/step_0000030.tmp-" + std::to_string(::getppid());
    fs::create_directories(dead);
    fs::create_directories(live);
    std::ofstream(dead + "/model.h5") << "partial";
    CHECK(deco::resolve_checkpoint("auto", save_dir) == save_dir + "/step_0000020");
    CHECK(error_of([&] { deco::resolve_checkpoint(dead, save_dir); }) ==
          "checkpoint.load: " + dead + " is an unfinished save (a run was stopped while writing "
          "it) and is not a checkpoint; load a complete step directory");
    save_now(save_dir, 0, s, 40);
    CHECK_FALSE(fs::exists(dead));
    CHECK(fs::exists(live));
  }
  SECTION("errors name the path") {
    CHECK(error_of([&] { deco::resolve_checkpoint(dir / "nope", save_dir); }) ==
          "checkpoint.load: " + (dir / "nope") + " does not exist (No such file or directory); "
          "give a step directory such as <save>/step_0001000, a save directory with a `latest` "
          "file, or auto");
    const std::string file = save_dir + "/step_0000010/model.h5";
    CHECK(error_of([&] { deco::resolve_checkpoint(file, save_dir); }) ==
          "checkpoint.load: " + file + " is a file, not a checkpoint directory; give a step "
          "directory such as <save>/step_0001000 (to start from weights only, pass the file to "
          "--load)");
    fs::create_directories(dir / "empty");
    CHECK(error_of([&] { deco::resolve_checkpoint(dir / "empty", save_dir); }) ==
          "checkpoint.load: " + (dir / "empty") + " is not a checkpoint: it has neither state.h5 "
          "(a step directory) nor `latest` (a save directory)");
    std::ofstream(save_dir + "/latest", std::ios::trunc) << "step_0000099\n";
    CHECK(error_of([&] { deco::resolve_checkpoint("auto", save_dir); }) ==
          save_dir + "/latest names step_0000099, but " + save_dir + "/step_0000099 does not "
          "exist; set checkpoint.load to an existing step directory of " + save_dir);
    std::ofstream(save_dir + "/latest", std::ios::trunc) << "../elsewhere\n";
    CHECK(error_of([&] { deco::resolve_checkpoint("auto", save_dir); }) ==
          save_dir + "/latest does not name a checkpoint directory (it holds '../elsewhere'); "
          "write the name of a step directory such as step_0001000 into it, or set "
          "checkpoint.load to a step directory");
  }
}

TEST_CASE("checkpoint: a failed save surfaces at the next save() or wait()", "[checkpoint]") {
  TempDir dir;
  const ParamLayout layout(model_config());
  Stores s(layout, DType::F32);
  std::ofstream(dir / "file") << "in the way";
  const std::string bad = dir / "file/ckpt";
  const std::string expected = "checkpoint step_0000001 was not saved: cannot create the directory " +
                               bad + " (Not a directory); check checkpoint.save";
  {
    CheckpointWriter writer(bad, 0);
    writer.save(s.tensors(), sample_state(1), kConfigYaml);  // returns: the thread fails later
    CHECK(error_of([&] { writer.save(s.tensors(), sample_state(2), kConfigYaml); }) == expected);
    CHECK(error_of([&] { writer.wait(); }) == "<no deco::Error thrown>");  // reported once
  }
  {
    CheckpointWriter writer(bad, 0);
    writer.save(s.tensors(), sample_state(1), kConfigYaml);
    CHECK(error_of([&] { writer.wait(); }) == expected);
  }
  // The destructor reports without throwing.
  std::ostringstream captured;
  std::streambuf* saved = std::cerr.rdbuf(captured.rdbuf());
  {
    CheckpointWriter writer(bad, 0);
    writer.save(s.tensors(), sample_state(1), kConfigYaml);
  }
  std::cerr.rdbuf(saved);
  CHECK(captured.str() == "error: " + expected + "\n");
}

namespace {

// The values of a whole-model store that a (possibly expert-sharded) layout holds.
void copy_blocks(const ParamStore& whole, const ParamStore& part) {
  for (const ParamSpec& spec : part.layout().specs()) {
    const deco::Block b = deco::block_of(spec);
    const deco::Tensor from = whole.get(spec.name), to = part.get(spec);
    for (int64_t r = 0; r < b.rows(); ++r)
      for (int64_t k = 0; k < b.cols(); ++k)
        to.data<float>()[r * b.cols() + k] = from.data<float>()[(b.r0 + r) * (spec.full_shape.ndim == 1 ? 1 : spec.full_shape[1]) + b.c0 + k];
  }
}

deco::ShardedSave sharded_save(const ParamLayout& layout, int64_t rank, std::vector<int64_t> writers) {
  deco::ShardedSave s;
  s.context.rank = rank;
  s.context.writes_dense = rank == 0;
  s.context.writes_experts = true;
  s.layout = &layout;
  s.job_id = std::to_string(::getpid());
  s.writers = std::move(writers);
  s.timeout_s = 30;
  return s;
}

}  // namespace

TEST_CASE("checkpoint: pieces written by expert-parallel ranks load into any layout", "[checkpoint]") {
  TempDir dir;
  const deco::ModelConfig c = model_config();
  const ParamLayout whole(c), rank0(c, 2, 0), rank1(c, 2, 1);
  Stores full(whole, DType::F32);
  fill(full, 11);
  Stores part0(rank0, DType::F32), part1(rank1, DType::F32);
  for (int k = 0; k < 3; ++k) {
    copy_blocks(*full.all()[k], *part0.all()[k]);
    copy_blocks(*full.all()[k], *part1.all()[k]);
  }
  TrainingState state;
  state.step = 10;
  const std::string save = dir / "save";
  {
    // Two ranks' writers, as two threads of this process.
    CheckpointWriter w0(save, 0, sharded_save(rank0, 0, {0, 1}));
    CheckpointWriter w1(save, 0, sharded_save(rank1, 1, {0, 1}));
    auto tensors = [](const Stores& s) {
      CheckpointTensors t;
      t.params = &s.params;
      t.exp_avg_flat = s.exp_avg.flat();
      t.exp_avg_sq_flat = s.exp_avg_sq.flat();
      return t;
    };
    w1.save(tensors(part1), state, "model: {}\n");
    w0.save(tensors(part0), state, "model: {}\n");
    w0.wait();
    w1.wait();
  }
  const std::string step_dir = save + "/step_0000010";
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(step_dir)) names.insert(e.path().filename().string());
  CHECK(names == std::set<std::string>{"rank_00000.h5", "rank_00001.h5", "state.h5"});
  CHECK(deco::is_sharded_checkpoint(step_dir));
  CHECK(deco::resolve_checkpoint("auto", save) == step_dir);

  SECTION("into one rank holding everything: bit-exact") {
    Stores loaded(whole, DType::F32);
    const deco::Tensor m = loaded.exp_avg.flat(), v = loaded.exp_avg_sq.flat();
    const deco::LoadedCheckpoint got =
        deco::load_checkpoint_pieces(step_dir, whole, deco::ShardContext{}, &loaded.params, &m, &v);
    CHECK(got.state.step == 10);
    CHECK(same_bytes(loaded.params, full.params));
    CHECK(same_bytes(loaded.exp_avg, full.exp_avg));
    CHECK(same_bytes(loaded.exp_avg_sq, full.exp_avg_sq));
  }
  SECTION("an unsharded checkpoint into an expert-parallel rank: its block") {
    {
      CheckpointWriter w(dir / "plain", 0);
      state.step = 20;
      w.save(full.tensors(), state, "model: {}\n");
      w.wait();
    }
    Stores loaded(rank1, DType::F32);
    const deco::Tensor m = loaded.exp_avg.flat(), v = loaded.exp_avg_sq.flat();
    deco::load_checkpoint_pieces(dir / "plain/step_0000020", rank1, deco::ShardContext{}, &loaded.params, &m, &v);
    CHECK(same_bytes(loaded.params, part1.params));
    CHECK(same_bytes(loaded.exp_avg_sq, part1.exp_avg_sq));
  }
  SECTION("a missing rank file is an error naming it, and nothing is loaded") {
    fs::remove(step_dir + "/rank_00001.h5");
    Stores loaded(whole, DType::F32);
    const deco::Tensor m = loaded.exp_avg.flat(), v = loaded.exp_avg_sq.flat();
    const std::string msg = error_of(
        [&] { deco::load_checkpoint_pieces(step_dir, whole, deco::ShardContext{}, &loaded.params, &m, &v); });
    CHECK_THAT(msg, Contains("rank_00001.h5 is missing"));
    CHECK(all_zero(loaded.params));
  }
}

TEST_CASE("checkpoint: pieces that do not cover a tensor are an error", "[checkpoint]") {
  TempDir dir;
  const deco::ModelConfig c = model_config();
  const ParamLayout whole(c), rank0(c, 2, 0);
  Stores part0(rank0, DType::F32);
  fill(part0, 5);
  TrainingState state;
  state.step = 3;
  {
    CheckpointWriter w0(dir / "save", 0, sharded_save(rank0, 0, {0}));  // rank 1's experts never written
    CheckpointTensors t;
    t.params = &part0.params;
    t.exp_avg_flat = part0.exp_avg.flat();
    t.exp_avg_sq_flat = part0.exp_avg_sq.flat();
    w0.save(t, state, "model: {}\n");
    w0.wait();
  }
  Stores loaded(whole, DType::F32);
  const deco::Tensor m = loaded.exp_avg.flat(), v = loaded.exp_avg_sq.flat();
  const std::string msg = error_of([&] {
    deco::load_checkpoint_pieces(dir / "save/step_0000003", whole, deco::ShardContext{}, &loaded.params, &m, &v);
  });
  CHECK_THAT(msg, Contains("expert_up_proj.weight this rank needs"));
  CHECK_THAT(msg, Contains("the checkpoint is incomplete"));
  CHECK(all_zero(loaded.params));
}

TEST_CASE("checkpoint: GPU stores are copied to the host, written in the background and loaded back",
          "[checkpoint][gpu]") {
  if (deco::cuda_device_count() == 0) {  // runs in the GPU suite's machines
    WARN("skipped: no CUDA device");
    return;
  }
  TempDir dir;
  const deco::ModelConfig c = model_config();
  const ParamLayout layout(c);
  Stores host(layout, DType::F32);
  fill(host, 8);
  auto to_device = [](const ParamStore& from, const ParamStore& to) {
    deco::device_copy(deco::Device::CUDA, to.flat().raw(), deco::Device::CPU, from.flat().raw(), from.flat().nbytes());
  };
  ParamStore p(layout, DType::F32, deco::Device::CUDA), m(layout, DType::F32, deco::Device::CUDA),
      v(layout, DType::F32, deco::Device::CUDA);
  to_device(host.params, p);
  to_device(host.exp_avg, m);
  to_device(host.exp_avg_sq, v);
  TrainingState state;
  state.step = 4;
  CheckpointWriter writer(dir / "save", 0);
  writer.save({&p, &m, &v}, state, "model: {}\n");
  deco::ops::zero(p.flat());  // training goes on: the save holds its own copy
  writer.wait();

  ParamStore p2(layout, DType::F32, deco::Device::CUDA), m2(layout, DType::F32, deco::Device::CUDA),
      v2(layout, DType::F32, deco::Device::CUDA);
  deco::load_checkpoint(dir / "save/step_0000004", {&p2, &m2, &v2});
  Stores back(layout, DType::F32);
  int k = 0;
  for (const ParamStore* s : {&p2, &m2, &v2}) {
    const ParamStore& dst = *back.all()[k++];
    deco::device_copy(deco::Device::CPU, dst.flat().raw(), deco::Device::CUDA, s->flat().raw(), s->flat().nbytes());
  }
  CHECK(same_bytes(back.params, host.params));
  CHECK(same_bytes(back.exp_avg, host.exp_avg));
  CHECK(same_bytes(back.exp_avg_sq, host.exp_avg_sq));
}
