// The CUDA emulator's runtime: the blocks of a launch run one after another
// on the calling host thread, the CUDA threads of a block on fibers
// (Boost.Context), each running until it reaches a barrier or a warp
// collective (a thread that finishes without one hands its fiber to the
// next thread); then the CUDA runtime API functions deco calls, over host
// memory. Every stream is the host thread's program order: a kernel or copy
// has finished when its call returns, so events are timestamps and waits
// return at once.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <boost/context/fiber.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "tests/cuda_emu/cuda_emu.h"

namespace deco_emu {
namespace {

enum class State { NotStarted, Runnable, AtBarrier, AtWarp, Done };

struct Copy {
  void* dst;
  const void* src;
  int bytes, src_bytes;
};

// A fiber that runs CUDA threads of a block one after another: a thread that
// finishes without waiting hands the fiber to the next thread not yet
// started, so a kernel without barriers or warp collectives runs its whole
// block on one fiber, and one that waits takes a fiber per thread.
struct Worker {
  boost::context::fiber context;  // the thread it runs, while that is suspended
  boost::context::fiber sink;     // the scheduler, while a thread runs
};

struct Thread {
  Lane lane;
  State state = State::NotStarted;
  Worker* worker = nullptr;  // the fiber it runs on, once started
  unsigned mask = 0;  // at a warp collective: its mask, kind, arguments and operation
  const char* kind = nullptr;
  void* args = nullptr;
  WarpOp op = nullptr;
  std::vector<Copy> open;                 // cp.async since the last commit
  std::vector<std::vector<Copy>> groups;  // committed, oldest first
};

constexpr size_t kStackBytes = 256u << 10;
constexpr size_t kMaxThreads = 1024;
constexpr size_t kDefaultSharedBytes = 48u << 10;
constexpr size_t kOptinSharedBytes = 227u << 10;  // Hopper's per-block maximum

struct Block {
  uint3 index;
  dim3 dim, grid;
  const char* kernel = "";
  void (*body)(void*) = nullptr;
  void* context = nullptr;
  std::vector<Thread> threads;
  std::vector<Worker> workers;  // reserved for one per thread: addresses stay put
  int started = 0;              // threads started, in run order
  Thread* current = nullptr;
  std::vector<unsigned char> dynamic;
  std::unordered_set<void*> declared;
  std::string error;
};

Block* running = nullptr;  // the block being run (one at a time, under launch_mutex)
std::mutex launch_mutex;
thread_local cudaError_t last_error = cudaSuccess;
thread_local std::string last_failure;  // the calling thread's last launch's report
std::mutex optin_mutex;
std::unordered_map<const void*, int> shared_optin;  // kernel -> cudaFuncAttributeMaxDynamicSharedMemorySize

// Fiber stacks, kept for the next block: mapped with a guard page below
// each, so an overflow is a segmentation fault, not silent corruption.
std::vector<char*>& stacks() {
  static std::vector<char*> pool;
  return pool;
}
char* stack_for(size_t i) {
  auto& pool = stacks();
  while (pool.size() <= i) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) {
      std::fprintf(stderr, "CUDA emulator: cannot map a fiber stack\n");
      std::abort();
    }
    mprotect(p, page, PROT_NONE);
    pool.push_back(static_cast<char*>(p) + page);
  }
  return pool[i];
}

// Hands a fiber the pooled stack of its worker index (kept for the next block).
struct PooledStack {
  size_t index;
  boost::context::stack_context allocate() {
    boost::context::stack_context s;
    s.size = kStackBytes;
    s.sp = stack_for(index) + kStackBytes;  // stacks grow down from sp
    return s;
  }
  void deallocate(boost::context::stack_context&) noexcept {}
};

void suspend(State state) {
  Thread* t = running->current;
  t->state = state;
  t->worker->sink = std::move(t->worker->sink).resume();
}

std::string where(const Block& b, const Thread* f) {
  char s[160];
  if (f)
    std::snprintf(s, sizeof(s), "block (%u,%u,%u) thread (%u,%u,%u)", b.index.x, b.index.y, b.index.z,
                  f->lane.thread_idx.x, f->lane.thread_idx.y, f->lane.thread_idx.z);
  else
    std::snprintf(s, sizeof(s), "block (%u,%u,%u)", b.index.x, b.index.y, b.index.z);
  return s;
}

