// HDF5 weights files: bit-exact round trips, dtype conversion, h5py reading
// our files, the config-mismatch and bad-value errors, and atomic saving.
#include <hdf5.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/params.h"
#include "trainer/weights_io.h"
#include "test_util.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using deco::DType;
using deco::ParamLayout;
using deco::ParamSpec;
using deco::ParamStore;

using deco::test::TempDir;
using deco::test::error_of;
using deco::test::have_h5py;
using deco::test::kPython;
using deco::test::run_command;

namespace {

deco::ModelConfig small_config() {
  deco::ModelConfig c;
  c.num_layers = 2;
  c.hidden_size = 16;
  c.num_attention_heads = 2;
  c.num_query_groups = 2;
  c.ffn_hidden_size = 24;
  c.vocab_size = 32;
  c.seq_length = 8;
  c.num_experts = 4;
  c.moe_ffn_hidden_size = 4;
  c.moe_shared_expert_intermediate_size = 8;
  c.dense_layers = 1;
  return c;
}

bool same_bytes(const ParamStore& a, const ParamStore& b, const ParamSpec& spec) {
  const deco::Tensor ta = a.get(spec), tb = b.get(spec);
  return ta.nbytes() == tb.nbytes() && std::memcmp(ta.raw(), tb.raw(), ta.nbytes()) == 0;
}

bool all_zero(const ParamStore& s) {
  const auto* p = static_cast<const unsigned char*>(s.flat().raw());
  for (size_t i = 0; i < s.flat().nbytes(); ++i)
    if (p[i] != 0) return false;
  return true;
}

// Replaces dataset `where` of an existing file with one of another type,
// shape or values, the way a foreign tool might have written it.
void replace_dataset(const std::string& file, const std::string& where, hid_t file_type,
                     const std::vector<hsize_t>& dims, hid_t mem_type, const void* data) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  REQUIRE(f >= 0);
  REQUIRE(H5Ldelete(f, where.c_str(), H5P_DEFAULT) >= 0);
  const hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  const hid_t d = H5Dcreate2(f, where.c_str(), file_type, space, H5P_DEFAULT, H5P_DEFAULT,
                             H5P_DEFAULT);
  REQUIRE(d >= 0);
  REQUIRE(H5Dwrite(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0);
  H5Dclose(d);
  H5Sclose(space);
  REQUIRE(H5Fclose(f) >= 0);
}

}  // namespace

