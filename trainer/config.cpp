// Reading, validating and writing the run configuration.
//
// One schema table (section -> fields) drives everything: parsing, the
// unknown-key suggestions and the YAML that config_to_yaml writes, so a key
// added to a struct needs one line here. Value constraints are plain code in
// Validator, in the order a user would fix them (sizes before the
// divisibility checks that divide by them).
#include "trainer/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <system_error>
#include <type_traits>
#include <utility>

#include "core/error.h"

namespace deco {
namespace {

// ---------------------------------------------------------------- text helpers

std::string lower(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

std::string join(const std::vector<std::string>& items, const char* sep = ", ") {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

// The shortest text that reads back to exactly `v`.
std::string shortest(double v) {
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, result.ptr);
}

// shortest() with a decimal point ("1.0e-08", "10000.0") for the emitted
// YAML: YAML 1.1 readers such as PyYAML take "1e-08" for a string and
// "10000" for an int.
std::string format_double(double v) {
  std::string text = shortest(v);
  if (text.find_first_of(".ni") != std::string::npos) return text;  // has a point, or inf/nan
  const size_t exponent = text.find('e');
  return exponent == std::string::npos ? text + ".0" : text.insert(exponent, ".0");
}

// Values inside messages: doubles without the stream's 6-digit rounding.
std::string show(double v) { return shortest(v); }
std::string show(int64_t v) { return std::to_string(v); }

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// A candidate is worth suggesting when it is a typo away: about one edit per
// three characters, and never a rewrite of the whole word.
bool close_enough(const std::string& word, size_t distance) {
  return distance < word.size() && distance <= std::max<size_t>(1, word.size() / 3);
}

// ---------------------------------------------------------------- enum names

template <typename E>
using EnumTable = std::vector<std::pair<const char*, E>>;

const EnumTable<ops::ExpertAct>& enum_table(ops::ExpertAct) {
  static const EnumTable<ops::ExpertAct> table{{"norm_silu", ops::ExpertAct::NormSilu},
                                               {"norm_silu_nomean", ops::ExpertAct::NormSiluNoMean},
                                               {"norm_silu_norms", ops::ExpertAct::NormSiluNorms},
                                               {"silu", ops::ExpertAct::Silu}};
  return table;
}
const EnumTable<ExpertCompute>& enum_table(ExpertCompute) {
  static const EnumTable<ExpertCompute> table{
      {"dense", ExpertCompute::Dense}, {"sparse", ExpertCompute::Sparse}, {"auto", ExpertCompute::Auto}};
  return table;
}
const EnumTable<AttentionBackend>& enum_table(AttentionBackend) {
  static const EnumTable<AttentionBackend> table{{"tensor_cores", AttentionBackend::TensorCores},
                                                 {"cuda_cores", AttentionBackend::CudaCores}};
  return table;
}
const EnumTable<ops::SparseExpertKernels>& enum_table(ops::SparseExpertKernels) {
  static const EnumTable<ops::SparseExpertKernels> table{{"wide", ops::SparseExpertKernels::Wide},
                                                         {"narrow", ops::SparseExpertKernels::Narrow},
                                                         {"composition", ops::SparseExpertKernels::Composition}};
  return table;
}
const EnumTable<ExitSignal>& enum_table(ExitSignal) {
  static const EnumTable<ExitSignal> table{{"sigterm", ExitSignal::Term},
                                           {"sigint", ExitSignal::Int},
                                           {"sigusr1", ExitSignal::Usr1},
                                           {"sigusr2", ExitSignal::Usr2}};
  return table;
}
const EnumTable<Recompute>& enum_table(Recompute) {
  static const EnumTable<Recompute> table{
      {"none", Recompute::None}, {"selective", Recompute::Selective}, {"full", Recompute::Full}};
  return table;
}
const EnumTable<RegType>& enum_table(RegType) {
  static const EnumTable<RegType> table{
      {"entropy", RegType::Entropy}, {"l1", RegType::L1}, {"none", RegType::None}};
  return table;
}
const EnumTable<LrDecayStyle>& enum_table(LrDecayStyle) {
  static const EnumTable<LrDecayStyle> table{{"constant", LrDecayStyle::Constant},
                                             {"linear", LrDecayStyle::Linear},
                                             {"cosine", LrDecayStyle::Cosine},
                                             {"wsd", LrDecayStyle::WSD}};
  return table;
}
const EnumTable<WsdDecayStyle>& enum_table(WsdDecayStyle) {
  static const EnumTable<WsdDecayStyle> table{{"exponential", WsdDecayStyle::Exponential},
                                              {"linear", WsdDecayStyle::Linear},
                                              {"cosine", WsdDecayStyle::Cosine}};
  return table;
}

// ---------------------------------------------------------------- reading one value

// What a message says about the value it refuses, and the key it names.
struct Where {
  std::string origin;  // the file, or "--set <text>" for a value from an override
  std::string name;    // section.key
  std::string hint;    // how to write the value, for a key people get wrong; may be empty
};

// How a refused value looks in a message.
std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined: return "an empty value";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a map";
    case YAML::NodeType::Scalar: break;
  }
  return "'" + node.Scalar() + "'";
}

// Quoted YAML scalars are strings; taking "16" as a number would hide a
// mistake, so numbers and bools must be written plain.
bool is_plain_scalar(const YAML::Node& node) { return node.IsScalar() && node.Tag() != "!"; }

[[noreturn]] void type_error(const YAML::Node& node, const Where& where, const char* expected) {
  const bool quoted = node.IsScalar() && !is_plain_scalar(node);
  const std::string got = quoted ? "the quoted string '" + node.Scalar() + "'" : describe(node);
  const std::string fix = quoted ? "remove the quotes" : where.hint;
  fail(where.origin, ": ", where.name, " must be ", expected, ", got ", got,
       fix.empty() ? "" : "; ", fix, ".");
}

[[noreturn]] void range_error(const YAML::Node& node, const Where& where) {
  fail(where.origin, ": ", where.name, " (", node.Scalar(), ") is out of range for a 64-bit ",
       "value; use a smaller one.");
}

// Parses the whole of `text` as a T with std::from_chars (no locale, no
// partial matches); a leading '+' is allowed as YAML allows it.
template <typename T>
std::errc parse_number(const std::string& text, T* out) {
  const char* begin = text.data();
  const char* end = begin + text.size();
  if (begin != end && *begin == '+') {
    ++begin;
    if (begin != end && (*begin == '+' || *begin == '-')) return std::errc::invalid_argument;
  }
  if (begin == end) return std::errc::invalid_argument;
  const auto result = std::from_chars(begin, end, *out);
  if (result.ec != std::errc()) return result.ec;
  return result.ptr == end ? std::errc() : std::errc::invalid_argument;
}

template <typename T>
void read_integer(const YAML::Node& node, const Where& where, T* out, const char* expected) {
  if (!is_plain_scalar(node)) type_error(node, where, expected);
  const std::errc ec = parse_number(node.Scalar(), out);
  if (ec == std::errc::result_out_of_range) range_error(node, where);
  if (ec != std::errc()) type_error(node, where, expected);
}

void read_value(const YAML::Node& node, const Where& where, int64_t* out) {
  read_integer(node, where, out, "an integer");
}

void read_value(const YAML::Node& node, const Where& where, uint64_t* out) {
  read_integer(node, where, out, "a non-negative integer");
}

void read_value(const YAML::Node& node, const Where& where, double* out) {
  if (!is_plain_scalar(node)) type_error(node, where, "a number");
  const std::errc ec = parse_number(node.Scalar(), out);
  if (ec == std::errc::result_out_of_range) range_error(node, where);
  if (ec != std::errc() || !std::isfinite(*out)) type_error(node, where, "a number");
}

void read_value(const YAML::Node& node, const Where& where, bool* out) {
  const std::string text = is_plain_scalar(node) ? lower(node.Scalar()) : "";
  if (text != "true" && text != "false") type_error(node, where, "true or false");
  *out = text == "true";
}

// A key written with nothing after it is an empty string (no run_dir, no
// checkpoint directory).
void read_value(const YAML::Node& node, const Where& where, std::string* out) {
  if (node.IsNull()) {
    out->clear();
    return;
  }
  if (!node.IsScalar()) type_error(node, where, "a string");
  *out = node.Scalar();
}

template <typename E, typename = std::enable_if_t<std::is_enum_v<E>>>
void read_value(const YAML::Node& node, const Where& where, E* out) {
  std::vector<std::string> names;
  for (const auto& [name, value] : enum_table(E{})) {
    if (node.IsScalar() && lower(node.Scalar()) == name) {
      *out = value;
      return;
    }
    names.push_back(name);
  }
  fail(where.origin, ": ", where.name, " must be one of ", join(names), "; got ", describe(node),
       ".");
}

// data_path: a list whose items are [weight, prefix] pairs or bare prefixes
// (weight 1); a single string is a one-item list.
void read_value(const YAML::Node& node, const Where& where, std::vector<DataPathEntry>* out) {
  out->clear();
  if (node.IsNull()) return;
  auto item_error = [&](const YAML::Node& item) {
    fail(where.origin, ": ", where.name, " items must be [weight, prefix] pairs or prefixes, got ",
         describe(item), "; write for example [[0.7, /data/web_text_document], [0.3, /data/code]].");
  };
  auto read_item = [&](const YAML::Node& item) {
    DataPathEntry e;
    if (item.IsScalar()) {
      e.prefix = item.Scalar();
    } else if (item.IsSequence() && item.size() == 2 && item[0].IsScalar() && item[1].IsScalar()) {
      Where weight_where = where;
      weight_where.name = where.name + " weight";
      read_value(item[0], weight_where, &e.weight);
      e.prefix = item[1].Scalar();
    } else {
      item_error(item);
    }
    out->push_back(e);
  };
  if (node.IsScalar()) {
    read_item(node);
    return;
  }
  if (!node.IsSequence()) type_error(node, where, "a list of [weight, prefix] pairs");
  for (const YAML::Node& item : node) read_item(item);
}

// ---------------------------------------------------------------- writing one value

void emit_value(YAML::Emitter& out, int64_t v) { out << v; }
void emit_value(YAML::Emitter& out, uint64_t v) { out << v; }
void emit_value(YAML::Emitter& out, double v) { out << format_double(v); }
void emit_value(YAML::Emitter& out, bool v) { out << (v ? "true" : "false"); }
// yaml-cpp quotes a string when its plain form would not read back as the
// same text ("", "null", "#x", leading spaces).
void emit_value(YAML::Emitter& out, const std::string& v) { out << v; }
void emit_value(YAML::Emitter& out, const std::vector<DataPathEntry>& v) {
  out << YAML::Flow << YAML::BeginSeq;
  for (const DataPathEntry& e : v) {
    out << YAML::Flow << YAML::BeginSeq;
    emit_value(out, e.weight);
    out << e.prefix << YAML::EndSeq;
  }
  out << YAML::EndSeq;
}

template <typename E, typename = std::enable_if_t<std::is_enum_v<E>>>
void emit_value(YAML::Emitter& out, E v) {
  for (const auto& [name, value] : enum_table(E{}))
    if (value == v) {
      out << name;
      return;
    }
  DECO_ASSERT(false, "enum value missing from its name table");
}

// ---------------------------------------------------------------- the schema

struct Field {
  std::string key;
  // What the key means, for the message when it is missing; empty = optional.
  std::string required;
  std::string hint;  // see Where::hint
  std::function<void(Config&, const YAML::Node&, const Where&)> read;
  std::function<void(const Config&, YAML::Emitter&)> emit;
};

struct Section {
  std::string name;
  std::vector<Field> fields;