void record(Block& b, const Thread* f, const std::string& what) {
  if (b.error.empty()) b.error = std::string(b.kernel) + ", " + where(b, f) + ": " + what;
}

// Releases the warp collectives of warp w whose lanes have all arrived.
// Returns whether any was released; records an error for a collective that
// can never complete.
bool release_warp(Block& b, int w) {
  const int n = static_cast<int>(b.threads.size());
  const int first = 32 * w, lanes = std::min(32, n - first);
  // The common case first: every lane of the warp at one collective over the whole warp.
  const unsigned whole = lanes == 32 ? ~0u : (1u << lanes) - 1u;
  Thread& lead = b.threads[first];
  if (lead.state == State::AtWarp && lead.mask == whole) {
    void* args[32] = {};
    int l = 0;
    for (; l < lanes; ++l) {
      const Thread& o = b.threads[first + l];
      if (o.state != State::AtWarp || o.mask != whole || o.kind != lead.kind) break;
      args[l] = o.args;
    }
    if (l == lanes) {
      b.current = &lead;  // for errors the operation reports
      lead.op(args, whole);
      for (int k = 0; k < lanes; ++k) b.threads[first + k].state = State::Runnable;
      return true;
    }
  }
  bool released = false;
  unsigned handled = 0;
  for (int l = 0; l < lanes; ++l) {
    Thread& f = b.threads[first + l];
    if (f.state != State::AtWarp || (handled >> l & 1u)) continue;
    const unsigned mask = f.mask;
    bool complete = true;
    for (int k = 0; k < 32; ++k) {
      if (!(mask >> k & 1u)) continue;
      if (k >= lanes) {
        record(b, &f, std::string(f.kind) + " names lane " + std::to_string(k) + " of a warp of " +
                          std::to_string(lanes) + " threads");
        return false;
      }
      const Thread& o = b.threads[first + k];
      if (o.state == State::Done) {
        record(b, &f, std::string(f.kind) + " waits for lane " + std::to_string(k) + ", which has exited");
        return false;
      }
      if (o.state != State::AtWarp) {
        complete = false;
        continue;
      }
      if (o.mask != mask || std::strcmp(o.kind, f.kind) != 0) {
        record(b, &f, std::string(f.kind) + " (mask " + std::to_string(mask) + ") meets " + o.kind + " (mask " +
                          std::to_string(o.mask) + ") of lane " + std::to_string(k) + ": divergent warp collectives");
        return false;
      }
    }
    handled |= mask;
    if (!complete) continue;
    void* args[32] = {};
    for (int k = 0; k < 32; ++k)
      if (mask >> k & 1u) args[k] = b.threads[first + k].args;
    b.current = &f;  // for errors the operation reports
    f.op(args, mask);
    for (int k = 0; k < 32; ++k)
      if (mask >> k & 1u) b.threads[first + k].state = State::Runnable;
    released = true;
  }
  return released;
}

std::string describe_wait(const Block& b) {
  std::string s;
  int shown = 0;
  for (const Thread& f : b.threads) {
    if (f.state == State::Done || shown >= 4) continue;
    s += "; thread " + std::to_string(f.lane.linear) +
         (f.state == State::AtBarrier ? " at __syncthreads" : std::string(" at ") + f.kind);
    ++shown;
  }
  return s;
}

// DECO_CUDA_EMULATOR_ORDER=reverse runs a block's threads from the last to
// the first between barriers, and a launch's blocks from the last to the
// first: a race between threads of one phase (a read of what another thread
// writes before the next __syncthreads), or between blocks, reads the new
// value in one order and the old one in the other, so running the tests in
// both orders shows it.
bool reverse_order() {
  static const bool reverse = [] {
    const char* v = std::getenv("DECO_CUDA_EMULATOR_ORDER");
    return v && std::strcmp(v, "reverse") == 0;
  }();
  return reverse;
}

