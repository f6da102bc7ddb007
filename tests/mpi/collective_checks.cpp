#include "tests/mpi/collective_checks.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>

namespace deco::test {
namespace {

// What rank r holds at element i: integers 1..16, so sums over up to 16
// ranks stay exact in bf16 (whose integers are exact up to 256).
double value(int64_t rank, int64_t i) { return static_cast<double>(1 + (rank * 7 + i * 3) % 16); }

// bf16 is the upper half of a float32; the values here have no lower bits.
uint16_t to_bf16(double v) {
  const float f = static_cast<float>(v);
  uint32_t bits = 0;
  std::memcpy(&bits, &f, sizeof(bits));
  return static_cast<uint16_t>(bits >> 16);
}
double from_bf16(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f = 0;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// A tensor of `dtype` on `device` holding `values`.
Buffer make_tensor(DType dtype, Device device, const std::vector<double>& values) {
  const Shape shape{static_cast<int64_t>(values.size())};
  Buffer host(dtype, Device::CPU, shape);
  for (size_t i = 0; i < values.size(); ++i) {
    switch (dtype) {
      case DType::F32: host.data<float>()[i] = static_cast<float>(values[i]); break;
      case DType::F64: host.data<double>()[i] = values[i]; break;
      case DType::I32: host.data<int32_t>()[i] = static_cast<int32_t>(values[i]); break;
      case DType::I64: host.data<int64_t>()[i] = static_cast<int64_t>(values[i]); break;
      case DType::BF16: static_cast<uint16_t*>(host.tensor().raw())[i] = to_bf16(values[i]); break;
    }
  }
  if (device == Device::CPU) return host;
  Buffer on_device(dtype, device, shape);
  device_copy(device, on_device.tensor().raw(), Device::CPU, host.tensor().raw(), host.tensor().nbytes());
  return on_device;
}

std::vector<double> read_values(const Tensor& t) {
  Buffer host(t.dtype(), Device::CPU, t.shape());
  device_copy(Device::CPU, host.tensor().raw(), t.device(), t.raw(), t.nbytes());
  std::vector<double> out(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    switch (t.dtype()) {
      case DType::F32: out[i] = host.data<float>()[i]; break;
      case DType::F64: out[i] = host.data<double>()[i]; break;
      case DType::I32: out[i] = host.data<int32_t>()[i]; break;
      case DType::I64: out[i] = static_cast<double>(host.data<int64_t>()[i]); break;
      case DType::BF16: out[i] = from_bf16(static_cast<const uint16_t*>(host.tensor().raw())[i]); break;
    }
  }
  return out;
}

// Compares element by element; reports the first few differences.
std::vector<std::string> compare(const std::string& what, const Communicator& comm, DType dtype,
                                 const std::vector<double>& got, const std::vector<double>& expected) {
  const std::string where = str(what, " ", dtype_name(dtype), " on the ", comm.name(), " group, rank ",
                                comm.rank(), " of ", comm.size());
  if (got.size() != expected.size()) return {str(where, ": ", got.size(), " elements, expected ", expected.size())};
  std::vector<std::string> failures;
  for (size_t i = 0; i < got.size() && failures.size() < 3; ++i)
    if (got[i] != expected[i]) failures.push_back(str(where, ": element ", i, " is ", got[i], ", expected ", expected[i]));
  return failures;
}

std::vector<double> values_of(int64_t rank, int64_t n, int64_t first = 0) {
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = value(rank, first + i);
  return out;
}

// all_to_all: what rank `from` sends rank `to`, and how many.
int64_t pair_count(int64_t from, int64_t to, int64_t scale) { return (from + 2 * to + scale) % 4 * scale; }
double pair_value(int64_t from, int64_t to, int64_t j) { return value(from * 5 + to, j); }

}  // namespace

std::vector<DType> collective_dtypes(Device device) {
  if (device == Device::CPU) return {DType::F32, DType::F64, DType::I32, DType::I64};
  return {DType::F32, DType::BF16, DType::F64, DType::I32, DType::I64};
}

std::string join(const std::vector<std::string>& lines) {
  std::string out;
  for (const std::string& line : lines) out += (out.empty() ? "" : "; ") + line;
  return out;
}

std::vector<std::string> check_all_reduce(Communicator& comm, Device device, DType dtype, ReduceOp op, int64_t n) {
  Buffer x = make_tensor(dtype, device, values_of(comm.rank(), n));
  comm.all_reduce(x, op);
  std::vector<double> expected(static_cast<size_t>(n), op == ReduceOp::Sum ? 0.0 : -1.0);
  for (int64_t r = 0; r < comm.size(); ++r)
    for (int64_t i = 0; i < n; ++i) {
      double& e = expected[static_cast<size_t>(i)];
      e = op == ReduceOp::Sum ? e + value(r, i) : std::max(e, value(r, i));
    }
  return compare(op == ReduceOp::Sum ? "all_reduce(sum)" : "all_reduce(max)", comm, dtype, read_values(x), expected);
}

std::vector<std::string> check_all_reduce_async(Communicator& comm, Device device, DType dtype, int64_t n) {
  const int64_t sizes[] = {n, 2 * n + 1, 3};
  std::vector<Buffer> buffers;
  std::vector<std::unique_ptr<PendingCollective>> pending;
  for (int64_t k = 0; k < 3; ++k) buffers.push_back(make_tensor(dtype, device, values_of(comm.rank(), sizes[k], 7 * k)));
  for (int64_t k = 0; k < 3; ++k) pending.push_back(comm.all_reduce_async(buffers[static_cast<size_t>(k)], ReduceOp::Sum));
  pending[0]->wait();
  pending[1]->wait();
  std::vector<std::string> failures;
  // test() until it says done, within a bound (a collective that never
  // completes is a failure here, not a hang of the whole program).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!pending[2]->test()) {
    if (std::chrono::steady_clock::now() > deadline)
      return {str("all_reduce_async on the ", comm.name(), " group: test() never said done within 60 s")};
  }
  pending[2]->wait();  // after test() said done: returns at once
  for (int64_t k = 0; k < 3; ++k) {
    std::vector<double> expected(static_cast<size_t>(sizes[k]), 0.0);
    for (int64_t r = 0; r < comm.size(); ++r)
      for (int64_t i = 0; i < sizes[k]; ++i) expected[static_cast<size_t>(i)] += value(r, 7 * k + i);
    const auto more = compare(str("all_reduce_async #", k), comm, dtype, read_values(buffers[static_cast<size_t>(k)]),
                              expected);
    failures.insert(failures.end(), more.begin(), more.end());
  }
  return failures;
}

std::vector<std::string> check_reduce_scatter(Communicator& comm, Device device, DType dtype, int64_t n) {
  Buffer in = make_tensor(dtype, device, values_of(comm.rank(), comm.size() * n));
  Buffer out = make_tensor(dtype, device, std::vector<double>(static_cast<size_t>(n), -1.0));
  comm.reduce_scatter(out, in);
  std::vector<double> expected(static_cast<size_t>(n), 0.0);
  for (int64_t r = 0; r < comm.size(); ++r)
    for (int64_t i = 0; i < n; ++i) expected[static_cast<size_t>(i)] += value(r, comm.rank() * n + i);
  return compare("reduce_scatter", comm, dtype, read_values(out), expected);
}

std::vector<std::string> check_all_gather(Communicator& comm, Device device, DType dtype, int64_t n) {
  Buffer in = make_tensor(dtype, device, values_of(comm.rank(), n));
  Buffer out = make_tensor(dtype, device, std::vector<double>(static_cast<size_t>(comm.size() * n), -1.0));
  comm.all_gather(out, in);
  std::vector<double> expected;
  for (int64_t r = 0; r < comm.size(); ++r) {
    const std::vector<double> chunk = values_of(r, n);
    expected.insert(expected.end(), chunk.begin(), chunk.end());
  }
  return compare("all_gather", comm, dtype, read_values(out), expected);
}

std::vector<std::string> check_all_to_all(Communicator& comm, Device device, DType dtype, int64_t scale) {
  const int64_t me = comm.rank(), size = comm.size();
  std::vector<int64_t> send_counts(static_cast<size_t>(size)), recv_counts(static_cast<size_t>(size));
  std::vector<double> send, expected;
  for (int64_t p = 0; p < size; ++p) {
    send_counts[static_cast<size_t>(p)] = pair_count(me, p, scale);
    recv_counts[static_cast<size_t>(p)] = pair_count(p, me, scale);
    for (int64_t j = 0; j < pair_count(me, p, scale); ++j) send.push_back(pair_value(me, p, j));
    for (int64_t j = 0; j < pair_count(p, me, scale); ++j) expected.push_back(pair_value(p, me, j));
  }
  Buffer in = make_tensor(dtype, device, send);
  Buffer out = make_tensor(dtype, device, std::vector<double>(expected.size(), -1.0));
  comm.all_to_all(out, recv_counts, in, send_counts);
  return compare(str("all_to_all(scale ", scale, ")"), comm, dtype, read_values(out), expected);
}

std::vector<std::string> check_interleaved(Communicator& buckets, Communicator& exchange, Device device, DType dtype,
                                           int64_t n) {
  Buffer bucket = make_tensor(dtype, device, values_of(buckets.rank(), n, 11));
  std::unique_ptr<PendingCollective> in_flight = buckets.all_reduce_async(bucket, ReduceOp::Sum);
  std::vector<std::string> failures = check_all_to_all(exchange, device, dtype, 3);
  const std::vector<std::string> more = check_all_reduce(exchange, device, dtype, ReduceOp::Sum, 5);
  failures.insert(failures.end(), more.begin(), more.end());
  in_flight->wait();
  std::vector<double> expected(static_cast<size_t>(n), 0.0);
  for (int64_t r = 0; r < buckets.size(); ++r)
    for (int64_t i = 0; i < n; ++i) expected[static_cast<size_t>(i)] += value(r, 11 + i);
  const std::vector<std::string> sums =
      compare("all_reduce_async beside another communicator's collectives", buckets, dtype, read_values(bucket), expected);
  failures.insert(failures.end(), sums.begin(), sums.end());
  return failures;
}

std::vector<std::string> check_broadcast(Communicator& comm, Device device, DType dtype, int64_t n) {
  const int64_t root = comm.size() - 1;
  // Non-root ranks start from other values, which must be overwritten.
  Buffer x = make_tensor(dtype, device, values_of(comm.rank() == root ? root : root + 1 + comm.rank(), n));
  comm.broadcast(x, root);
  return compare(str("broadcast(root ", root, ")"), comm, dtype, read_values(x), values_of(root, n));
}

std::vector<std::string> check_host_conveniences(Communicator& comm) {
  const int64_t me = comm.rank(), size = comm.size();
  std::vector<std::string> failures;
  auto add = [&](std::vector<std::string> more) { failures.insert(failures.end(), more.begin(), more.end()); };

  // Metrics: a loss-like double sum, an integer count, a max.
  std::vector<double> sums{0.25 * static_cast<double>(me + 1), 1.0};
  comm.all_reduce_sum(sums);
  add(compare("all_reduce_sum(doubles)", comm, DType::F64, sums,
              {0.125 * static_cast<double>(size * (size + 1)), static_cast<double>(size)}));
  std::vector<int64_t> counts{(int64_t{1} << 40) + me};  // beyond int32
  comm.all_reduce_sum(counts);
  add(compare("all_reduce_sum(int64)", comm, DType::I64, {static_cast<double>(counts[0])},
              {static_cast<double>((int64_t{1} << 40) * size + size * (size - 1) / 2)}));
  std::vector<double> maxima{static_cast<double>(me), -static_cast<double>(me)};
  comm.all_reduce_max(maxima);
  add(compare("all_reduce_max", comm, DType::F64, maxima, {static_cast<double>(size - 1), 0.0}));

  // all_to_all_counts: rank me sends pair_count(me, p) to p.
  std::vector<int64_t> send(static_cast<size_t>(size));
  std::vector<double> expected(static_cast<size_t>(size));
  for (int64_t p = 0; p < size; ++p) {
    send[static_cast<size_t>(p)] = pair_count(me, p, 3);
    expected[static_cast<size_t>(p)] = static_cast<double>(pair_count(p, me, 3));
  }
  const std::vector<int64_t> recv = comm.all_to_all_counts(send);
  std::vector<double> got(recv.begin(), recv.end());
  add(compare("all_to_all_counts", comm, DType::I64, got, expected));

  comm.barrier();
  return failures;
}

}  // namespace deco::test