  const Field* find(const std::string& key) const {
    for (const Field& f : fields)
      if (f.key == key) return &f;
    return nullptr;
  }
  bool has_required() const {
    return std::any_of(fields.begin(), fields.end(),
                       [](const Field& f) { return !f.required.empty(); });
  }
  std::vector<std::string> keys() const {
    std::vector<std::string> out;
    for (const Field& f : fields) out.push_back(f.key);
    return out;
  }
};

template <typename S, typename T>
Field make_field(S Config::*section, T S::*member, const char* key, const char* required = "") {
  Field f;
  f.key = key;
  f.required = required;
  f.read = [section, member](Config& c, const YAML::Node& node, const Where& where) {
    read_value(node, where, &((c.*section).*member));
  };
  f.emit = [section, member](const Config& c, YAML::Emitter& out) {
    emit_value(out, (c.*section).*member);
  };
  return f;
}

Field with_hint(Field f, const char* hint) {
  f.hint = hint;
  return f;
}

// The YAML key is the member's name, so the two cannot drift apart.
#define DECO_FIELD(section, member, ...) \
  make_field(&Config::section, &decltype(Config::section)::member, #member, ##__VA_ARGS__)

const std::vector<Section>& schema() {
  static const std::vector<Section> sections{
      {"model",
       {DECO_FIELD(model, num_layers, "the number of transformer layers"),
        DECO_FIELD(model, hidden_size, "the width of the residual stream"),
        DECO_FIELD(model, num_attention_heads, "the number of query heads"),
        DECO_FIELD(model, num_query_groups),
        DECO_FIELD(model, ffn_hidden_size),
        DECO_FIELD(model, vocab_size, "the tokenizer's vocabulary size"),
        DECO_FIELD(model, seq_length, "the number of tokens per training sequence"),
        DECO_FIELD(model, norm_epsilon),
        DECO_FIELD(model, rotary_base),
        DECO_FIELD(model, init_method_std),
        DECO_FIELD(model, num_experts),
        DECO_FIELD(model, moe_ffn_hidden_size),
        DECO_FIELD(model, moe_shared_expert_intermediate_size),
        with_hint(DECO_FIELD(model, dense_layers),
                  "it counts the leading layers that keep a dense FFN ([0] is written 1)"),
        DECO_FIELD(model, expert_act),
        DECO_FIELD(model, expert_gated),
        DECO_FIELD(model, router_scale_init),
        DECO_FIELD(model, expert_compute),
        DECO_FIELD(model, moe_shared_expert_overlap),
        DECO_FIELD(model, attention_backend),
        DECO_FIELD(model, sparse_expert_kernels)}},
      {"training",
       {DECO_FIELD(training, micro_batch_size, "the number of sequences per micro-batch"),
        DECO_FIELD(training, global_batch_size, "the number of sequences per optimizer step"),
        DECO_FIELD(training, train_iters, "the number of optimizer steps"),
        DECO_FIELD(training, seed),
        DECO_FIELD(training, log_interval),
        DECO_FIELD(training, eval_interval),
        DECO_FIELD(training, eval_iters),
        DECO_FIELD(training, threads),
        DECO_FIELD(training, device),
        DECO_FIELD(training, bf16),
        DECO_FIELD(training, recompute),
        DECO_FIELD(training, max_nonfinite_skips),
        DECO_FIELD(training, exit_interval),
        DECO_FIELD(training, exit_duration_in_mins),
        DECO_FIELD(training, exit_signal_handler),
        DECO_FIELD(training, exit_signal)}},
      {"optimizer",
       {DECO_FIELD(optimizer, lr, "the peak learning rate"),
        DECO_FIELD(optimizer, min_lr),
        DECO_FIELD(optimizer, weight_decay),
        DECO_FIELD(optimizer, adam_beta1),
        DECO_FIELD(optimizer, adam_beta2),
        DECO_FIELD(optimizer, adam_eps),
        DECO_FIELD(optimizer, clip_grad)}},
      {"schedule",
       {DECO_FIELD(schedule, lr_decay_style),
        DECO_FIELD(schedule, lr_warmup_iters),
        DECO_FIELD(schedule, lr_decay_iters),
        DECO_FIELD(schedule, lr_wsd_decay_style),
        DECO_FIELD(schedule, lr_wsd_decay_iters)}},
      {"sparsity",
       {DECO_FIELD(sparsity, target_ratio),
        DECO_FIELD(sparsity, reg_type),
        DECO_FIELD(sparsity, reg_coef_min),
        DECO_FIELD(sparsity, reg_coef_init),
        DECO_FIELD(sparsity, reg_coef_multiplier)}},
      {"data",
       {DECO_FIELD(data, data_path),
        DECO_FIELD(data, split),
        DECO_FIELD(data, data_cache_path),
        DECO_FIELD(data, tokenizer_type),
        DECO_FIELD(data, tokenizer_model),
        DECO_FIELD(data, synthetic_successors),
        DECO_FIELD(data, synthetic_repeat_prob)}},
      {"parallel",
       {DECO_FIELD(parallel, expert_model_parallel_size),
        DECO_FIELD(parallel, use_distributed_optimizer),
        DECO_FIELD(parallel, overlap_grad_reduce),
        DECO_FIELD(parallel, ddp_bucket_size),
        DECO_FIELD(parallel, distributed_timeout_minutes)}},
      {"checkpoint",
       {DECO_FIELD(checkpoint, save),
        DECO_FIELD(checkpoint, save_interval),
        DECO_FIELD(checkpoint, keep_last),
        DECO_FIELD(checkpoint, load)}},
      {"logging",
       {DECO_FIELD(logging, run_dir),
        DECO_FIELD(logging, log_per_layer),
        DECO_FIELD(logging, alert_ratio_margin),
        DECO_FIELD(logging, alert_steps),
        DECO_FIELD(logging, dead_expert_steps),
        DECO_FIELD(logging, alert_idle_token_share)}},
  };
  return sections;
}

#undef DECO_FIELD

const Section* find_section(const std::string& name) {
  for (const Section& s : schema())
    if (s.name == name) return &s;
  return nullptr;
}

std::vector<std::string> section_names() {
  std::vector<std::string> out;
  for (const Section& s : schema()) out.push_back(s.name);
  return out;
}

// ---------------------------------------------------------------- unknown names

// The closest valid name to `word`, as it should be written in the fix, or
// "" when nothing is within a typo. Candidates are (name to compare with
// the word, text to suggest); earlier candidates win ties.
std::string nearest(const std::string& word,
                    const std::vector<std::pair<std::string, std::string>>& candidates) {
  std::string best;
  size_t best_distance = std::numeric_limits<size_t>::max();
  for (const auto& [name, suggestion] : candidates) {
    const size_t d = edit_distance(lower(word), name);
    if (d < best_distance && close_enough(word, d)) {
      best = suggestion;
      best_distance = d;
    }
  }
  return best;
}

// For an unknown key under `section`: its own keys first, then the keys of
// the other sections (a misplaced `seed` under model is training.seed).
std::string suggest_key(const Section& section, const std::string& key) {
  std::vector<std::pair<std::string, std::string>> candidates;
  for (const std::string& k : section.keys()) candidates.emplace_back(k, section.name + "." + k);
  for (const Section& other : schema())
    if (other.name != section.name)
      for (const std::string& k : other.keys()) candidates.emplace_back(k, other.name + "." + k);
  return nearest(key, candidates);
}

// For an unknown top-level name: a section, or a key written outside its section.
std::string suggest_section(const std::string& name) {
  std::vector<std::pair<std::string, std::string>> candidates;
  for (const Section& s : schema()) candidates.emplace_back(s.name, s.name);
  for (const Section& s : schema())
    for (const std::string& k : s.keys()) candidates.emplace_back(k, s.name + "." + k);
  return nearest(name, candidates);
}

[[noreturn]] void unknown_key(const std::string& origin, const Section& section,
                              const std::string& key) {
  const std::string guess = suggest_key(section, key);
  if (!guess.empty())
    fail(origin, ": unknown key ", section.name, ".", key, "; did you mean ", guess, "?");
  fail(origin, ": unknown key ", section.name, ".", key, "; the ", section.name,
       " section takes ", join(section.keys()), ".");
}

[[noreturn]] void unknown_section(const std::string& origin, const std::string& name) {
  const std::string guess = suggest_section(name);
  if (guess.find('.') != std::string::npos)
    fail(origin, ": unknown section ", name, "; did you mean ", guess,
         " (keys go under their section)?");
  if (!guess.empty()) fail(origin, ": unknown section ", name, "; did you mean ", guess, "?");
  fail(origin, ": unknown section ", name, "; the sections are ", join(section_names()), ".");
}

// ---------------------------------------------------------------- where values came from

// Messages start with where the offending value came from: the file, or
// the --set override that last wrote it (or both, for a constraint between
// a file value and an override).
class Origins {
 public:
  explicit Origins(std::string source) : source_(std::move(source)) {}

  void set_override(const std::string& name, const std::string& text) {
    overrides_[name] = "--set " + text;
  }

  std::string of(std::initializer_list<std::string> names) const {
    std::vector<std::string> sets;
    bool all_overridden = true;
    for (const std::string& name : names) {
      const auto it = overrides_.find(name);
      if (it == overrides_.end()) {
        all_overridden = false;
      } else if (std::find(sets.begin(), sets.end(), it->second) == sets.end()) {
        sets.push_back(it->second);
      }
    }
    if (sets.empty()) return source_;
    if (all_overridden) return join(sets);
    return source_ + " with " + join(sets);
  }

 private:
  std::string source_;
  std::map<std::string, std::string> overrides_;
};

// ---------------------------------------------------------------- the document

std::string read_text(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec))
    fail(path, ": the configuration file does not exist; check the path.");
  if (fs::is_directory(path, ec))
    fail(path, ": the path is a directory, not a configuration file; pass a .yaml file.");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": the configuration file cannot be read (", std::strerror(errno),
                "); check its permissions.");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) fail(path, ": reading the configuration file failed; check the file.");
  return text.str();
}