// The thread that runs k-th (in the order above).
int run_order(const Block& b, int k) {
  const int n = static_cast<int>(b.threads.size());
  return reverse_order() ? n - 1 - k : k;
}

// Starts a worker on the next thread not yet started, and runs it until a
// thread of it waits or no thread is left to start.
void start_worker(Block& b) {
  b.workers.emplace_back();
  Worker* w = &b.workers.back();
  w->context = boost::context::fiber(
      std::allocator_arg, PooledStack{b.workers.size() - 1}, [w](boost::context::fiber&& sink) {
        w->sink = std::move(sink);
        Block& blk = *running;
        const int n = static_cast<int>(blk.threads.size());
        while (blk.started < n && blk.error.empty()) {
          Thread& t = blk.threads[static_cast<size_t>(run_order(blk, blk.started++))];
          t.worker = w;
          t.state = State::Runnable;
          blk.current = &t;
          blk.body(blk.context);
          t.state = State::Done;
        }
        return std::move(w->sink);
      });
  w->context = std::move(w->context).resume();
}

// The threads of every block of a launch: their indices, set once.
void make_threads(Block& b) {
  const int n = static_cast<int>(b.dim.x * b.dim.y * b.dim.z);
  b.threads.resize(static_cast<size_t>(n));
  b.workers.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    Thread& t = b.threads[i];
    t.lane.linear = i;
    t.lane.thread_idx = uint3{static_cast<unsigned>(i) % b.dim.x, static_cast<unsigned>(i) / b.dim.x % b.dim.y,
                              static_cast<unsigned>(i) / (b.dim.x * b.dim.y)};
  }
}

void run_block(Block& b) {
  const int n = static_cast<int>(b.threads.size());
  b.workers.clear();  // the last block's workers have all returned
  for (Thread& t : b.threads) {
    t.state = State::NotStarted;
    t.worker = nullptr;
    t.open.clear();
    t.groups.clear();
  }
  b.started = 0;
  b.declared.clear();
  std::fill(b.dynamic.begin(), b.dynamic.end(), static_cast<unsigned char>(0xff));
  // A warp at a time (in run order), through its collectives until each of
  // its threads waits at __syncthreads or has finished: its collectives
  // complete without a pass over the whole block, and a read of another
  // warp's data that only a barrier would order comes before that warp
  // runs (any order of the warps between two barriers is one a GPU may run).
  for (;;) {
    for (int k = 0; k < n; k += 32) {
      const int first = run_order(b, k) / 32 * 32, lanes = std::min(32, n - first);
      do {
        for (int l = 0; l < lanes; ++l) {
          Thread& t = b.threads[static_cast<size_t>(first + (reverse_order() ? lanes - 1 - l : l))];
          if (t.state == State::NotStarted) {
            start_worker(b);
          } else if (t.state == State::Runnable) {
            b.current = &t;
            t.worker->context = std::move(t.worker->context).resume();
          }
          if (!b.error.empty()) return;
        }
      } while (release_warp(b, first / 32));
      if (!b.error.empty()) return;
    }
    // Each thread now waits at __syncthreads or at a collective its warp cannot complete, or has finished.
    bool live = false, all_at_barrier = true;
    for (const Thread& t : b.threads) {
      if (t.state == State::Done) continue;
      live = true;
      all_at_barrier = all_at_barrier && t.state == State::AtBarrier;
    }
    if (!live) return;
    if (all_at_barrier) {
      for (Thread& t : b.threads)
        if (t.state == State::AtBarrier) t.state = State::Runnable;
      continue;
    }
    record(b, nullptr, "deadlock: threads wait at different barriers" + describe_wait(b));
    return;
  }
}

void perform(const std::vector<Copy>& group) {
  for (const Copy& c : group) {
    std::memcpy(c.dst, c.src, static_cast<size_t>(c.src_bytes));
    std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, static_cast<size_t>(c.bytes - c.src_bytes));
  }
}

}  // namespace

Lane& self() { return running->current->lane; }
const uint3& block_idx() { return running->index; }
const dim3& block_dim() { return running->dim; }
const dim3& grid_dim() { return running->grid; }

