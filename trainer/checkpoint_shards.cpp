#include "trainer/checkpoint_shards.h"

#include <algorithm>
#include <cstdio>
#include <map>

#include "core/error.h"
#include "trainer/weights_io.h"

namespace deco {
namespace {

// A logical shape as [rows, cols]: a 1-D tensor of n values is [n, 1].
Block whole(const Shape& shape) {
  return shape.ndim == 1 ? Block{0, shape[0], 0, 1} : Block{0, shape[0], 0, shape[1]};
}

bool inside(const Block& b, const Block& outer) {
  return b.r0 >= outer.r0 && b.r1 <= outer.r1 && b.c0 >= outer.c0 && b.c1 <= outer.c1 && b.r0 <= b.r1 &&
         b.c0 <= b.c1;
}

// The pieces of one spec that a ZeRO-1 rank owns: [lo, hi) within the spec,
// and where they sit in the shard buffer.
struct OwnedPart {
  int64_t lo, hi, buffer_at;
};

std::vector<OwnedPart> owned_parts(const ParamSpec& spec, const std::vector<FlatRange>& owned) {
  std::vector<OwnedPart> parts;
  int64_t buffer_at = 0;
  for (const FlatRange& r : owned) {
    const int64_t lo = std::max(r.begin, spec.offset), hi = std::min(r.end, spec.offset + spec.shape.numel());
    if (lo < hi) parts.push_back({lo - spec.offset, hi - spec.offset, buffer_at + lo - r.begin});
    buffer_at += r.size();
  }
  return parts;
}

ParamSpec piece_spec(const std::string& name, int64_t count) {
  ParamSpec s;
  s.name = name;
  s.shape = Shape{count};
  return s;
}

}  // namespace

Block block_of(const ParamSpec& spec) {
  Block b = whole(spec.shape);
  if (spec.shard_dim == 0) {
    b.r0 += spec.shard_begin;
    b.r1 += spec.shard_begin;
  } else if (spec.shard_dim == 1) {
    b.c0 += spec.shard_begin;
    b.c1 += spec.shard_begin;
  }
  return b;
}

std::string piece_name(const std::string& param, const Block& b, int64_t f0, int64_t f1) {
  return str(param, "[", b.r0, ":", b.r1, ",", b.c0, ":", b.c1, "]{", f0, ":", f1, "}");
}

bool parse_piece_name(const std::string& name, std::string* param, Block* b, int64_t* f0, int64_t* f1) {
  const size_t open = name.rfind('[');
  if (open == std::string::npos) return false;
  long long r0, r1, c0, c1, a, e;
  char tail = 0;
  if (std::sscanf(name.c_str() + open, "[%lld:%lld,%lld:%lld]{%lld:%lld}%c", &r0, &r1, &c0, &c1, &a, &e, &tail) != 6)
    return false;
  *param = name.substr(0, open);
  *b = Block{r0, r1, c0, c1};
  *f0 = a;
  *f1 = e;
  return true;
}

ShardPieces::ShardPieces(const ParamLayout& local, const ShardContext& context)
    : model_(std::vector<ParamSpec>{}), moments_(std::vector<ParamSpec>{}) {
  std::vector<ParamSpec> model, moments;
  for (const ParamSpec& spec : local.specs()) {
    const int64_t n = spec.shape.numel();
    const bool writes = spec.expert ? context.writes_experts : context.writes_dense;
    const Block b = block_of(spec);
    if (n == 0) continue;
    if (writes) {
      model.push_back(piece_spec(piece_name(spec.name, b, 0, n), n));
      model_from_.push_back(spec.offset);
    }
    if (context.owned.empty()) {
      if (writes) {
        moments.push_back(piece_spec(piece_name(spec.name, b, 0, n), n));
        moment_from_.push_back(spec.offset);
      }
      continue;
    }
    for (const OwnedPart& part : owned_parts(spec, context.owned)) {
      moments.push_back(piece_spec(piece_name(spec.name, b, part.lo, part.hi), part.hi - part.lo));
      moment_from_.push_back(part.buffer_at);
    }
  }
  model_ = ParamLayout(std::move(model));
  moments_ = ParamLayout(std::move(moments));
}

void ShardPieces::copy_model(const ParamStore& params, const ParamStore& into) const {
  const auto& specs = model_.specs();
  for (size_t i = 0; i < specs.size(); ++i) {
    const int64_t from = model_from_[i], n = specs[i].shape.numel();
    copy_to_float32(params.flat().slice(from, from + n), into.get(specs[i]).data<float>());
  }
}

void ShardPieces::copy_moment(const Tensor& moment, const ParamStore& into) const {
  const auto& specs = moments_.specs();
  for (size_t i = 0; i < specs.size(); ++i) {
    const int64_t from = moment_from_[i], n = specs[i].shape.numel();
    copy_to_float32(moment.slice(from, from + n), into.get(specs[i]).data<float>());
  }
}

namespace {

// One destination of load_pieces: a group of the files and where its values go.
struct Target {
  std::string group;
  const std::vector<std::string>* files;
  Tensor dst;          // the local store's flat tensor, or the ZeRO-1 shard buffer
  bool sharded_moment;  // dst is a ZeRO-1 shard buffer
  std::vector<float> staged;
};

}  // namespace

void load_pieces(const std::vector<std::string>& model_files, const std::vector<std::string>& moment_files,
                 const ParamLayout& local, const ShardContext& context, const ParamStore* params,
                 const Tensor* exp_avg, const Tensor* exp_avg_sq, const std::string& fix) {
  std::vector<Target> targets;
  const bool zero = !context.owned.empty();
  if (params) targets.push_back({"model", &model_files, params->flat(), false, {}});
  if (exp_avg) targets.push_back({"exp_avg", &moment_files, *exp_avg, zero, {}});
  if (exp_avg_sq) targets.push_back({"exp_avg_sq", &moment_files, *exp_avg_sq, zero, {}});

  std::map<std::string, size_t> index;  // parameter name -> spec
  for (size_t i = 0; i < local.specs().size(); ++i) index[local.specs()[i].name] = i;
  std::vector<float> values;
  for (Target& t : targets) {
    t.staged.assign(static_cast<size_t>(t.dst.numel()), 0.0f);
    std::vector<int64_t> filled(local.specs().size(), 0);
    for (const std::string& file : *t.files) {
      for (const auto& [name, dims] : list_tensors_h5(file, t.group, fix)) {
        std::string param;
        Block b;
        int64_t f0 = 0, f1 = 0;
        if (!parse_piece_name(name, &param, &b, &f0, &f1)) {  // a whole tensor (unsharded checkpoint)
          param = name;
          Shape shape;
          shape.ndim = static_cast<int>(std::min<size_t>(dims.size(), kMaxDims));
          for (int d = 0; d < shape.ndim; ++d) shape.dims[static_cast<size_t>(d)] = dims[static_cast<size_t>(d)];
          b = whole(shape);
          f1 = shape.numel();
        }
        const auto it = index.find(param);
        if (it == index.end())
          fail(file, " holds /", t.group, "/", name, ", a tensor this model does not have; the checkpoint was "
               "written for another model config: ", fix);
        const ParamSpec& spec = local.specs()[it->second];
        if (!inside(b, whole(spec.full_shape)) || f0 < 0 || f1 < f0 || f1 > b.rows() * b.cols())
          fail(file, ": /", t.group, "/", name, " does not fit tensor ", param, " of shape ",
               spec.full_shape.to_string(), "; the checkpoint was written for another model config: ", fix);
        // Which of its rows this rank needs at all.
        const Block nb = block_of(spec);
        if (f1 == f0 || b.cols() == 0) continue;
        const int64_t first_row = b.r0 + f0 / b.cols(), last_row = b.r0 + (f1 - 1) / b.cols();
        if (last_row < nb.r0 || first_row >= nb.r1 || b.c1 <= nb.c0 || b.c0 >= nb.c1) continue;

        values.resize(static_cast<size_t>(f1 - f0));
        read_tensor_h5(file, t.group, name, values.data(), f1 - f0, fix);
        const std::vector<OwnedPart> parts =
            t.sharded_moment ? owned_parts(spec, context.owned) : std::vector<OwnedPart>{};
        for (int64_t i = f0; i < f1; ++i) {
          const int64_t row = b.r0 + i / b.cols(), col = b.c0 + i % b.cols();
          if (row < nb.r0 || row >= nb.r1 || col < nb.c0 || col >= nb.c1) continue;
          const int64_t at = (row - nb.r0) * nb.cols() + (col - nb.c0);  // within this rank's block
          int64_t dst = spec.offset + at;
          if (t.sharded_moment) {
            dst = -1;
            for (const OwnedPart& p : parts)
              if (at >= p.lo && at < p.hi) dst = p.buffer_at + at - p.lo;
            if (dst < 0) continue;
          }
          t.staged[static_cast<size_t>(dst)] = values[static_cast<size_t>(i - f0)];
          ++filled[it->second];
        }
      }
    }
    for (size_t k = 0; k < local.specs().size(); ++k) {
      const ParamSpec& spec = local.specs()[k];
      int64_t needed = spec.shape.numel();
      if (t.sharded_moment) {
        needed = 0;
        for (const OwnedPart& p : owned_parts(spec, context.owned)) needed += p.hi - p.lo;
      }
      if (filled[k] != needed)
        fail("the checkpoint's /", t.group, " pieces hold ", filled[k], " of the ", needed, " values of ", spec.name,
             " this rank needs", filled[k] > needed ? " (some twice)" : "", "; the checkpoint is incomplete: ", fix);
    }
  }
  // Everything was read and checked: now the stores change.
  for (Target& t : targets) copy_from_float32(t.staged.data(), t.dst);
}

}  // namespace deco