YAML::Node parse_yaml(const std::string& text, const std::string& path) {
  try {
    return YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    fail(path, ": invalid YAML at line ", e.mark.line + 1, ", column ", e.mark.column + 1, " (",
         e.msg, "); fix the syntax there.");
  }
}

// Keys of a map must be plain names and appear once: yaml-cpp keeps both
// copies of a repeated key and reads the first, which would silently ignore
// the later (usually the intended) value.
void check_map_keys(const YAML::Node& map, const std::string& origin, const std::string& prefix) {
  std::set<std::string> seen;
  for (const auto& entry : map) {
    if (!entry.first.IsScalar())
      fail(origin, ": ", prefix.empty() ? "the top level" : prefix,
           " has a key that is not a plain name; use name: value pairs.");
    const std::string& key = entry.first.Scalar();
    if (!seen.insert(key).second)
      fail(origin, ": ", prefix.empty() ? "section " : "key ", prefix, key,
           " appears twice; keep one of them.");
  }
}

// The document's outline: a map of known sections, each a map of known keys.
void check_structure(const YAML::Node& root, const std::string& path) {
  if (root.IsNull())
    fail(path, ": the configuration file is empty; it needs at least the sections model, "
               "training and optimizer.");
  if (!root.IsMap())
    fail(path, ": the configuration must be a YAML map of sections (", join(section_names()),
         "), got ", describe(root), ".");
  check_map_keys(root, path, "");
  for (const auto& entry : root) {
    const std::string& name = entry.first.Scalar();
    const Section* section = find_section(name);
    if (!section) unknown_section(path, name);
    // A section whose keys are all commented out is empty, not malformed.
    if (!entry.second.IsMap() && !entry.second.IsNull())
      fail(path, ": section ", name, " must be a map of indented key: value lines, got ",
           describe(entry.second), ".");
    check_map_keys(entry.second, path, name + ".");
    for (const auto& item : entry.second) {
      if (!section->find(item.first.Scalar())) unknown_key(path, *section, item.first.Scalar());
    }
  }
}

