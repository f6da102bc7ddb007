// Every collective and dtype of MpiComm (under mpirun) or SelfComm (one
// process) against values each rank computes on its own
// (collective_checks.h), and the refusals of what MpiComm cannot move.
#include <catch2/catch.hpp>

#include "core/tensor.h"
#include "parallel/layout.h"
#include "parallel/mpi_comm.h"
#include "tests/mpi/collective_checks.h"

using namespace deco;
using namespace deco::test;

namespace {

// The world of this run: an MpiComm under mpirun, a SelfComm otherwise.
Communicator& world() {
  static ProcessGroups groups = make_process_groups(detect_launch(), 1, 0);
  return *groups.world;
}

// Chunk lengths: one element, an odd few (offset mistakes), a few pages.
const int64_t kLengths[] = {1, 5, 4099};

}  // namespace

TEST_CASE("all_reduce sums and maxima over the world", "[collectives]") {
  for (DType dtype : collective_dtypes(Device::CPU))
    for (int64_t n : kLengths) {
      CHECK(join(check_all_reduce(world(), Device::CPU, dtype, ReduceOp::Sum, n)) == "");
      CHECK(join(check_all_reduce(world(), Device::CPU, dtype, ReduceOp::Max, n)) == "");
    }
}

TEST_CASE("all_reduce_async: several in flight, each waited for", "[collectives]") {
  for (DType dtype : collective_dtypes(Device::CPU))
    for (int64_t n : kLengths) CHECK(join(check_all_reduce_async(world(), Device::CPU, dtype, n)) == "");
}

TEST_CASE("a bucket in flight on one communicator while another exchanges", "[collectives]") {
  // The data-parallel group and the expert-parallel group of a step are two
  // communicators; under mpirun this one is a second MpiComm over the world.
  if (world().size() == 1) return;
  std::unique_ptr<MpiComm> other = MpiComm::world("other");
  for (DType dtype : collective_dtypes(Device::CPU))
    for (int64_t n : kLengths) CHECK(join(check_interleaved(world(), *other, Device::CPU, dtype, n)) == "");
}

TEST_CASE("ByDeviceComm sends host tensors to its host communicator", "[collectives]") {
  // The device side must never see a host tensor: it fails the test if called.
  struct DeviceSide final : Communicator {
    int64_t r, n;
    DeviceSide(int64_t rank, int64_t size) : r(rank), n(size) {}
    int64_t rank() const override { return r; }
    int64_t size() const override { return n; }
    std::string name() const override { return "device side"; }
    void all_reduce(const Tensor&, ReduceOp) override { FAIL("host tensor routed to the device side"); }
    void reduce_scatter(const Tensor&, const Tensor&) override { FAIL("host tensor routed to the device side"); }
    void all_gather(const Tensor&, const Tensor&) override { FAIL("host tensor routed to the device side"); }
    void all_to_all(const Tensor&, const std::vector<int64_t>&, const Tensor&, const std::vector<int64_t>&) override {
      FAIL("host tensor routed to the device side");
    }
    void broadcast(const Tensor&, int64_t) override { FAIL("host tensor routed to the device side"); }
    void barrier() override { FAIL("barrier routed to the device side"); }
  };
  if (world().size() == 1) return;
  ByDeviceComm by_device(MpiComm::world("by-device"), std::make_unique<DeviceSide>(world().rank(), world().size()));
  for (int64_t n : kLengths) {
    CHECK(join(check_all_reduce(by_device, Device::CPU, DType::F32, ReduceOp::Sum, n)) == "");
    CHECK(join(check_all_reduce_async(by_device, Device::CPU, DType::F64, n)) == "");
    CHECK(join(check_all_to_all(by_device, Device::CPU, DType::I64, n)) == "");
  }
  CHECK(join(check_host_conveniences(by_device)) == "");
}