TEST_CASE("weights: save and load round trip", "[io]") {
  TempDir dir;
  const deco::ModelConfig config = small_config();
  const ParamLayout layout(config);
  ParamStore saved(layout, DType::F32, deco::Device::CPU);
  deco::init_params(saved, config, 7);
  const std::string path = dir / "W.h5";
  deco::save_weights_h5(path, saved, {{"step", "10"}, {"config", "tiny.yaml"}});
  CHECK(dir.entries() == 1);  // no temporary left behind

  SECTION("into float32: bit-exact") {
    ParamStore loaded(layout, DType::F32, deco::Device::CPU);
    deco::load_weights_h5(path, loaded);
    for (const ParamSpec& spec : layout.specs()) {
      INFO(spec.name);
      CHECK(same_bytes(saved, loaded, spec));
    }
  }
  SECTION("into float64: every value exact") {
    ParamStore loaded(layout, DType::F64, deco::Device::CPU);
    deco::load_weights_h5(path, loaded);
    for (const ParamSpec& spec : layout.specs()) {
      const float* a = saved.get(spec).data<float>();
      const double* b = loaded.get(spec).data<double>();
      int64_t mismatches = 0;
      for (int64_t i = 0; i < spec.shape.numel(); ++i) mismatches += static_cast<double>(a[i]) != b[i];
      INFO(spec.name);
      CHECK(mismatches == 0);
    }
    // And back: a float64 store is written as float32, so the file is the same.
    deco::save_weights_h5(dir / "W64.h5", loaded);
    ParamStore again(layout, DType::F32, deco::Device::CPU);
    deco::load_weights_h5(dir / "W64.h5", again);
    for (const ParamSpec& spec : layout.specs()) CHECK(same_bytes(saved, again, spec));
  }
  SECTION("into bfloat16: rounded to nearest, and bf16 saves exactly") {
    ParamStore bf(layout, DType::BF16, deco::Device::CPU);
    deco::load_weights_h5(path, bf);
    const ParamSpec& spec = layout.spec("lm_head.weight");
    const float* a = saved.get(spec).data<float>();
    const auto* b = static_cast<const uint16_t*>(bf.get(spec).raw());
    double worst = 0.0;
    for (int64_t i = 0; i < spec.shape.numel(); ++i) {
      uint32_t bits = static_cast<uint32_t>(b[i]) << 16;
      float f;
      std::memcpy(&f, &bits, sizeof f);
      worst = std::max(worst, std::fabs(static_cast<double>(f) - a[i]) / std::fabs(a[i]));
    }
    CHECK(worst <= 1.0 / 256);  // half a bf16 ulp: 8 bits of mantissa
    CHECK(worst > 0.0);
    deco::save_weights_h5(dir / "Wbf.h5", bf);
    ParamStore bf2(layout, DType::BF16, deco::Device::CPU);
    deco::load_weights_h5(dir / "Wbf.h5", bf2);
    for (const ParamSpec& s : layout.specs()) CHECK(same_bytes(bf, bf2, s));
  }
  SECTION("float64 datasets written by other tools are read") {
    const ParamSpec& spec = layout.spec("model.norm.weight");
    std::vector<double> values(static_cast<size_t>(spec.shape.numel()));
    for (size_t i = 0; i < values.size(); ++i) values[i] = 0.1 * static_cast<double>(i) + 1.0 / 3;
    replace_dataset(path, "/model/model.norm.weight", H5T_IEEE_F64LE, {values.size()},
                    H5T_NATIVE_DOUBLE, values.data());
    ParamStore f32(layout, DType::F32, deco::Device::CPU), f64(layout, DType::F64, deco::Device::CPU);
    deco::load_weights_h5(path, f32);
    deco::load_weights_h5(path, f64);
    for (size_t i = 0; i < values.size(); ++i) {
      CHECK(f32.get(spec).data<float>()[i] == static_cast<float>(values[i]));
      CHECK(f64.get(spec).data<double>()[i] == values[i]);
    }
  }
  SECTION("another group, for gradients or EMA weights") {
    deco::save_weights_h5(dir / "G.h5", saved, {}, "grads");
    ParamStore loaded(layout, DType::F32, deco::Device::CPU);
    deco::load_weights_h5(dir / "G.h5", loaded, "grads");
    for (const ParamSpec& spec : layout.specs()) CHECK(same_bytes(saved, loaded, spec));
    CHECK_THAT(error_of([&] { deco::load_weights_h5(dir / "G.h5", loaded); }),
               Contains("G.h5 has no group /model (it holds /grads); it is not a deco weights file, "
                        "or was saved under another group"));
  }
  SECTION("saving over an existing file replaces it") {
    ParamStore other(layout, DType::F32, deco::Device::CPU);
    deco::init_params(other, config, 8);
    deco::save_weights_h5(path, other);
    ParamStore loaded(layout, DType::F32, deco::Device::CPU);
    deco::load_weights_h5(path, loaded);
    for (const ParamSpec& spec : layout.specs()) CHECK(same_bytes(other, loaded, spec));
    CHECK(dir.entries() == 1);
  }
}

TEST_CASE("weights: h5py reads the files deco writes", "[io]") {
  if (!have_h5py()) {
    WARN("skipped: " << kPython << " with numpy and h5py not found");
    return;
  }
  TempDir dir;
  const deco::ModelConfig config = small_config();
  const ParamLayout layout(config);
  ParamStore store(layout, DType::F32, deco::Device::CPU);
  deco::init_params(store, config, 3);
  const std::string path = dir / "W.h5";
  deco::save_weights_h5(path, store, {{"step", "10"}});

  int rc = 0;
  std::istringstream lines(
      run_command(std::string(kPython) + " " + deco::test::source_dir() + "/tests/reference/check_io.py h5-summary " +
              path,
          &rc));
  REQUIRE(rc == 0);
  std::map<std::string, std::string> attrs;
  size_t datasets = 0;
  std::string kind;
  while (lines >> kind) {
    if (kind == "attr") {
      std::string key, type, value;
      lines >> key >> type;
      std::getline(lines, value);
      attrs[key] = type + value;
      continue;
    }
    REQUIRE(kind == "dataset");
    std::string where, descr, shape;
    double sum, first, last;
    lines >> where >> descr >> shape >> sum >> first >> last;
    REQUIRE(where.rfind("/model/", 0) == 0);
    const ParamSpec* spec = layout.find(where.substr(7));
    INFO(where);
    REQUIRE(spec != nullptr);
    ++datasets;
    std::string want_shape;
    for (int d = 0; d < spec->shape.ndim; ++d)
      want_shape += (d ? "," : "") + std::to_string(spec->shape[d]);
    CHECK(descr == "<f4");
    CHECK(shape == want_shape);
    const float* v = store.get(*spec).data<float>();
    const int64_t n = spec->shape.numel();
    double want_sum = 0.0;
    for (int64_t i = 0; i < n; ++i) want_sum += v[i];
    CHECK(first == static_cast<double>(v[0]));
    CHECK(last == static_cast<double>(v[n - 1]));
    CHECK(sum == Approx(want_sum).epsilon(1e-9).margin(1e-12));
  }
  CHECK(datasets == layout.specs().size());
  CHECK(attrs["format"] == "str deco-weights");
  CHECK(attrs["format_version"] == "int64 1");
  CHECK(attrs["step"] == "str 10");
  // Spot-check a shape against the documented layout: lm_head is [V, H].
  CHECK(layout.spec("lm_head.weight").shape == deco::Shape{32, 16});

  // A tensor deleted by another tool is reported by name.
  REQUIRE(std::system((std::string(kPython) + " " + deco::test::source_dir() +
                       "/tests/reference/check_io.py h5-delete " + path +
                       " /model/model.layers.1.mlp.moe_router.weight")
                          .c_str()) == 0);
  ParamStore loaded(layout, DType::F32, deco::Device::CPU);
  CHECK(error_of([&] { deco::load_weights_h5(path, loaded); }) ==
        path + " has no tensor /model/model.layers.1.mlp.moe_router.weight; it was written for a "
               "different model config (e.g. a different num_experts or dense_layers): load it "
               "with the config it was trained with");
}