// Applies "section.key=value" onto the document; the value is a YAML scalar.
void apply_override(YAML::Node& root, const std::string& text, Origins& origins) {
  const std::string origin = "--set " + text;
  const size_t eq = text.find('=');
  const size_t dot = text.find('.');
  if (eq == std::string::npos || dot == std::string::npos || dot > eq || dot == 0 || dot + 1 == eq)
    fail(origin, ": an override must look like section.key=value (for example "
                 "optimizer.lr=3e-4).");
  const std::string section_name = text.substr(0, dot);
  const std::string key = text.substr(dot + 1, eq - dot - 1);
  const std::string value = text.substr(eq + 1);
  const Section* section = find_section(section_name);
  if (!section) unknown_section(origin, section_name);
  if (!section->find(key)) unknown_key(origin, *section, key);
  YAML::Node node;
  try {
    node = YAML::Load(value);
  } catch (const YAML::ParserException& e) {
    fail(origin, ": the value is not valid YAML (", e.msg, "); quote it or fix it.");
  }
  root[section_name][key] = node;
  origins.set_override(section_name + "." + key, text);
}

// Reads every present key into `config`; returns the names (section.key)
// that were present.
std::set<std::string> read_fields(const YAML::Node& root, const Origins& origins,
                                  Config& config) {
  std::set<std::string> present;
  for (const Section& section : schema()) {
    const YAML::Node values = root[section.name];
    if (!values) continue;
    for (const Field& field : section.fields) {
      const YAML::Node node = values[field.key];
      if (!node) continue;
      const std::string name = section.name + "." + field.key;
      field.read(config, node, Where{origins.of({name}), name, field.hint});
      present.insert(name);
    }
  }
  return present;
}

