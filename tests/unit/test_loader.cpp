// The prefetching loader: Megatron's order, resume, errors, shutdown.
#include <catch2/catch.hpp>

#include <chrono>
#include <future>

#include "core/error.h"
#include "data/loader.h"
#include "data/indexed_dataset.h"
#include "data/megatron_data.h"
#include "data/synthetic_corpus.h"
#include "test_util.h"

using namespace deco;

namespace {

// Sample i is [i, i, ...]; reading sample `poison` throws.
class CountingSource final : public SampleSource {
 public:
  explicit CountingSource(int64_t poison = -1) : poison_(poison) {}
  int64_t sample_tokens() const override { return 3; }
  void read(int64_t index, int32_t* out) const override {
    if (index == poison_) fail("sample ", index, " is unreadable");
    for (int i = 0; i < 3; ++i) out[i] = static_cast<int32_t>(index);
  }
  std::string describe() const override { return "counting"; }

 private:
  int64_t poison_;
};

}  // namespace

TEST_CASE("loader yields the plan's micro-batches in order, across steps", "[data][loader]") {
  const SyntheticCorpus corpus(64, 8, 4, 0.3, 7, Split::Train);
  const BatchPlan plan(2, 8, 1, 0);  // 4 micro-batches per step
  DataLoader loader(corpus, plan, 0, 3);
  std::vector<int32_t> expected;
  for (int64_t step = 0; step < 3; ++step)
    for (int64_t micro = 0; micro < 4; ++micro) {
      plan.load(corpus, step * 8, micro, expected);
      CHECK(loader.next() == expected);
    }
  CHECK(loader.wait_seconds() >= 0.0);
}

TEST_CASE("loader resumes at consumed samples and follows a data-parallel rank's slice", "[data][loader]") {
  const CountingSource source;
  const BatchPlan rank1(2, 8, 2, 1);  // dp 2: chunks of 4 samples, rank 1 takes the second pair
  DataLoader loader(source, rank1, 16, 2);  // resumed after 2 steps
  CHECK(loader.next()[0] == 18);  // step 3 (samples 16..23): chunk 16..19, rank 1 reads 18, 19
  CHECK(loader.next()[0] == 22);  // chunk 20..23
  CHECK(loader.next()[0] == 26);  // next step
}

TEST_CASE("a read error reaches the trainer as the same message", "[data][loader]") {
  const CountingSource source(5);
  const BatchPlan plan(2, 4, 1, 0);
  DataLoader loader(source, plan, 0, 4);
  CHECK(loader.next()[0] == 0);
  CHECK(loader.next()[0] == 2);
  CHECK_THROWS_WITH(loader.next(), Catch::Contains("sample 5 is unreadable"));
}

TEST_CASE("a loader destroyed while its producer waits for space shuts down", "[data][loader]") {
  const CountingSource source;
  const BatchPlan plan(1, 1, 1, 0);
  // Never read from, so the producer is blocked on a full ring when the
  // destructor runs; it must wake and stop rather than hang.
  auto done = std::async(std::launch::async, [&] { DataLoader loader(source, plan, 0, 1); });
  CHECK(done.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
}

TEST_CASE("resuming mid-epoch on a Megatron corpus continues with the very next sample", "[data][loader]") {
  deco::test::TempDir dir;
  // 40 documents of 5-20 tokens: with seq_length 8 and 60 samples the
  // dataset spans several epochs, so step 7 of 15 is mid-epoch.
  {
    IndexedDatasetBuilder builder(dir / "corpus", IndexDType::U16);
    for (int d = 0; d < 40; ++d) {
      std::vector<int32_t> doc(static_cast<size_t>(5 + (d * 7) % 16));
      for (size_t i = 0; i < doc.size(); ++i) doc[i] = static_cast<int32_t>(d * 31 + i) % 500;
      builder.add_document(doc.data(), static_cast<int64_t>(doc.size()));
    }
    builder.finalize();
  }
  MegatronDataOptions options;
  options.data_path = {{1.0, dir / "corpus"}};
  options.split = "100,0,0";
  options.cache_dir = dir / "cache";
  options.seq_length = 8;
  options.train_samples = 60;
  const MegatronDatasets data = build_megatron_datasets(options);
  REQUIRE(data.train);
  const BatchPlan plan(2, 4, 1, 0);  // 2 micro-batches of 2 per step of 4 samples

  DataLoader fresh(*data.train, plan, 0);
  std::vector<std::vector<int32_t>> uninterrupted;
  for (int i = 0; i < 30; ++i) uninterrupted.push_back(fresh.next());
  // Resume after 7 steps (28 samples): the next micro-batch is the 15th of the fresh run.
  DataLoader resumed(*data.train, plan, 28);
  for (int i = 14; i < 30; ++i) CHECK(resumed.next() == uninterrupted[static_cast<size_t>(i)]);
  // And the indices came from the cache the first build wrote (a second build loads them).
  const MegatronDatasets again = build_megatron_datasets(options);
  std::vector<int32_t> a(9), b(9);
  for (int64_t k = 0; k < 60; ++k) {
    data.train->read(k, a.data());
    again.train->read(k, b.data());
    CHECK(a == b);
  }
}