TEST_CASE("weights: config mismatches are errors naming the tensor", "[io]") {
  TempDir dir;
  const deco::ModelConfig config = small_config();
  const ParamLayout layout(config);
  ParamStore store(layout, DType::F32, deco::Device::CPU);
  deco::init_params(store, config, 5);
  const std::string path = dir / "W.h5";
  deco::save_weights_h5(path, store);

  SECTION("missing file, directory, not HDF5") {
    ParamStore loaded(layout, DType::F32, deco::Device::CPU);
    CHECK(error_of([&] { deco::load_weights_h5(dir / "nope.h5", loaded); }) ==
          "cannot load weights from " + (dir / "nope.h5") +
              ": No such file or directory; check the path");
    CHECK(error_of([&] { deco::load_weights_h5(dir.path.string(), loaded); }) ==
          "cannot load weights from " + dir.path.string() + ": it is a directory, not an HDF5 file");
    std::ofstream(dir / "text.h5") << "step,loss\n1,2.5\n";
    CHECK(error_of([&] { deco::load_weights_h5(dir / "text.h5", loaded); }) ==
          "cannot load weights from " + (dir / "text.h5") +
              ": it is not an HDF5 file (deco reads weights as HDF5, written by deco or with h5py)");
  }
  SECTION("truncated HDF5 file") {
    fs::copy_file(path, dir / "cut.h5");
    fs::resize_file(dir / "cut.h5", 3000);
    ParamStore loaded(layout, DType::F32, deco::Device::CPU);
    const std::string message = error_of([&] { deco::load_weights_h5(dir / "cut.h5", loaded); });
    CHECK_THAT(message, StartsWith("cannot load weights from " + (dir / "cut.h5") +
                                   ": HDF5 cannot open it (HDF5: truncated file"));
    CHECK_THAT(message, Contains("; the file may be truncated or corrupt (copy or save it again)"));
  }
  SECTION("gated file into a non-gated config, and the reverse") {
    deco::ModelConfig gated_config = config;
    gated_config.expert_gated = true;
    const ParamLayout gated_layout(gated_config);
    ParamStore gated(gated_layout, DType::F32, deco::Device::CPU);
    deco::init_params(gated, gated_config, 5);
    deco::save_weights_h5(dir / "gated.h5", gated);

    ParamStore plain(layout, DType::F32, deco::Device::CPU);
    CHECK(error_of([&] { deco::load_weights_h5(dir / "gated.h5", plain); }) ==
          dir / "gated.h5" + " holds tensors the config does not have: "
                             "/model/model.layers.1.mlp.expert_gate_proj.weight; it was written for "
                             "a different model config (e.g. expert_gated: true): load it with the "
                             "config it was trained with");
    CHECK(all_zero(plain));  // nothing half-loaded

    ParamStore gated_loaded(gated_layout, DType::F32, deco::Device::CPU);
    CHECK(error_of([&] { deco::load_weights_h5(path, gated_loaded); }) ==
          path + " has no tensor /model/model.layers.1.mlp.expert_gate_proj.weight; it was "
                 "written for a different model config (e.g. expert_gated: false): load it with the "
                 "config it was trained with");
    CHECK(all_zero(gated_loaded));
  }
  SECTION("different num_layers") {
    deco::ModelConfig deep_config = config;
    deep_config.num_layers = 4;
    const ParamLayout deep_layout(deep_config);
    ParamStore deep(deep_layout, DType::F32, deco::Device::CPU);
    CHECK_THAT(error_of([&] { deco::load_weights_h5(path, deep); }),
               StartsWith(path + " has no tensor /model/model.layers.2.input_layernorm.weight (nor "
                                 "27 other tensors the config needs); it was written for a "
                                 "different model config (e.g. a smaller num_layers)"));
    deco::init_params(deep, deep_config, 5);
    deco::save_weights_h5(dir / "deep.h5", deep);
    ParamStore loaded(layout, DType::F32, deco::Device::CPU);
    CHECK_THAT(error_of([&] { deco::load_weights_h5(dir / "deep.h5", loaded); }),
               Contains("deep.h5 holds tensors the config does not have: "
                        "/model/model.layers.2.input_layernorm.weight, "
                        "/model/model.layers.2.mlp.expert_act.rms_norm.weight, "
                        "/model/model.layers.2.mlp.expert_down_proj.weight and 25 more; it was "
                        "written for a different model config (e.g. a larger num_layers)"));
  }
  SECTION("different hidden_size: both shapes in the message") {
    deco::ModelConfig wide_config = config;
    wide_config.hidden_size = 24;
    const ParamLayout wide_layout(wide_config);
    ParamStore wide(wide_layout, DType::F32, deco::Device::CPU);
    CHECK(error_of([&] { deco::load_weights_h5(path, wide); }) ==
          path + ": tensor /model/model.embed_tokens.weight has shape [32, 16] but the config "
                 "expects [32, 24]; it was written for a different model config (check "
                 "vocab_size, hidden_size)");
    CHECK(all_zero(wide));
  }
  SECTION("different moe_ffn_hidden_size") {
    deco::ModelConfig other = config;
    other.moe_ffn_hidden_size = 8;
    const ParamLayout other_layout(other);
    ParamStore s(other_layout, DType::F32, deco::Device::CPU);
    CHECK(error_of([&] { deco::load_weights_h5(path, s); }) ==
          path + ": tensor /model/model.layers.1.mlp.expert_up_proj.weight has shape [16, 16] but "
                 "the config expects [32, 16]; it was written for a different model config (check "
                 "num_experts, moe_ffn_hidden_size, hidden_size)");
  }
  SECTION("integer dataset") {
    std::vector<int32_t> ints(32 * 16, 1);
    replace_dataset(path, "/model/lm_head.weight", H5T_STD_I32LE, {32, 16}, H5T_NATIVE_INT32,
                    ints.data());
    ParamStore loaded(layout, DType::F32, deco::Device::CPU);
    CHECK(error_of([&] { deco::load_weights_h5(path, loaded); }) ==
          path + ": tensor /model/lm_head.weight holds integer data; weights must be floating "
                 "point (float32 or float64)");
    CHECK(all_zero(loaded));
  }
}