void check_required(const YAML::Node& root, const std::set<std::string>& present,
                    const std::string& path) {
  for (const Section& section : schema()) {
    if (!section.has_required()) continue;
    std::vector<std::string> required;
    for (const Field& f : section.fields)
      if (!f.required.empty()) required.push_back(f.key);
    if (!root[section.name])
      fail(path, ": section ", section.name, " is missing; it is required (with at least ",
           join(required), ").");
    for (const Field& f : section.fields)
      if (!f.required.empty() && !present.count(section.name + "." + f.key))
        fail(path, ": ", section.name, ".", f.key, " is missing; it is required (", f.required,
             ").");
  }
}

// ---------------------------------------------------------------- value constraints

// "969,30,1", "98/2", "100": up to three non-negative numbers, positive sum.
bool valid_split(const std::string& split) {
  std::vector<double> parts;
  std::string token;
  for (size_t i = 0; i <= split.size(); ++i) {
    if (i == split.size() || split[i] == ',' || split[i] == '/') {
      double v = 0.0;
      if (parse_number(token, &v) != std::errc() || !(v >= 0) || !std::isfinite(v)) return false;
      parts.push_back(v);
      token.clear();
    } else if (split[i] != ' ') {
      token += split[i];
    }
  }
  double sum = 0.0;
  for (double v : parts) sum += v;
  return parts.size() <= 3 && sum > 0;
}