TEST_CASE("reduce_scatter and all_gather move each rank's chunk", "[collectives]") {
  for (DType dtype : collective_dtypes(Device::CPU))
    for (int64_t n : kLengths) {
      CHECK(join(check_reduce_scatter(world(), Device::CPU, dtype, n)) == "");
      CHECK(join(check_all_gather(world(), Device::CPU, dtype, n)) == "");
    }
}

TEST_CASE("all_to_all delivers uneven counts, zeros included", "[collectives]") {
  for (DType dtype : collective_dtypes(Device::CPU))
    for (int64_t scale : {0, 1, 7, 1000}) CHECK(join(check_all_to_all(world(), Device::CPU, dtype, scale)) == "");
}

TEST_CASE("bfloat16 moves through MPI's data-moving collectives (mixed precision's token exchange)",
          "[collectives]") {
  for (int64_t n : kLengths) {
    CHECK(join(check_all_gather(world(), Device::CPU, DType::BF16, n)) == "");
    CHECK(join(check_broadcast(world(), Device::CPU, DType::BF16, n)) == "");
    CHECK(join(check_all_to_all(world(), Device::CPU, DType::BF16, n)) == "");
  }
}

TEST_CASE("broadcast from the last rank", "[collectives]") {
  for (DType dtype : collective_dtypes(Device::CPU))
    for (int64_t n : kLengths) CHECK(join(check_broadcast(world(), Device::CPU, dtype, n)) == "");
}

TEST_CASE("host conveniences: metric sums, maxima, all_to_all_counts, barrier", "[collectives]") {
  CHECK(join(check_host_conveniences(world())) == "");
}

TEST_CASE("MpiComm refuses what it cannot move, on every rank before any collective", "[collectives]") {
  if (world().size() == 1) return;  // SelfComm moves nothing, so it has nothing to refuse
  uint16_t bf16[4] = {};
  CHECK_THROWS_WITH(world().all_reduce(Tensor(bf16, DType::BF16, Device::CPU, Shape{4}), ReduceOp::Sum),
                    Catch::Contains("MPI has no bfloat16 type"));
  float device_memory[4] = {};  // never dereferenced: the device check comes first
  CHECK_THROWS_WITH(world().all_reduce(Tensor(device_memory, DType::F32, Device::CUDA, Shape{4}), ReduceOp::Sum),
                    Catch::Contains("CUDA tensors go through NcclComm"));
  std::vector<double> x(2);
  const Tensor t(x.data(), DType::F64, Device::CPU, Shape{2});
  CHECK_THROWS_WITH(world().broadcast(t, world().size()), Catch::Contains("is not a rank of the world group"));
  CHECK_THROWS_WITH(world().all_to_all(t, {1}, t, {1}), Catch::Contains("one send and one receive count per rank"));
  world().barrier();  // every rank is past the refusals
}

TEST_CASE("SelfComm: a group of one copies and keeps", "[self]") {
  SelfComm self("self");
  CHECK(self.rank() == 0);
  CHECK(self.size() == 1);
  CHECK(self.name() == "self");
  for (DType dtype : {DType::F32, DType::F64, DType::I32, DType::I64, DType::BF16})
    for (int64_t n : kLengths) {
      CHECK(join(check_all_reduce(self, Device::CPU, dtype, ReduceOp::Sum, n)) == "");
      CHECK(join(check_all_reduce(self, Device::CPU, dtype, ReduceOp::Max, n)) == "");
      CHECK(join(check_reduce_scatter(self, Device::CPU, dtype, n)) == "");
      CHECK(join(check_all_gather(self, Device::CPU, dtype, n)) == "");
      CHECK(join(check_broadcast(self, Device::CPU, dtype, n)) == "");
      CHECK(join(check_all_to_all(self, Device::CPU, dtype, n)) == "");
      CHECK(join(check_all_reduce_async(self, Device::CPU, dtype, n)) == "");
    }
  CHECK(join(check_host_conveniences(self)) == "");
}