void block_barrier() { suspend(State::AtBarrier); }

void warp_collective(unsigned mask, const char* kind, void* args, WarpOp op) {
  Thread* f = running->current;
  f->mask = mask;
  f->kind = kind;
  f->args = args;
  f->op = op;
  if (!(mask >> (f->lane.linear % 32) & 1u)) {
    record(*running, f, std::string(kind) + " with a mask that leaves out the calling lane");
    suspend(State::Done);
  }
  suspend(State::AtWarp);
}

unsigned char* dynamic_shared() { return running->dynamic.data(); }

void shared_declared(void* p, size_t bytes) {
  if (running->declared.insert(p).second) std::memset(p, 0xff, bytes);
}

void cp_async(void* dst, const void* src, int bytes, int src_bytes) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % 16 != 0))
    fail_kernel("cp.async of 16 bytes from or to an address not 16-byte aligned");
  running->current->open.push_back(Copy{dst, src, bytes, src_bytes});
}

void cp_async_commit() {
  Thread* f = running->current;
  f->groups.push_back(std::move(f->open));
  f->open.clear();
}

void cp_async_wait(int pending) {
  Thread* f = running->current;
  while (static_cast<int>(f->groups.size()) > pending) {
    perform(f->groups.front());
    f->groups.erase(f->groups.begin());
  }
}

void fail_kernel(const char* what) {
  Block& b = *running;
  record(b, b.current, what);
  // From a running thread (not from a warp operation, which the scheduler
  // runs for lanes at a collective): it stops here; the scheduler sees the
  // error and ends the launch.
  if (b.current && b.current->state == State::Runnable) suspend(State::Done);
}

namespace {

// A launch that failed: its report on stderr and for last_launch_failure, its error for cudaGetLastError.
void launch_failed(cudaError_t error, const std::string& report) {
  last_failure = report;
  std::fprintf(stderr, "CUDA emulator: %s\n", report.c_str());
  last_error = error;
}

}  // namespace

const char* last_launch_failure() { return last_failure.c_str(); }

namespace {

// A segmentation fault while a kernel runs: the kernel, block and thread,
// and the address, then the default action (the process dies of SIGSEGV).
// Device allocations end at an inaccessible page (cudaMalloc below), so this
// is an access past the end of one, to freed device memory, or through a
// wild pointer: what compute-sanitizer's memcheck reports on a GPU. Outside
// a kernel the fault is left to the default action alone.
void report_fault(int, siginfo_t* info, void*) {
  if (running != nullptr) {
    char message[512];
    const int n = std::snprintf(message, sizeof(message),
                                "CUDA emulator: %s, %s: invalid memory access at %p (past the end of a device "
                                "allocation, freed device memory, or a wild pointer)\n",
                                running->kernel, where(*running, running->current).c_str(), info->si_addr);
    if (n > 0) (void)!write(STDERR_FILENO, message, static_cast<size_t>(std::min<int>(n, sizeof(message) - 1)));
  }
  signal(SIGSEGV, SIG_DFL);  // returning re-runs the access, which now ends the process
}

// The handler runs on a stack of its own (a fiber's may be what overflowed).
void catch_faults() {
  static std::once_flag installed;
  std::call_once(installed, [] {
    struct sigaction action {};
    action.sa_sigaction = &report_fault;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, nullptr);
  });
  thread_local bool alternate_stack = [] {
    static constexpr size_t kBytes = 64u << 10;
    stack_t s{};
    s.ss_sp = new char[kBytes];
    s.ss_size = kBytes;
    return sigaltstack(&s, nullptr) == 0;
  }();
  (void)alternate_stack;
}

}  // namespace