class Validator {
 public:
  Validator(const Config& config, const Origins& origins, const std::set<std::string>& present,
            int64_t world_size)
      : c_(config), origins_(origins), present_(present), world_size_(world_size) {}

  void run() {
    model();
    training();
    optimizer();
    schedule();
    sparsity();
    data();
    parallel();
    checkpoint();
    logging();
  }

 private:
  // Fails with `sentence` (prefixed by where the values of `names` came
  // from) unless `ok`.
  void check(bool ok, std::initializer_list<std::string> names, const std::string& sentence) const {
    if (!ok) fail(origins_.of(names), ": ", sentence);
  }

  void positive(const std::string& name, int64_t v) const {
    check(v > 0, {name}, str(name, " (", v, ") must be positive; set it to 1 or more."));
  }
  void positive(const std::string& name, double v) const {
    check(v > 0, {name}, str(name, " (", show(v), ") must be positive; set it above 0."));
  }
  template <typename T>
  void non_negative(const std::string& name, T v) const {
    check(v >= 0, {name}, str(name, " (", show(v), ") must not be negative; set it to 0 or more."));
  }
  // Betas and probabilities: 0 <= v < 1.
  void below_one(const std::string& name, double v, const char* hint) const {
    check(v >= 0 && v < 1, {name}, str(name, " (", show(v), ") must be in [0, 1); ", hint, "."));
  }

  void model() const {
    const ModelConfig& m = c_.model;
    positive("model.num_layers", m.num_layers);
    positive("model.hidden_size", m.hidden_size);
    positive("model.num_attention_heads", m.num_attention_heads);
    positive("model.num_query_groups", m.num_query_groups);
    positive("model.vocab_size", m.vocab_size);
    positive("model.seq_length", m.seq_length);
    check(m.hidden_size % m.num_attention_heads == 0,
          {"model.hidden_size", "model.num_attention_heads"},
          str("model.hidden_size (", m.hidden_size, ") must be divisible by "
              "model.num_attention_heads (", m.num_attention_heads, "); change one of them."));
    check(m.num_attention_heads % m.num_query_groups == 0,
          {"model.num_attention_heads", "model.num_query_groups"},
          str("model.num_attention_heads (", m.num_attention_heads, ") must be divisible by "
              "model.num_query_groups (", m.num_query_groups, ") so every key/value group "
              "serves the same number of heads; change one of them."));
    check(m.head_dim() % 2 == 0, {"model.hidden_size", "model.num_attention_heads"},
          str("the head dimension model.hidden_size / model.num_attention_heads (", m.hidden_size,
              " / ", m.num_attention_heads, " = ", m.head_dim(), ") must be even because rotary "
              "embedding rotates pairs of halves; change one of them."));
    check(m.dense_layers >= 0 && m.dense_layers <= m.num_layers,
          {"model.dense_layers", "model.num_layers"},
          str("model.dense_layers (", m.dense_layers, ") must be between 0 and model.num_layers (",
              m.num_layers, "); it counts the leading layers that keep a dense FFN."));
    non_negative("model.num_experts", m.num_experts);
    ffn_width();
    if (m.num_experts > 0) {
      positive("model.moe_ffn_hidden_size", m.moe_ffn_hidden_size);
      non_negative("model.moe_shared_expert_intermediate_size",
                   m.moe_shared_expert_intermediate_size);
    }
    positive("model.norm_epsilon", m.norm_epsilon);
    positive("model.rotary_base", m.rotary_base);
    positive("model.init_method_std", m.init_method_std);
  }

  // ffn_hidden_size has no sensible default, but only dense layers use it.
  void ffn_width() const {
    const ModelConfig& m = c_.model;
    const bool any_dense = m.num_experts == 0 || m.dense_layers > 0;
    if (!any_dense) {
      non_negative("model.ffn_hidden_size", m.ffn_hidden_size);
      return;
    }
    if (!present_.count("model.ffn_hidden_size")) {
      const std::string why =
          m.num_experts == 0   ? "every layer is dense (model.num_experts is 0)"
          : m.dense_layers == 1 ? "layer 0 is dense (model.dense_layers is 1)"
                                : str("the first ", m.dense_layers, " layers are dense "
                                      "(model.dense_layers is ", m.dense_layers, ")");
      fail(origins_.of({"model.num_experts", "model.dense_layers"}),
           ": model.ffn_hidden_size is missing; it is required because ", why,
           " (the width of the dense SwiGLU FFN).");
    }
    positive("model.ffn_hidden_size", m.ffn_hidden_size);
  }

