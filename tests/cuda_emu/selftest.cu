// The CUDA emulator's own test: kernels with each defect the emulator
// claims to catch (README.md, "What it catches"), each beside its correct
// twin, which must run and give the right values. Built only for the
// emulator (hostify.py, like kernels/cuda/*.cu); run in both thread orders
// (DECO_CUDA_EMULATOR_ORDER), where the race below shows in each.
#include <cuda_runtime.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/mma.cuh"

using deco::cuda::bf16;

namespace {

// ---------------------------------------------------------------- kernels

// Threads 0-15 wait at a barrier, 16-31 at a shuffle that needs 0-15: a hang on a GPU.
__global__ void barrier_meets_shuffle(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x < 16)
    __syncthreads();
  else
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// A full-mask shuffle after half the warp has returned.
__global__ void shuffle_after_exit(float* out) {
  if (threadIdx.x < 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<float>(threadIdx.x), 1);
}

// Half the warp at a shuffle, the other half at a ballot, both full-mask.
__global__ void divergent_collectives(float* out) {
  if (threadIdx.x < 16)
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
  else
    out[threadIdx.x] = static_cast<float>(__ballot_sync(0xffffffffu, 1));
}

// The correct warp reduction: every lane ends with the sum of 0..31.
__global__ void warp_sum(float* out) {
  float v = static_cast<float>(threadIdx.x);
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  out[threadIdx.x] = v;
}

// Each thread reads its neighbour's shared-memory element, with or without
// the barrier between the writes and the reads.
template <bool kBarrier> __global__ void neighbour(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  if (kBarrier) __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

// Each warp writes its half of shared memory, then reads the other warp's
// half after __syncwarp (no barrier between warps: a race) or __syncthreads.
template <bool kBarrier> __global__ void other_warp(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  if (kBarrier) __syncthreads();
  else __syncwarp();
  out[threadIdx.x] = s[(threadIdx.x + 32) % 64];
}

// Block b writes its slot, then reads block b - 1's: a dependence between
// blocks of one launch, which a GPU runs in any order.
__global__ void previous_block(float* slots, float* out) {
  slots[blockIdx.x] = static_cast<float>(blockIdx.x);
  out[blockIdx.x] = blockIdx.x > 0 ? slots[blockIdx.x - 1] : 0.0f;
}

// The block's sum by a shared-memory tree: correct in either order.
__global__ void tree_sum(const float* in, float* out) {
  __shared__ float s[256];
  s[threadIdx.x] = in[threadIdx.x];
  __syncthreads();
  for (int half = 128; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) s[threadIdx.x] += s[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

// 16 bytes per thread through cp.async into shared memory, read after the
// wait or (kWait false) before it. `shift` elements off the 16-byte grid
// makes the copy misaligned.
template <bool kWait> __global__ void async_copy(const bf16* src, float* out, int shift) {
  __shared__ __align__(16) bf16 tile[8 * 32 + 8];
  deco::cuda::cp_async16(tile + shift + 8 * threadIdx.x, src + 8 * threadIdx.x, true);
  deco::cuda::cp_async_commit();
  if (kWait) deco::cuda::cp_async_wait<0>();
  __syncthreads();
  out[threadIdx.x] = __bfloat162float(tile[shift + 8 * threadIdx.x]);
}

// Reads its whole dynamic shared memory's first element after writing it.
__global__ void dynamic_shared(float* out) {
  extern __shared__ float dyn[];
  if (threadIdx.x == 0) dyn[0] = 3.0f;
  __syncthreads();
  out[threadIdx.x] = dyn[0];
}

// Writes element `i` of `p`.
__global__ void write_at(float* p, int i) { p[i] = 1.0f; }

// ---------------------------------------------------------------- harness

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

// The launch just made failed with `error` and a report naming `kernel` and containing `words`.
void expect_failure(cudaError_t error, const char* kernel, const char* words, const std::string& what) {
  const cudaError_t got = cudaGetLastError();
  const std::string report = deco_emu::last_launch_failure();
  expect(got == error && report.find(kernel) != std::string::npos && report.find(words) != std::string::npos,
         what + " (error " + cudaGetErrorName(got) + ", report '" + report + "')");
}

void expect_launched(const std::string& what) {
  const cudaError_t got = cudaGetLastError();
  expect(got == cudaSuccess && *deco_emu::last_launch_failure() == '\0',
         what + " runs (" + cudaGetErrorName(got) + ")");
}

// Runs `body` in a child process; returns whether the child died of SIGSEGV,
// and what it wrote to stderr.
template <typename F> std::pair<bool, std::string> in_child(F body) {
  int fds[2];
  if (pipe(fds) != 0) return {false, "pipe failed"};
  std::fflush(nullptr);
  const pid_t child = fork();
  if (child == 0) {
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    body();
    _exit(0);
  }
  close(fds[1]);
  std::string text;
  char buffer[512];
  ssize_t n = 0;
  while ((n = read(fds[0], buffer, sizeof(buffer))) > 0) text.append(buffer, static_cast<size_t>(n));
  close(fds[0]);
  while (!text.empty() && text.back() == '\n') text.pop_back();
  int status = 0;
  waitpid(child, &status, 0);
  return {WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV, text};
}

std::vector<float> to_host(const float* device, int n) {
  std::vector<float> host(static_cast<size_t>(n));
  cudaMemcpy(host.data(), device, sizeof(float) * static_cast<size_t>(n), cudaMemcpyDeviceToHost);
  return host;
}

int count_nan(const std::vector<float>& v) {
  int n = 0;
  for (float x : v) n += std::isnan(x) ? 1 : 0;
  return n;
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  float* out = nullptr;
  float* in = nullptr;
  cudaMalloc(&out, sizeof(float) * 256);
  cudaMalloc(&in, sizeof(float) * 256);

  // Fresh device memory reads as NaN (0xff bytes) until written.
  expect(count_nan(to_host(out, 256)) == 256, "fresh cudaMalloc memory is 0xff (NaN) until written");

  // Barriers and warp collectives that cannot complete.
  barrier_meets_shuffle<<<1, 32>>>(out);
  expect_failure(cudaErrorLaunchFailure, "barrier_meets_shuffle", "deadlock",
                 "a barrier and a shuffle waiting for each other are a deadlock");
  shuffle_after_exit<<<1, 32>>>(out);
  expect_failure(cudaErrorLaunchFailure, "shuffle_after_exit", "which has exited",
                 "a full-mask shuffle after lanes returned");
  divergent_collectives<<<1, 32>>>(out);
  expect_failure(cudaErrorLaunchFailure, "divergent_collectives", "divergent warp collectives",
                 "a shuffle and a ballot over the same mask");
  warp_sum<<<1, 32>>>(out);
  expect_launched("the warp reduction, after the failed launches,");
  const std::vector<float> sums = to_host(out, 32);
  bool all = true;
  for (float x : sums) all = all && x == 496.0f;
  expect(all, "every lane of the warp reduction holds 0 + ... + 31 = 496");

  // A read of another thread's shared memory without the barrier meets
  // poison (0xff, NaN) in one thread order or the other; with it, none.
  neighbour<false><<<1, 64>>>(out);
  expect_launched("the neighbour read without a barrier");
  const int raced = count_nan(to_host(out, 64));
  expect(raced > 0, "without the barrier, " + std::to_string(raced) + " of 64 threads read unwritten shared memory");
  neighbour<true><<<1, 64>>>(out);
  expect_launched("the neighbour read with a barrier");
  const std::vector<float> neighbours = to_host(out, 64);
  all = true;
  for (int i = 0; i < 64; ++i) all = all && neighbours[i] == static_cast<float>((i + 1) % 64);
  expect(all, "with the barrier, every thread reads its neighbour's value");

  // The same between warps, past a __syncwarp: whichever warp runs first
  // reads the other's half unwritten.
  other_warp<false><<<1, 64>>>(out);
  expect_launched("the other warp's read after __syncwarp");
  const int warp_raced = count_nan(to_host(out, 64));
  expect(warp_raced == 32, "after __syncwarp alone, " + std::to_string(warp_raced) +
                               " of 64 threads read the other warp's shared memory unwritten");
  other_warp<true><<<1, 64>>>(out);
  expect_launched("the other warp's read after __syncthreads");
  const std::vector<float> halves = to_host(out, 64);
  all = true;
  for (int i = 0; i < 64; ++i) all = all && halves[i] == static_cast<float>((i + 32) % 64);
  expect(all, "after __syncthreads, every thread reads the other warp's value");

  // Between blocks: in order each reads its predecessor's slot written; from
  // the last block to the first (DECO_CUDA_EMULATOR_ORDER=reverse) unwritten.
  float* slots = nullptr;
  cudaMalloc(&slots, sizeof(float) * 8);
  previous_block<<<8, 1>>>(slots, out);
  expect_launched("the read of the previous block's slot");
  const char* order = std::getenv("DECO_CUDA_EMULATOR_ORDER");
  const bool reverse = order && std::strcmp(order, "reverse") == 0;
  const int block_raced = count_nan(to_host(out, 8));
  expect(block_raced == (reverse ? 7 : 0),
         std::to_string(block_raced) + " of 8 blocks read the previous block's slot unwritten (" +
             (reverse ? "blocks from the last to the first: 7 expected" : "blocks in order: 0 expected") + ")");
  cudaFree(slots);

  // Device memory out of bounds: a write one element past a 64-float
  // allocation, and one into freed memory, fault where they happen, naming
  // the kernel; the last element is writable.
  float* small = nullptr;
  cudaMalloc(&small, sizeof(float) * 64);
  write_at<<<1, 1>>>(small, 63);
  expect_launched("a write to the last element of an allocation");
  const auto past = in_child([&] { write_at<<<1, 1>>>(small, 64); });
  expect(past.first && past.second.find("write_at, block (0,0,0) thread (0,0,0): invalid memory access") !=
                           std::string::npos,
         "a write one element past an allocation's end faults, naming the kernel ('" + past.second + "')");
  cudaFree(small);
  const auto freed = in_child([&] { write_at<<<1, 1>>>(small, 0); });
  expect(freed.first && freed.second.find("write_at, block (0,0,0)") != std::string::npos,
         "a write to freed device memory faults ('" + freed.second + "')");

  std::vector<float> ones(256, 1.0f);
  cudaMemcpy(in, ones.data(), sizeof(float) * 256, cudaMemcpyHostToDevice);
  tree_sum<<<2, 256>>>(in, out);
  expect_launched("the tree reduction");
  const std::vector<float> tree = to_host(out, 2);
  expect(tree[0] == 256.0f && tree[1] == 256.0f, "each block's tree reduction sums 256 ones to 256");

  // cp.async: the copy lands at its wait, not before; addresses off the 16-byte grid fail.
  bf16* src = nullptr;
  cudaMalloc(&src, sizeof(bf16) * 8 * 32);
  std::vector<bf16> values(8 * 32);
  for (int i = 0; i < 8 * 32; ++i) values[static_cast<size_t>(i)] = __float2bfloat16(static_cast<float>(i % 100));
  cudaMemcpy(src, values.data(), sizeof(bf16) * values.size(), cudaMemcpyHostToDevice);
  async_copy<false><<<1, 32>>>(src, out, 0);
  expect_launched("the read before cp.async's wait");
  expect(count_nan(to_host(out, 32)) == 32, "a read before cp.async's wait sees the poison, not the copy");
  async_copy<true><<<1, 32>>>(src, out, 0);
  expect_launched("the read after cp.async's wait");
  const std::vector<float> copied = to_host(out, 32);
  all = true;
  for (int t = 0; t < 32; ++t) all = all && copied[static_cast<size_t>(t)] == static_cast<float>(8 * t % 100);
  expect(all, "after the wait every thread reads what it copied");
  async_copy<true><<<1, 32>>>(src, out, 1);
  expect_failure(cudaErrorLaunchFailure, "async_copy", "not 16-byte aligned", "a cp.async to a misaligned address");

  // The limits a launch is checked against.
  constexpr int kSharedBytes = 64 << 10;
  warp_sum<<<1, 2048>>>(out);
  expect_failure(cudaErrorInvalidConfiguration, "warp_sum", "invalid configuration", "a block of 2048 threads");
  dynamic_shared<<<1, 32, kSharedBytes>>>(out);
  expect_failure(cudaErrorInvalidValue, "dynamic_shared", "dynamic shared memory",
                 "64 KiB of dynamic shared memory without the opt-in");
  cudaFuncSetAttribute(reinterpret_cast<const void*>(dynamic_shared), cudaFuncAttributeMaxDynamicSharedMemorySize,
                       kSharedBytes);
  dynamic_shared<<<1, 32, kSharedBytes>>>(out);
  expect_launched("64 KiB of dynamic shared memory after cudaFuncSetAttribute");
  const std::vector<float> dyn = to_host(out, 32);
  all = true;
  for (float x : dyn) all = all && x == 3.0f;
  expect(all, "every thread reads the dynamic shared memory thread 0 wrote");

  cudaFree(src);
  cudaFree(in);
  cudaFree(out);
  std::printf("%s: %d failure(s)\n", failures == 0 ? "the emulator catches every defect here" : "FAILED", failures);
  return failures == 0 ? 0 : 1;
}
