// deco export, deco import: weights to and from Hugging Face safetensors
// with the config.json keys of the authors' export (docs/export.md).
#include <hdf5.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "core/file_io.h"
#include "model/params.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/safetensors.h"
#include "trainer/weights_io.h"

namespace deco::cli {
namespace {

namespace fs = std::filesystem;
using ordered_json = nlohmann::ordered_json;

constexpr const char* kWeightsFile = "model.safetensors";
constexpr const char* kConfigFile = "config.json";

std::string with_commas(int64_t n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

std::vector<int64_t> dims_of(const Shape& shape) {
  return std::vector<int64_t>(shape.dims.begin(), shape.dims.begin() + shape.ndim);
}

// Up to `limit` names as "a, b, c and 3 more".
std::string name_list(const std::vector<std::string>& names, size_t limit = 3) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < limit; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > limit) out += str(" and ", names.size() - limit, " more");
  return out;
}

// ---------------------------------------------------------------- config.json

// 0 for a dense layer, 1 for a DECO layer: Megatron's list form of --moe-layer-freq.
std::vector<int64_t> moe_layer_pattern(const ModelConfig& m) {
  std::vector<int64_t> pattern;
  for (int64_t l = 0; l < m.num_layers; ++l) pattern.push_back(m.is_deco_layer(l) ? 1 : 0);
  return pattern;
}

// The model's hyperparameters under the Megatron argument names the authors'
// Hugging Face export writes into config.json, then deco's own names for
// what that export leaves implicit, then the standard Hugging Face names
// that generic tools read. Widths Megatron leaves unset (no experts, no
// shared expert) are null, as None is there.
ordered_json hf_config(const ModelConfig& m, const std::string& torch_dtype) {
  const bool moe = m.num_experts > 0;
  const int64_t S = m.moe_shared_expert_intermediate_size;
  ordered_json j;
  j["num_layers"] = m.num_layers;
  j["hidden_size"] = m.hidden_size;
  j["ffn_hidden_size"] = m.ffn_hidden_size;
  j["num_attention_heads"] = m.num_attention_heads;
  j["num_query_groups"] = m.num_query_groups;
  j["norm_epsilon"] = m.norm_epsilon;
  j["num_experts"] = moe ? ordered_json(m.num_experts) : ordered_json(nullptr);
  j["moe_ffn_hidden_size"] = m.moe_ffn_hidden_size;
  j["moe_shared_expert_intermediate_size"] = S > 0 ? ordered_json(S) : ordered_json(nullptr);
  j["moe_layer_freq"] = moe_layer_pattern(m);
  j["use_blockffn"] = moe;
  j["router_act_func"] = "relu";
  j["router_norm_type"] = "simple";
  j["router_norm_init_var"] = m.router_scale_init;
  j["router_norm_fixed"] = false;
  j["router_norm_scalar"] = false;
  j["expert_act_func"] = expert_act_name(m.expert_act);
  j["expert_not_gated"] = !m.expert_gated;
  j["moe_router_enable_expert_bias"] = false;
  j["use_mup"] = false;
  j["vocab_size"] = m.vocab_size;
  j["seq_length"] = m.seq_length;
  j["max_position_embeddings"] = m.seq_length;
  j["rotary_base"] = m.rotary_base;
  j["init_method_std"] = m.init_method_std;
  j["dense_layers"] = moe ? m.dense_layers : m.num_layers;
  j["router_scale_init"] = m.router_scale_init;
  j["num_hidden_layers"] = m.num_layers;
  j["num_key_value_heads"] = m.num_query_groups;
  j["rms_norm_eps"] = m.norm_epsilon;
  j["rope_theta"] = m.rotary_base;
  j["initializer_range"] = m.init_method_std;
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = false;
  j["torch_dtype"] = torch_dtype;
  return j;
}

// moe_layer_freq as the authors' export may hold it: Megatron's list of 0/1
// per layer, an integer k (layer i is MoE when i % k == 0), or the string
// expression Megatron's --moe-layer-freq takes, like "([0]*1+[1]*15)".
// Returns false when the value has none of these forms.
bool layer_pattern(const nlohmann::json& value, int64_t num_layers, std::vector<int64_t>* out) {
  out->clear();
  if (value.is_array()) {
    for (const auto& v : value) {
      if (!v.is_number_integer() || (v.get<int64_t>() != 0 && v.get<int64_t>() != 1)) return false;
      out->push_back(v.get<int64_t>());
    }
    return true;
  }
  if (value.is_number_integer()) {
    const int64_t k = value.get<int64_t>();
    if (k <= 0) return false;
    for (int64_t l = 0; l < num_layers; ++l) out->push_back(l % k == 0 ? 1 : 0);
    return true;
  }
  if (!value.is_string()) return false;
  // Terms "[a, b, ...]*n" joined by '+', optionally in parentheses.
  std::string text;
  for (char c : value.get<std::string>())
    if (!std::isspace(static_cast<unsigned char>(c))) text += c;
  if (text.size() >= 2 && text.front() == '(' && text.back() == ')')
    text = text.substr(1, text.size() - 2);
  std::istringstream in(text);
  for (std::string term; std::getline(in, term, '+');) {
    const size_t close = term.find(']');
    if (term.empty() || term[0] != '[' || close == std::string::npos) return false;
    std::vector<int64_t> items;
    std::istringstream list(term.substr(1, close - 1));
    for (std::string item; std::getline(list, item, ',');) {
      if (item != "0" && item != "1") return false;
      items.push_back(item == "1");
    }
    int64_t repeat = 1;
    const std::string rest = term.substr(close + 1);
    if (!rest.empty()) {
      if (rest.size() < 2 || rest[0] != '*' ||
          rest.find_first_not_of("0123456789", 1) != std::string::npos)
        return false;
      repeat = std::stoll(rest.substr(1));
    }
    for (int64_t r = 0; r < repeat; ++r) out->insert(out->end(), items.begin(), items.end());
  }
  return !out->empty();
}

// One architecture key of config.json that disagrees with the config.
struct Mismatch {
  std::string key, found;  // the key and its value in config.json
  std::string config_side; // what the config has instead, in deco's terms
};

// Compares the architecture keys present in config.json with the config:
// everything that changes the tensors or the function they compute. Keys
// config.json lacks are not checked (other tools write fewer); keys that do
// not matter for this config (expert widths of a dense model) are skipped.
std::vector<Mismatch> config_json_mismatches(const nlohmann::json& file, const ModelConfig& m,
                                             const std::string& path) {
  const bool moe = m.num_experts > 0;
  const bool has_dense_layer = !moe || m.dense_layers > 0;
  std::vector<Mismatch> out;
  auto integer = [&](const char* key, const char* config_key, int64_t expected, int64_t null_means) {
    if (!file.contains(key)) return;
    const nlohmann::json& v = file[key];
    if (!v.is_null() && !v.is_number_integer())
      fail(path, ": ", key, " is ", v.dump(), ", not an integer; fix or remove ", path);
    if ((v.is_null() ? null_means : v.get<int64_t>()) != expected)
      out.push_back({key, v.dump(), str(config_key, " = ", expected)});
  };
  auto real = [&](const char* key, const char* config_key, double expected) {
    if (!file.contains(key)) return;
    const nlohmann::json& v = file[key];
    if (!v.is_number())
      fail(path, ": ", key, " is ", v.dump(), ", not a number; fix or remove ", path);
    // config.json may come from a tool that printed these through float32.
    if (std::fabs(v.get<double>() - expected) > 1e-6 * std::fabs(expected))
      out.push_back({key, v.dump(), str(config_key, " = ", nlohmann::json(expected).dump())});
  };
  auto exact = [&](const char* key, const nlohmann::json& expected, const std::string& config_side) {
    if (file.contains(key) && file[key] != expected)
      out.push_back({key, file[key].dump(), config_side});
  };

  integer("num_layers", "model.num_layers", m.num_layers, 0);
  integer("hidden_size", "model.hidden_size", m.hidden_size, 0);
  if (has_dense_layer) integer("ffn_hidden_size", "model.ffn_hidden_size", m.ffn_hidden_size, 0);
  integer("num_attention_heads", "model.num_attention_heads", m.num_attention_heads, 0);
  // Megatron leaves num_query_groups unset (None) without grouped-query attention.
  integer("num_query_groups", "model.num_query_groups", m.num_query_groups, m.num_attention_heads);
  integer("vocab_size", "model.vocab_size", m.vocab_size, 0);
  real("norm_epsilon", "model.norm_epsilon", m.norm_epsilon);
  real("rotary_base", "model.rotary_base", m.rotary_base);
  integer("num_experts", "model.num_experts", m.num_experts, 0);
  if (moe) {
    integer("moe_ffn_hidden_size", "model.moe_ffn_hidden_size", m.moe_ffn_hidden_size, 0);
    integer("moe_shared_expert_intermediate_size", "model.moe_shared_expert_intermediate_size",
            m.moe_shared_expert_intermediate_size, 0);
    integer("dense_layers", "model.dense_layers", m.dense_layers, 0);
    const std::string act = expert_act_name(m.expert_act);
    exact("expert_act_func", act, str("model.expert_act = ", act));
    exact("expert_not_gated", !m.expert_gated,
          str("model.expert_gated = ", m.expert_gated ? "true" : "false"));
    exact("router_act_func", "relu", "a ReLU router (\"relu\"), the only one deco has");
  }
  if (file.contains("moe_layer_freq")) {
    std::vector<int64_t> pattern;
    if (!layer_pattern(file["moe_layer_freq"], m.num_layers, &pattern))
      fail(path, ": moe_layer_freq is ", file["moe_layer_freq"].dump(), ", which is neither a list "
           "of 0/1 per layer, an integer, nor an expression like \"([0]*1+[1]*15)\"; fix or remove ",
           path);
    if (pattern != moe_layer_pattern(m))
      out.push_back({"moe_layer_freq", file["moe_layer_freq"].dump(),
                     str("model.num_experts = ", m.num_experts, " and model.dense_layers = ",
                         m.dense_layers, ", i.e. ", nlohmann::json(moe_layer_pattern(m)).dump())});
  }
  return out;
}

std::string describe(const std::vector<Mismatch>& mismatches, const std::string& path,
                     const std::string& config_path) {
  const Mismatch& first = mismatches.front();
  std::string out = str(path, " has ", first.key, " = ", first.found, " where the config ",
                        config_path, " has ", first.config_side);
  if (mismatches.size() > 1) {
    std::vector<std::string> others;
    for (size_t i = 1; i < mismatches.size(); ++i) others.push_back(mismatches[i].key);
    out += str(", and differs on ", name_list(others));
  }
  return out;
}

nlohmann::json read_config_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read ", path, ": ", std::strerror(errno));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    fail(path, " is not valid JSON (", e.what(), "); fix it, or remove it to import without the "
         "check");
  }
  if (!j.is_object())
    fail(path, " is not a JSON object; fix it, or remove it to import without the check");
  return j;
}