  void training() const {
    const TrainingConfig& t = c_.training;
    positive("training.micro_batch_size", t.micro_batch_size);
    positive("training.global_batch_size", t.global_batch_size);
    positive("training.train_iters", t.train_iters);
    // global % (micro * world) without forming a product that could overflow.
    // (world_size_ 0: a config saved by a run whose size is not known here.)
    const bool divisible = t.global_batch_size % t.micro_batch_size == 0 &&
                           (world_size_ == 0 || (t.global_batch_size / t.micro_batch_size) % world_size_ == 0);
    int64_t product = 0;
    const bool overflow = __builtin_mul_overflow(t.micro_batch_size, world_size_, &product);
    check(divisible, {"training.global_batch_size", "training.micro_batch_size"},
          str("training.global_batch_size (", t.global_batch_size, ") must be divisible by "
              "training.micro_batch_size x world size (", t.micro_batch_size, " x ", world_size_,
              overflow ? "" : str(" = ", product), "; the world size is the data-parallel size, "
              "the number of processes); change the batch sizes or the number of processes."));
    positive("training.log_interval", t.log_interval);
    positive("training.max_nonfinite_skips", t.max_nonfinite_skips);
    non_negative("training.eval_interval", t.eval_interval);
    non_negative("training.eval_iters", t.eval_iters);
    non_negative("training.threads", t.threads);
    non_negative("training.exit_interval", t.exit_interval);
    non_negative("training.exit_duration_in_mins", t.exit_duration_in_mins);
    check(t.device == "cpu" || t.device == "cuda", {"training.device"},
          str("training.device (", t.device, ") must be cpu or cuda."));
  }

  void optimizer() const {
    const OptimizerConfig& o = c_.optimizer;
    positive("optimizer.lr", o.lr);
    check(o.min_lr >= 0 && o.min_lr <= o.lr, {"optimizer.min_lr", "optimizer.lr"},
          str("optimizer.min_lr (", show(o.min_lr), ") must be between 0 and optimizer.lr (",
              show(o.lr), "); change one of them."));
    non_negative("optimizer.weight_decay", o.weight_decay);
    below_one("optimizer.adam_beta1", o.adam_beta1, "the paper uses 0.9");
    below_one("optimizer.adam_beta2", o.adam_beta2, "the paper uses 0.95");
    positive("optimizer.adam_eps", o.adam_eps);
    non_negative("optimizer.clip_grad", o.clip_grad);
  }

  void schedule() const {
    const ScheduleConfig& s = c_.schedule;
    non_negative("schedule.lr_warmup_iters", s.lr_warmup_iters);
    non_negative("schedule.lr_decay_iters", s.lr_decay_iters);
    const int64_t end = c_.lr_decay_end();
    check(s.lr_warmup_iters <= end,
          {"schedule.lr_warmup_iters", "schedule.lr_decay_iters", "training.train_iters"},
          str("schedule.lr_warmup_iters (", s.lr_warmup_iters, ") must not exceed the end of "
              "the decay (", end, ": schedule.lr_decay_iters, or training.train_iters when that "
              "is 0); shorten the warmup."));
    if (s.lr_decay_style != LrDecayStyle::WSD) {
      non_negative("schedule.lr_wsd_decay_iters", s.lr_wsd_decay_iters);
      return;
    }
    const int64_t room = end - s.lr_warmup_iters;
    check(s.lr_wsd_decay_iters > 0 && s.lr_wsd_decay_iters <= room,
          {"schedule.lr_wsd_decay_iters", "schedule.lr_warmup_iters", "schedule.lr_decay_iters",
           "training.train_iters"},
          str("schedule.lr_wsd_decay_iters (", s.lr_wsd_decay_iters, ") must be between 1 and "
              "the steps after warmup (", end, " - ", s.lr_warmup_iters, " = ", room,
              "); shorten the decay phase or train longer."));
  }

  void sparsity() const {
    const SparsityConfig& s = c_.sparsity;
    check(s.target_ratio > 0 && s.target_ratio <= 1, {"sparsity.target_ratio"},
          str("sparsity.target_ratio (", show(s.target_ratio), ") must be in (0, 1]; it is "
              "the fraction of routed experts a token activates (the paper uses 0.2)."));
    non_negative("sparsity.reg_coef_min", s.reg_coef_min);
    check(s.reg_coef_multiplier >= 1, {"sparsity.reg_coef_multiplier"},
          str("sparsity.reg_coef_multiplier (", show(s.reg_coef_multiplier), ") must be at "
              "least 1 so the coefficient grows while the ratio is above target; the paper uses "
              "1.002 or 1.001."));
  }

