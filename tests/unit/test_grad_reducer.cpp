// GradReducer (parallel.overlap_grad_reduce): buckets that tile each region,
// start during the backward pass in the order their gradients complete, and
// reduce every element exactly once. A stand-in group of two ranks whose
// peer holds the same gradients turns each bucket's all-reduce into x2.
#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

#include "kernels/ops.h"
#include "model/model.h"
#include "model_fixtures.h"
#include "trainer/grad_reducer.h"

using namespace deco;

namespace {

// Rank 0 of two, the other rank holding the same values: a sum doubles them.
class TwinComm final : public Communicator {
 public:
  explicit TwinComm(std::string name) : name_(std::move(name)) {}
  int64_t rank() const override { return 0; }
  int64_t size() const override { return 2; }
  std::string name() const override { return name_; }
  void all_reduce(const Tensor& x, ReduceOp) override { ops::scale(x, 2.0); }
  void reduce_scatter(const Tensor&, const Tensor&) override { FAIL("not used"); }
  void all_gather(const Tensor&, const Tensor&) override { FAIL("not used"); }
  void all_to_all(const Tensor&, const std::vector<int64_t>&, const Tensor&, const std::vector<int64_t>&) override {
    FAIL("not used");
  }
  void broadcast(const Tensor&, int64_t) override {}
  void barrier() override {}
  // Done at wait(), as an asynchronous reduction completes.
  std::unique_ptr<PendingCollective> all_reduce_async(const Tensor& x, ReduceOp) override {
    struct Pending final : PendingCollective {
      Tensor x;
      int* waits;
      void wait() override {
        ops::scale(x, 2.0);
        ++*waits;
      }
    };
    auto p = std::make_unique<Pending>();
    p->x = x;
    p->waits = &waits;
    ++started;
    return p;
  }
  int started = 0, waits = 0;

 private:
  std::string name_;
};

}  // namespace

TEST_CASE("GradReducer: buckets tile the regions, start during backward, reduce every element once",
          "[parallel][grad-reducer]") {
  ModelConfig c = test::small_model_config();
  c.num_layers = 4;
  std::vector<int32_t> t = test::random_tokens(2, 8, c.vocab_size, 3);
  const Tensor tokens(t.data(), DType::I32, Device::CPU, {2, 9});
  StepOptions opt;
  opt.reg_coef = 0.05;

  Model plain(c, DType::F32, Device::CPU);
  plain.init(4);
  plain.step(tokens, opt);
  const Tensor want = plain.grads().flat();

  Model model(c, DType::F32, Device::CPU);
  model.init(4);
  TwinComm dense("data-parallel"), expert("expert-data-parallel");
  const int64_t bucket = 700;  // several buckets per region, boundaries inside parameters
  GradReducer reducer(model.layout(), model.grads().flat(), dense, expert, bucket);
  const auto buckets = reducer.buckets();
  // Tiling: contiguous, each region's first bucket at its start, none longer than asked.
  REQUIRE(buckets.size() > 4);
  CHECK(buckets.front().begin == 0);
  CHECK(buckets.back().end == model.layout().total_numel());
  for (size_t i = 0; i < buckets.size(); ++i) {
    CHECK(buckets[i].end - buckets[i].begin <= bucket);
    if (i > 0) CHECK(buckets[i].begin == buckets[i - 1].end);
    CHECK(buckets[i].group == (buckets[i].begin < model.layout().dense_numel() ? "data-parallel"
                                                                                 : "expert-data-parallel"));
  }

  for (int step = 0; step < 2; ++step) {  // the reducer resets for the next step
    INFO("step " << step);
    ops::zero(model.grads().flat());
    std::vector<int64_t> units;
    opt.on_grads_ready = [&](int64_t unit) {
      units.push_back(unit);
      reducer.on_grads_ready(unit);
    };
    model.step(tokens, opt);
    // Units come head first, then the layers from the last, then the embedding.
    REQUIRE(units.size() == static_cast<size_t>(c.num_layers) + 2);
    CHECK(units.front() == kHeadGradUnit);
    CHECK(units[1] == c.num_layers - 1);
    CHECK(units.back() == kEmbeddingGradUnit);
    const int started_in_backward = dense.started + expert.started;
    reducer.finish();
    // Every bucket had started before the backward pass ended, the dense
    // region's last bucket (the head's) first and its first (the embedding's) last.
    CHECK(started_in_backward == static_cast<int>(buckets.size()) * (step + 1));
    const auto& order = reducer.start_order();
    const auto& by_unit = reducer.started_at_units();
    REQUIRE(order.size() == buckets.size());
    CHECK(buckets[order.front()].end == model.layout().dense_numel());
    CHECK(by_unit.front() >= 1);                  // the head's bucket(s) at the first report
    CHECK(by_unit[by_unit.size() - 2] < buckets.size());  // the embedding's wait for its report
    CHECK(by_unit.back() == buckets.size());
    CHECK(dense.waits + expert.waits == static_cast<int>(buckets.size()) * (step + 1));
    // Each element doubled exactly once, nothing touched twice or skipped.
    const Tensor got = model.grads().flat();
    std::vector<float> doubled(want.data<float>(), want.data<float>() + want.numel());
    for (float& v : doubled) v *= 2.0f;
    CHECK(std::memcmp(doubled.data(), got.raw(), got.nbytes()) == 0);
  }
}

