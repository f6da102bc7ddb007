// core/profile.h on the CPU (wall clock); the GPU's events are read by the
// same code after cudaEventSynchronize (deco bench --profile in the GPU suite).
#include <catch2/catch.hpp>

#include <chrono>
#include <thread>

#include "core/profile.h"

using namespace deco;

namespace {
void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }
}  // namespace

TEST_CASE("profile regions: off by default, then per name in first-seen order, nested, summed", "[core]") {
  {
    profile::Region idle("not recorded");
  }
  CHECK(profile::collect().empty());

  profile::enable(true, Device::CPU);
  for (int step = 0; step < 2; ++step) {
    profile::Region outer("step");
    for (int layer = 0; layer < 3; ++layer) {
      profile::Region inner("layer");
      sleep_ms(5);
    }
    profile::Region tail("tail");
    sleep_ms(2);
  }
  const std::vector<profile::Entry> got = profile::collect();
  profile::enable(false);
  REQUIRE(got.size() == 3);
  CHECK(got[0].name == "step");
  CHECK(got[1].name == "layer");
  CHECK(got[2].name == "tail");
  CHECK(got[0].calls == 2);
  CHECK(got[1].calls == 6);
  CHECK(got[2].calls == 2);
  CHECK(got[0].depth == 0);
  CHECK(got[1].depth == 1);
  CHECK(got[2].depth == 1);
  CHECK(got[1].seconds >= 0.030);                        // six sleeps of 5 ms at least
  CHECK(got[0].seconds >= got[1].seconds + got[2].seconds);  // a region includes the ones inside it
  CHECK(profile::collect().empty());                     // collect() cleared the record
  {
    profile::Region after("after disable");
  }
  CHECK(profile::collect().empty());
}