// ---------------------------------------------------------------- where the weights come from

// The resolved config `deco init` and `deco import` store in a weights
// file's root attribute "config"; "" when the file has none.
std::string stored_config(const std::string& h5_path) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  if (H5Fis_hdf5(h5_path.c_str()) <= 0) return "";
  const hid_t file = H5Fopen(h5_path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (file < 0) return "";
  std::string text;
  if (H5Aexists(file, "config") > 0) {
    const hid_t attr = H5Aopen(file, "config", H5P_DEFAULT);
    const hid_t type = attr >= 0 ? H5Aget_type(attr) : -1;
    if (type >= 0 && H5Tget_class(type) == H5T_STRING && H5Tis_variable_str(type) > 0) {
      const hid_t mem = H5Tcopy(H5T_C_S1);
      H5Tset_size(mem, H5T_VARIABLE);
      H5Tset_cset(mem, H5T_CSET_UTF8);
      char* value = nullptr;
      if (H5Aread(attr, mem, &value) >= 0 && value != nullptr) {
        text = value;
        H5free_memory(value);
      }
      H5Tclose(mem);
    }
    if (type >= 0) H5Tclose(type);
    if (attr >= 0) H5Aclose(attr);
  }
  H5Fclose(file);
  return text;
}

struct Source {
  std::string weights;   // the HDF5 file holding /model/<name>
  std::string step_dir;  // the checkpoint step directory, "" for a weights file
};