  void data() const {
    const DataConfig& d = c_.data;
    for (const DataPathEntry& e : d.data_path) {
      check(e.weight > 0, {"data.data_path"},
            str("data.data_path weight of ", e.prefix, " (", show(e.weight), ") must be positive; "
                "drop the corpus instead of weighting it 0."));
      check(!e.prefix.empty(), {"data.data_path"}, "data.data_path has an empty prefix; give the path "
            "of a corpus without its .bin/.idx extension.");
      const bool has_ext = e.prefix.size() > 4 && (e.prefix.compare(e.prefix.size() - 4, 4, ".bin") == 0 ||
                                                   e.prefix.compare(e.prefix.size() - 4, 4, ".idx") == 0);
      check(!has_ext, {"data.data_path"},
            str("data.data_path entry ", e.prefix, " ends in its extension; give the prefix (",
                e.prefix.substr(0, e.prefix.size() - 4), "), as Megatron-LM does."));
    }
    check(valid_split(d.split), {"data.split"},
          str("data.split ('", d.split, "') must be up to three non-negative numbers separated by "
              "commas or slashes with a positive sum, such as \"969,30,1\"."));
    const std::string tok = lower(d.tokenizer_type);
    check(tok.empty() || tok == "sentencepiece" || tok == "gptsentencepiecetokenizer" ||
              tok == "sentencepiecetokenizer" || tok == "byte",
          {"data.tokenizer_type"},
          str("data.tokenizer_type (", d.tokenizer_type, ") must be sentencepiece or byte."));
    check(tok == "byte" || tok.empty() || !d.tokenizer_model.empty(), {"data.tokenizer_model"},
          "data.tokenizer_model is missing; a SentencePiece tokenizer needs its .model file.");
    check(d.synthetic_successors >= 1 && d.synthetic_successors <= c_.model.vocab_size,
          {"data.synthetic_successors", "model.vocab_size"},
          str("data.synthetic_successors (", d.synthetic_successors, ") must be between 1 and "
              "model.vocab_size (", c_.model.vocab_size, "); change it."));
    below_one("data.synthetic_repeat_prob", d.synthetic_repeat_prob,
              "it is a probability, and 1 would repeat forever");
  }

  void parallel() const {
    const int64_t ep = c_.parallel.expert_model_parallel_size;
    positive("parallel.expert_model_parallel_size", ep);
    check(world_size_ == 0 || world_size_ % ep == 0, {"parallel.expert_model_parallel_size"},
          str("parallel.expert_model_parallel_size (", ep, ") must divide the world size, the "
              "number of processes (", world_size_, "); change it or the number of processes."));
    non_negative("parallel.distributed_timeout_minutes", c_.parallel.distributed_timeout_minutes);
    non_negative("parallel.ddp_bucket_size", c_.parallel.ddp_bucket_size);
    const int64_t experts = c_.model.num_experts;
    check(experts == 0 || experts % ep == 0,
          {"parallel.expert_model_parallel_size", "model.num_experts"},
          str("parallel.expert_model_parallel_size (", ep, ") must divide model.num_experts (",
              experts, ") so every rank holds the same number of experts; change one of them."));
  }

  void logging() const {
    const LoggingConfig& l = c_.logging;
    non_negative("logging.alert_ratio_margin", l.alert_ratio_margin);
    positive("logging.alert_steps", l.alert_steps);
    positive("logging.dead_expert_steps", l.dead_expert_steps);
    non_negative("logging.alert_idle_token_share", l.alert_idle_token_share);
  }

  void checkpoint() const {
    const CheckpointConfig& k = c_.checkpoint;
    non_negative("checkpoint.save_interval", k.save_interval);
    non_negative("checkpoint.keep_last", k.keep_last);
    check(k.save_interval == 0 || !k.save.empty(), {"checkpoint.save_interval", "checkpoint.save"},
          str("checkpoint.save_interval (", k.save_interval, ") asks for checkpoints but "
              "checkpoint.save names no directory; set checkpoint.save."));
    check(k.load != "auto" || !k.save.empty(), {"checkpoint.load", "checkpoint.save"},
          "checkpoint.load is auto, which resumes from checkpoint.save's latest checkpoint, but "
          "checkpoint.save is not set; set it, or give checkpoint.load a checkpoint path.");
  }

  const Config& c_;
  const Origins& origins_;
  const std::set<std::string>& present_;
  int64_t world_size_;
};

}  // namespace

namespace {

Config config_from_text(const std::string& text, const std::string& path,
                        const std::vector<std::string>& overrides, int64_t world_size) {
  DECO_ASSERT(world_size >= 0, "world_size is ", world_size);  // 0: unknown (a saved config)
  YAML::Node root = parse_yaml(text, path);
  check_structure(root, path);
  Origins origins(path);
  for (const std::string& text : overrides) apply_override(root, text, origins);

  Config config;
  config.source = path;
  const std::set<std::string> present = read_fields(root, origins, config);
  check_required(root, present, path);
  if (!present.count("model.num_query_groups"))
    config.model.num_query_groups = config.model.num_attention_heads;
  config.model.recompute = config.training.recompute;  // the model reads it from its own config
  Validator(config, origins, present, world_size).run();
  return config;
}

}  // namespace

Config load_config(const std::string& path, const std::vector<std::string>& overrides,
                   int64_t world_size) {
  return config_from_text(read_text(path), path, overrides, world_size);
}

Config parse_config(const std::string& yaml, const std::string& origin) {
  return config_from_text(yaml, origin, {}, 0);  // saved by a run of any size
}

std::string config_to_yaml(const Config& config) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  for (const Section& section : schema()) {
    out << YAML::Key << section.name << YAML::Value << YAML::BeginMap;
    for (const Field& field : section.fields) {
      out << YAML::Key << field.key << YAML::Value;
      field.emit(config, out);
    }
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
  DECO_ASSERT(out.good(), "yaml-cpp emitter: ", out.GetLastError());

  // No source path: the text depends on the values only, so two runs of the
  // same configuration write the same config.yaml and comparing texts works.
  return std::string("# deco configuration: every key, defaults included\n") + out.c_str() + "\n";
}

}  // namespace deco