void run_grid(const LaunchConfig& config, const void* kernel, const char* name, void (*body)(void*), void* context) {
  last_failure.clear();
  const size_t threads = static_cast<size_t>(config.block.x) * config.block.y * config.block.z;
  size_t shared_limit = kDefaultSharedBytes;
  {
    std::lock_guard<std::mutex> lock(optin_mutex);
    auto it = shared_optin.find(kernel);
    if (it != shared_optin.end()) shared_limit = std::max(shared_limit, static_cast<size_t>(it->second));
  }
  const uint64_t blocks = static_cast<uint64_t>(config.grid.x) * config.grid.y * config.grid.z;
  if (threads == 0 || threads > kMaxThreads || blocks == 0 || config.grid.y > 65535 || config.grid.z > 65535) {
    char report[200];
    std::snprintf(report, sizeof(report),
                  "%s launched with grid (%u,%u,%u) and block (%u,%u,%u): invalid configuration", name,
                  config.grid.x, config.grid.y, config.grid.z, config.block.x, config.block.y, config.block.z);
    launch_failed(cudaErrorInvalidConfiguration, report);
    return;
  }
  if (config.shared > shared_limit) {
    char report[200];
    std::snprintf(report, sizeof(report),
                  "%s asks for %zu bytes of dynamic shared memory, above its limit of %zu "
                  "(48 KiB unless cudaFuncSetAttribute raised it)",
                  name, config.shared, shared_limit);
    launch_failed(cudaErrorInvalidValue, report);
    return;
  }
  catch_faults();
  std::lock_guard<std::mutex> lock(launch_mutex);
  Block b;
  b.dim = config.block;
  b.grid = config.grid;
  b.kernel = name;
  b.body = body;
  b.context = context;
  b.dynamic.resize(config.shared);
  make_threads(b);
  running = &b;
  // Blocks in order, or from the last to the first with the threads: a block
  // that reads what another block of the launch writes sees it in one order
  // and not in the other.
  const uint3 g{config.grid.x, config.grid.y, config.grid.z};
  for (uint64_t k = 0; k < blocks && b.error.empty(); ++k) {
    const uint64_t i = reverse_order() ? blocks - 1 - k : k;
    b.index = uint3{static_cast<unsigned>(i % g.x), static_cast<unsigned>(i / g.x % g.y),
                    static_cast<unsigned>(i / (static_cast<uint64_t>(g.x) * g.y))};
    run_block(b);
  }
  running = nullptr;
  if (!b.error.empty()) launch_failed(cudaErrorLaunchFailure, b.error);
}

}  // namespace deco_emu

// ---------------------------------------------------------------- the runtime API
namespace {

struct Event {
  std::chrono::steady_clock::time_point at{};
  bool recorded = false;
};
struct Stream {};

std::mutex memory_mutex;
struct DeviceAllocation {
  void* base;     // the mapping: the data's pages, then the guard page
  size_t mapped;  // its length
  size_t bytes;   // what the allocation counts for
};
std::unordered_map<void*, DeviceAllocation> device_allocations;
size_t device_bytes = 0;
constexpr size_t kDeviceMemory = size_t{16} << 30;  // what the emulated device reports

// DECO_CUDA_EMULATOR_DEVICES=N (1 to 8, default 1) emulated devices, all
// over the same host memory: N ranks of one machine then select N devices,
// as deco's multi-GPU runs ask (one GPU per rank).
int emulated_devices() {
  static const int count = [] {
    const char* v = std::getenv("DECO_CUDA_EMULATOR_DEVICES");
    const int n = v && *v ? std::atoi(v) : 1;
    if (n < 1 || n > 8) {
      std::fprintf(stderr, "CUDA emulator: DECO_CUDA_EMULATOR_DEVICES=%s: give a number of devices from 1 to 8\n", v);
      std::exit(2);
    }
    return n;
  }();
  return count;
}
bool valid_device(int device) { return device >= 0 && device < emulated_devices(); }
int current_device = 0;  // cudaSetDevice's, for the whole process

cudaError_t fail(cudaError_t e) {
  deco_emu::last_error = e;
  return e;
}

}  // namespace

extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = deco_emu::last_error;
  deco_emu::last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return deco_emu::last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    default: return "cudaError";
  }
}
const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorLaunchFailure: return "unspecified launch failure (the CUDA emulator's message is above)";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    default: return "CUDA error (emulated)";
  }
}