// A directory is a checkpoint: a step directory, or a save directory whose
// `latest` names one (resolve_checkpoint follows it, as resuming does).
// Anything else is taken as a weights file.
Source resolve_source(const std::string& given) {
  std::error_code ec;
  if (!fs::exists(given, ec))
    fail("--checkpoint ", given, " does not exist; give a checkpoint step directory, a save "
         "directory or a weights .h5 file");
  if (!fs::is_directory(given, ec)) return {given, ""};
  const fs::path dir(given);
  if (!fs::exists(dir / "model.h5", ec) && !fs::exists(dir / "state.h5", ec) &&
      !fs::exists(dir / "latest", ec))
    fail("--checkpoint ", given, " is a directory with neither model.h5 (a checkpoint step "
         "directory) nor latest (a save directory); give one of those or a weights .h5 file");
  const std::string step = resolve_checkpoint(given, "");
  return {(fs::path(step) / "model.h5").string(), step};
}

// The run's resolved config: a checkpoint keeps it in state.h5, deco init
// and deco import store it in the weights file.
Config export_config(const ExportArgs& args, const Source& source) {
  if (!args.cfg.config.empty()) return load_config(args.cfg.config, args.cfg.sets);
  if (!args.cfg.sets.empty()) fail("--set needs --config: it overrides keys of that file");
  std::string yaml, origin;
  if (!source.step_dir.empty()) {
    yaml = load_checkpoint(source.step_dir, CheckpointTensors{}).config_yaml;
    origin = str("the config stored in ", (fs::path(source.step_dir) / "state.h5").string());
  } else {
    yaml = stored_config(source.weights);
    origin = str("the config stored in ", source.weights);
    if (yaml.empty())
      fail(source.weights, " stores no config (weights from deco init and deco import do); pass "
           "--config F with the config the model was trained with");
  }
  try {
    return parse_config(yaml, origin);
  } catch (const Error& e) {
    fail(e.what(), " (pass --config F to export with another config file)");
  }
}

}  // namespace