TEST_CASE("weights: non-finite and out-of-range values are refused", "[io]") {
  TempDir dir;
  const deco::ModelConfig config = small_config();
  const ParamLayout layout(config);
  ParamStore store(layout, DType::F32, deco::Device::CPU);
  deco::init_params(store, config, 5);
  const std::string path = dir / "W.h5";
  ParamStore loaded(layout, DType::F32, deco::Device::CPU);

  // Saving keeps NaN as it is: a gradient dump must show it.
  store.get("lm_head.weight").data<float>()[3 * 16 + 5] = std::numeric_limits<float>::quiet_NaN();
  deco::save_weights_h5(path, store);
  CHECK(error_of([&] { deco::load_weights_h5(path, loaded); }) ==
        path + ": tensor /model/lm_head.weight holds NaN at index [3, 5]; the weights are corrupt "
               "or come from a diverged run: load an earlier checkpoint");

  store.get("lm_head.weight").data<float>()[3 * 16 + 5] = 0.5f;
  store.get("model.layers.0.input_layernorm.weight").data<float>()[7] =
      -std::numeric_limits<float>::infinity();
  deco::save_weights_h5(path, store);
  CHECK_THAT(error_of([&] { deco::load_weights_h5(path, loaded); }),
             Contains(": tensor /model/model.layers.0.input_layernorm.weight holds Inf at index [7]"));

  store.get("model.layers.0.input_layernorm.weight").data<float>()[7] = 1.0f;
  deco::save_weights_h5(path, store);
  std::vector<double> big(16, 1.0);
  big[2] = 1e300;
  replace_dataset(path, "/model/model.norm.weight", H5T_IEEE_F64LE, {16}, H5T_NATIVE_DOUBLE,
                  big.data());
  CHECK(error_of([&] { deco::load_weights_h5(path, loaded); }) ==
        path + ": tensor /model/model.norm.weight holds 1e+300 at index [2], which does not fit "
               "in float32");
  ParamStore f64(layout, DType::F64, deco::Device::CPU);
  deco::load_weights_h5(path, f64);  // fits in float64
  CHECK(f64.get("model.norm.weight").data<double>()[2] == 1e300);
}