// Each allocation ends within 15 bytes of an inaccessible page, so an
// access past its end faults where it happens (report_fault names the
// kernel), and cudaFree unmaps it, so a use after the free faults too. To
// end there it is aligned to 16 bytes (what deco's vector loads need), not
// to cudaMalloc's 256, unless its size is a multiple of 256. With
// DECO_CUDA_NO_MEMORY_CACHING=1 deco allocates each block by itself, of the
// bytes it asked for, and these bounds are each block's.
cudaError_t cudaMalloc(void** ptr, size_t size) {
  const size_t bytes = (std::max<size_t>(size, 1) + 15) / 16 * 16;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t data = (bytes + page - 1) / page * page;
  std::lock_guard<std::mutex> lock(memory_mutex);
  if (device_bytes + bytes > kDeviceMemory) return fail(cudaErrorMemoryAllocation);
  void* base = mmap(nullptr, data + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return fail(cudaErrorMemoryAllocation);
  char* guard = static_cast<char*>(base) + data;
  mprotect(guard, page, PROT_NONE);
  void* p = guard - bytes;
  std::memset(p, 0xff, bytes);  // fresh device memory is not zero on a GPU either
  device_allocations[p] = DeviceAllocation{base, data + page, bytes};
  device_bytes += bytes;
  *ptr = p;
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  if (!ptr) return cudaSuccess;
  std::lock_guard<std::mutex> lock(memory_mutex);
  auto it = device_allocations.find(ptr);
  if (it == device_allocations.end()) return fail(cudaErrorInvalidValue);
  device_bytes -= it->second.bytes;
  munmap(it->second.base, it->second.mapped);
  device_allocations.erase(it);
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** ptr, size_t size) {
  *ptr = std::malloc(std::max<size_t>(size, 1));
  return *ptr ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaFreeHost(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  std::lock_guard<std::mutex> lock(memory_mutex);
  *free = kDeviceMemory - device_bytes;
  *total = kDeviceMemory;
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind) {
  if (count) std::memmove(dst, src, count);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, count, kind);
}
cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  if (count) std::memset(ptr, value, count);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t) { return cudaMemset(ptr, value, count); }

cudaError_t cudaGetDeviceCount(int* count) {
  *count = emulated_devices();
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = current_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (!valid_device(device)) return fail(cudaErrorInvalidDevice);
  current_device = device;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* prop, int device) {
  if (!valid_device(device)) return fail(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  prop->pciDeviceID = device;
  std::snprintf(prop->name, sizeof(prop->name), "deco CUDA emulator (CPU, sm_90 rules)");
  prop->major = 9;
  prop->minor = 0;
  prop->totalGlobalMem = kDeviceMemory;
  prop->multiProcessorCount = 1;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = static_cast<int>(deco_emu::kMaxThreads);
  prop->sharedMemPerBlock = deco_emu::kDefaultSharedBytes;
  prop->sharedMemPerBlockOptin = deco_emu::kOptinSharedBytes;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  if (!valid_device(device)) return fail(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(deco_emu::kOptinSharedBytes); break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(deco_emu::kDefaultSharedBytes); break;
    case cudaDevAttrMultiProcessorCount: *value = 1; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    default: return fail(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || static_cast<size_t>(value) > deco_emu::kOptinSharedBytes) return fail(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> lock(deco_emu::optin_mutex);
    deco_emu::shared_optin[func] = value;
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return deco_emu::last_error; }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  *stream = reinterpret_cast<cudaStream_t>(new Stream);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  delete reinterpret_cast<Stream*>(stream);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return deco_emu::last_error; }
cudaError_t cudaStreamQuery(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned int) { return cudaSuccess; }

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = reinterpret_cast<cudaEvent_t>(new Event);
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) { return cudaEventCreate(event); }
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete reinterpret_cast<Event*>(event);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
  auto* e = reinterpret_cast<Event*>(event);
  e->at = std::chrono::steady_clock::now();
  e->recorded = true;
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  const auto* a = reinterpret_cast<const Event*>(start);
  const auto* b = reinterpret_cast<const Event*>(end);
  if (!a->recorded || !b->recorded) return fail(cudaErrorInvalidValue);
  *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
  return cudaSuccess;
}

}  // extern "C"