// ---------------------------------------------------------------- deco export

int export_weights(const ExportArgs& args) {
  if (args.dtype != "bf16" && args.dtype != "fp32")
    fail("--dtype ", args.dtype, " is not bf16 or fp32");
  const bool bf16 = args.dtype == "bf16";
  const Source source = resolve_source(args.checkpoint);
  const Config config = export_config(args, source);
  const ParamLayout layout(config.model);
  const ParamStore store(layout, DType::F32, Device::CPU);
  load_weights_h5(source.weights, store);

  std::error_code ec;
  if (fs::exists(args.out, ec) && !fs::is_directory(args.out, ec))
    fail("--out ", args.out, " is a file; give a directory (deco export writes ", kWeightsFile,
         " and ", kConfigFile, " into it)");
  fs::create_directories(args.out, ec);
  if (ec) fail("cannot create --out directory ", args.out, ": ", ec.message());

  std::vector<StTensorView> views;
  for (const ParamSpec& spec : layout.specs()) {
    const Tensor t = store.get(spec);
    if (bf16) {
      // Converted in place: element i's two bytes go to bytes [2i, 2i+2),
      // which no later element's float (at 4j >= 4i+4) overlaps, so the
      // export never holds a second copy of the model.
      unsigned char* bytes = static_cast<unsigned char*>(t.raw());
      for (int64_t i = 0; i < t.numel(); ++i) {
        float v;
        std::memcpy(&v, bytes + 4 * i, sizeof v);
        const uint16_t h = float_to_bf16_bits(v);
        if (std::isinf(bf16_bits_to_float(h)))
          fail(source.weights, ": tensor ", spec.name, " holds ", v, ", beyond bfloat16's range; "
               "export with --dtype fp32");
        std::memcpy(bytes + 2 * i, &h, sizeof h);
      }
    }
    views.push_back({spec.name, bf16 ? StDtype::BF16 : StDtype::F32, dims_of(spec.shape), t.raw()});
  }
  const std::string weights_path = (fs::path(args.out) / kWeightsFile).string();
  const std::string config_path = (fs::path(args.out) / kConfigFile).string();
  // "format": "pt" is what Hugging Face transformers requires of safetensors metadata.
  write_safetensors(weights_path, views, {{"format", "pt"}, {"deco_version", DECO_VERSION}});
  const ordered_json hf = hf_config(config.model, bf16 ? "bfloat16" : "float32");
  write_file_atomic(config_path, hf.dump(2) + "\n");
  const std::string& from = source.step_dir.empty() ? source.weights : source.step_dir;
  std::printf("wrote %s parameters in %zu tensors (%s) from %s to %s and %s\n",
              with_commas(layout.num_parameters()).c_str(), layout.specs().size(),
              bf16 ? "bfloat16" : "float32", from.c_str(), weights_path.c_str(), config_path.c_str());
  return 0;
}