TEST_CASE("GradReducer: groups of one rank are not reduced", "[parallel][grad-reducer]") {
  ModelConfig c = test::small_model_config();
  Model model(c, DType::F32, Device::CPU);
  SelfComm one("data-parallel");
  TwinComm expert("expert-data-parallel");
  GradReducer reducer(model.layout(), model.grads().flat(), one, expert, 1000);
  for (const auto& b : reducer.buckets()) CHECK(b.begin >= model.layout().dense_numel());
  CHECK(default_bucket_elements(8) == 40'000'000);
  CHECK(default_bucket_elements(64) == 64'000'000);
}

TEST_CASE("GradReducer for ZeRO-1: buckets end at shard boundaries and go to their shard's owner",
          "[parallel][grad-reducer]") {
  ModelConfig c = test::small_model_config();
  // The layout ZeRO-1 uses on two ranks: each region padded to 64 x 2 elements.
  Model model(c, DType::F32, Device::CPU, nullptr, 64 * 2);
  const ParamLayout& layout = model.layout();
  TwinComm dense("data-parallel"), expert("expert-data-parallel");
  const int64_t bucket = 700;
  GradReducer reducer(layout, model.grads().flat(), dense, expert, bucket, /*reduce_to_owners=*/true);
  const auto buckets = reducer.buckets();
  REQUIRE(!buckets.empty());
  CHECK(buckets.front().begin == 0);
  CHECK(buckets.back().end == layout.total_numel());
  const int64_t dense_half = layout.dense_numel() / 2, expert_half = layout.expert_numel() / 2;
  for (size_t i = 0; i < buckets.size(); ++i) {
    const auto& b = buckets[i];
    INFO("bucket " << i << " [" << b.begin << ", " << b.end << ")");
    if (i > 0) CHECK(b.begin == buckets[i - 1].end);
    CHECK(b.end - b.begin <= bucket);
    // Inside one shard (Trainer::shard_context: rank g owns the g-th half of each region), reduced to its owner.
    const bool in_dense = b.begin < layout.dense_numel();
    const int64_t start = in_dense ? 0 : layout.dense_numel(), half = in_dense ? dense_half : expert_half;
    const int64_t owner = (b.begin - start) / half;
    CHECK(b.owner == owner);
    CHECK((b.end - 1 - start) / half == owner);
  }
  // Both owners' shards start a bucket (the cut at the shard boundary).
  int64_t owners[2] = {0, 0};
  for (const auto& b : buckets) ++owners[b.owner];
  CHECK(owners[0] > 0);
  CHECK(owners[1] > 0);
  // Without the distributed optimizer, buckets are all-reduced.
  GradReducer plain(layout, model.grads().flat(), dense, expert, bucket);
  for (const auto& b : plain.buckets()) CHECK(b.owner == -1);
}