TEST_CASE("weights: saving is atomic", "[io]") {
  TempDir dir;
  const deco::ModelConfig config = small_config();
  const ParamLayout layout(config);
  ParamStore store(layout, DType::F32, deco::Device::CPU);
  deco::init_params(store, config, 11);

  SECTION("a missing directory is an error and creates nothing") {
    const std::string path = dir / "no/such/W.h5";
    CHECK(error_of([&] { deco::save_weights_h5(path, store); }) ==
          "cannot write " + path + ": directory " + (dir / "no/such") +
              " does not exist; create it first or choose another path");
    CHECK(dir.entries() == 0);
  }
  SECTION("a directory at the path is an error") {
    fs::create_directory(dir / "W.h5");
    CHECK_THAT(error_of([&] { deco::save_weights_h5(dir / "W.h5", store); }),
               Contains("W.h5: it is a directory"));
  }
  SECTION("a failed save leaves the existing file intact and no temporary") {
    const std::string path = dir / "W.h5";
    deco::save_weights_h5(path, store);
    const auto size_before = fs::file_size(path);
    ParamStore other(layout, DType::F32, deco::Device::CPU);
    deco::init_params(other, config, 12);

    // A file-size limit makes the write fail part-way, as a full disk would.
    struct rlimit saved_limit {};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved_limit) == 0);
    auto* saved_handler = ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = saved_limit;
    small.rlim_cur = 4096;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
    const std::string message = error_of([&] { deco::save_weights_h5(path, other); });
    ::setrlimit(RLIMIT_FSIZE, &saved_limit);
    ::signal(SIGXFSZ, saved_handler);

    CHECK_THAT(message, StartsWith("cannot write " + path + ": "));
    CHECK_THAT(message, Contains("File too large"));
    CHECK_THAT(message, Contains("; " + path + " was left unchanged"));
    CHECK(dir.entries() == 1);
    CHECK(fs::file_size(path) == size_before);
    ParamStore loaded(layout, DType::F32, deco::Device::CPU);
    deco::load_weights_h5(path, loaded);
    for (const ParamSpec& spec : layout.specs()) CHECK(same_bytes(store, loaded, spec));

    // HDF5 let go of the failed temporary: the next save (same pid, same
    // temporary name) works.
    deco::save_weights_h5(path, other);
    deco::load_weights_h5(path, loaded);
    for (const ParamSpec& spec : layout.specs()) CHECK(same_bytes(other, loaded, spec));
    CHECK(dir.entries() == 1);
  }
}

TEST_CASE("weights: GPU stores save and load through the host", "[io][gpu]") {
  if (deco::cuda_device_count() == 0) {  // also runs in the GPU suite's machines
    WARN("skipped: no CUDA device");
    return;
  }
  TempDir dir;
  const deco::ModelConfig config = small_config();
  const ParamLayout layout(config);
  ParamStore host(layout, DType::F32, deco::Device::CPU);
  ParamStore device(layout, DType::F32, deco::Device::CUDA);
  deco::init_params(host, config, 21);
  deco::init_params(device, config, 21);
  deco::save_weights_h5(dir / "W.h5", device);

  ParamStore loaded(layout, DType::F32, deco::Device::CPU);
  deco::load_weights_h5(dir / "W.h5", loaded);
  for (const ParamSpec& spec : layout.specs()) CHECK(same_bytes(host, loaded, spec));

  ParamStore device2(layout, DType::F32, deco::Device::CUDA);
  deco::load_weights_h5(dir / "W.h5", device2);
  ParamStore back(layout, DType::F32, deco::Device::CPU);
  deco::device_copy(deco::Device::CPU, back.flat().raw(), deco::Device::CUDA, device2.flat().raw(),
                    device2.flat().nbytes());
  for (const ParamSpec& spec : layout.specs()) CHECK(same_bytes(host, back, spec));
}