// ---------------------------------------------------------------- deco import

int import_weights(const ImportArgs& args) {
  const Config config = load_config(args.cfg.config, args.cfg.sets);
  std::error_code ec;
  const bool is_dir = fs::is_directory(args.safetensors, ec);
  const std::string weights_path =
      is_dir ? (fs::path(args.safetensors) / kWeightsFile).string() : args.safetensors;
  if (is_dir && !fs::exists(weights_path, ec)) {
    const bool sharded = fs::exists(fs::path(args.safetensors) / "model.safetensors.index.json", ec);
    fail(args.safetensors, " holds no ", kWeightsFile,
         sharded ? " but a sharded export (model.safetensors.index.json); deco import reads one "
                   "file: merge the shards into model.safetensors first"
                 : "; give the directory deco export wrote (or the .safetensors file itself)");
  }
  // config.json is checked when it sits beside the weights.
  const std::string config_json_path =
      (fs::path(weights_path).parent_path() / kConfigFile).string();
  std::vector<Mismatch> mismatches;
  if (fs::exists(config_json_path, ec))
    mismatches = config_json_mismatches(read_config_json(config_json_path), config.model,
                                        config_json_path);
  // A shape error is the symptom; a disagreeing config.json names the cause.
  const std::string also =
      mismatches.empty() ? "" : "; " + describe(mismatches, config_json_path, config.source);

  const SafetensorsFile file(weights_path);
  const ParamLayout layout(config.model);
  std::set<std::string> wanted;
  std::vector<std::string> missing, unknown;
  for (const ParamSpec& spec : layout.specs()) {
    wanted.insert(spec.name);
    if (file.find(spec.name) == nullptr) missing.push_back(spec.name);
  }
  for (const StTensorInfo& t : file.tensors())
    if (!wanted.count(t.name)) unknown.push_back(t.name);
  if (!missing.empty())
    fail(weights_path, " has no tensor ", missing[0],
         missing.size() > 1 ? str(" (nor ", missing.size() - 1, " other tensors the config needs)")
                            : "",
         unknown.empty() ? "" : "; instead it holds " + name_list(unknown),
         "; it was exported from a different model config than ", config.source, also);
  if (!unknown.empty())
    fail(weights_path, " holds tensors the config ", config.source, " does not have: ",
         name_list(unknown), "; it was exported from a different model config", also);
  for (const ParamSpec& spec : layout.specs()) {
    const StTensorInfo& t = *file.find(spec.name);
    const std::vector<int64_t> want = dims_of(spec.shape);
    if (t.shape != want)
      fail(weights_path, ": tensor ", spec.name, " has shape ", shape_string(t.shape), " but the "
           "config ", config.source, " expects ", shape_string(want), "; it was exported from a "
           "different model config", also);
    if (t.dtype != StDtype::F32 && t.dtype != StDtype::BF16 && t.dtype != StDtype::F16 &&
        t.dtype != StDtype::F64)
      fail(weights_path, ": tensor ", spec.name, " holds ", st_dtype_name(t.dtype), " data; "
           "weights must be floating point (F32, BF16, F16 or F64)");
  }
  if (!mismatches.empty())
    fail(describe(mismatches, config_json_path, config.source), "; import with the config the "
         "model was exported with (or fix ", config_json_path, ")");

  const ParamStore store(layout, DType::F32, Device::CPU);
  for (const ParamSpec& spec : layout.specs()) {
    const Tensor dst = store.get(spec);
    float* values = dst.data<float>();
    file.read_float32(*file.find(spec.name), values);
    for (int64_t i = 0; i < dst.numel(); ++i)
      if (!std::isfinite(values[i]))
        fail(weights_path, ": tensor ", spec.name, " holds ", values[i], " at flat index ", i,
             "; the weights are corrupt or come from a diverged run");
  }
  save_weights_h5(args.out, store,
                  {{"config", config_to_yaml(config)}, {"deco_version", DECO_VERSION},
                   {"source", weights_path}});
  std::printf("wrote %s parameters in %zu tensors from %s to %s\n",
              with_commas(layout.num_parameters()).c_str(), layout.specs().size(),
              weights_path.c_str(), args.out.c_str());
  return 0;
}

}  // namespace deco::cli
