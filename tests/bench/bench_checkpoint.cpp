// Checkpoint throughput: saves and loads the weights and AdamW moments of a
// config (configs/deco-0.1b.yaml: ~222M parameters, 2.7 GB) and compares the
// write bandwidth with a plain sequential write of as many bytes
// (dd bs=16M conv=fsync) on the same filesystem, rounds alternating.
// Run through scripts/bench_checkpoint.sh.
//
//   deco_bench_checkpoint --config F --dir D [--rounds N]
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "model/params.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/weights_io.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Values with every mantissa bit in use, so nothing compresses or repeats.
void fill(const deco::ParamStore& store, uint64_t seed) {
  float* p = store.flat().data<float>();
  const int64_t n = store.flat().numel();
  uint64_t x = deco::mix64(seed);
  for (int64_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[i] = static_cast<float>(static_cast<int64_t>(x >> 40) - (int64_t{1} << 23)) * 1e-9f;
  }
}

// Over the parameters only: the alignment padding between them is not saved.
uint32_t store_crc(const deco::ParamStore& s) {
  uint32_t crc = 0;
  for (const deco::ParamSpec& spec : s.layout().specs()) {
    const deco::Tensor t = s.get(spec);
    crc = crc * 31 + deco::crc32_of(t.raw(), t.nbytes());
  }
  return crc;
}

// Drops the files' clean pages from the page cache, so the load reads the disk.
void evict(const std::string& dir) {
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const int fd = ::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

int64_t mem_available_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return -1;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = "configs/deco-0.1b.yaml", dir;
  int rounds = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--config") config_path = argv[i + 1];
    else if (flag == "--dir") dir = argv[i + 1];
    else if (flag == "--rounds") rounds = std::atoi(argv[i + 1]);
  }
  if (dir.empty() || rounds < 1) {
    std::cerr << "usage: deco_bench_checkpoint --config F --dir D [--rounds N]\n";
    return 2;
  }
  try {
    const deco::Config config = deco::load_config(config_path);
    const deco::ParamLayout layout(config.model);
    const int64_t store_bytes = layout.num_parameters() * 4;
    const int64_t bytes = 3 * store_bytes;
    const double gb = 1e9;

    struct statvfs fsinfo {};
    if (::statvfs(dir.c_str(), &fsinfo) == 0) {
      const double free_bytes = static_cast<double>(fsinfo.f_bavail) * static_cast<double>(fsinfo.f_frsize);
      // Two checkpoints exist while keep_last replaces one; dd's file comes after.
      if (free_bytes < 2.2 * static_cast<double>(bytes)) {
        std::cerr << "error: " << dir << " has " << free_bytes / gb << " GB free; the benchmark "
                  << "needs " << 2.2 * static_cast<double>(bytes) / gb << " GB\n";
        return 1;
      }
    }
    // The stores and the writer's host copy: twice the checkpoint.
    const int64_t available = mem_available_bytes();
    if (available >= 0 && static_cast<double>(available) < 2.3 * static_cast<double>(bytes)) {
      std::cerr << "error: " << available / gb << " GB of memory available; the benchmark needs "
                << 2.3 * static_cast<double>(bytes) / gb << " GB\n";
      return 1;
    }

    std::printf("config: %s, %.1fM parameters x 3 stores (weights, exp_avg, exp_avg_sq) = %.2f GB\n",
                config_path.c_str(), static_cast<double>(layout.num_parameters()) / 1e6,
                static_cast<double>(bytes) / gb);
    deco::ParamStore params(layout, deco::DType::F32, deco::Device::CPU);
    deco::ParamStore exp_avg(layout, deco::DType::F32, deco::Device::CPU);
    deco::ParamStore exp_avg_sq(layout, deco::DType::F32, deco::Device::CPU);
    const std::string save_dir = dir + "/ckpt";
    deco::CheckpointWriter writer(save_dir, 1);

    const int64_t blocks = (bytes + (int64_t{16} << 20) - 1) / (int64_t{16} << 20);
    const std::string dd_file = dir + "/dd.bin";
    const std::string dd = "dd if=/dev/zero of=" + dd_file + " bs=16M count=" +
                           std::to_string(blocks) + " conv=fsync status=none";
    const auto run_dd = [&] {
      ::sync();
      const Clock::time_point start = Clock::now();
      if (std::system(dd.c_str()) != 0) throw deco::Error("dd failed: " + dd);
      const double s = seconds_since(start);
      std::filesystem::remove(dd_file);
      ::sync();
      return s;
    };
    std::vector<double> dd_bw, save_bw, ratio, stall, load_s;
    std::printf("\n%5s %10s %10s %10s %10s %8s %10s %10s %10s\n", "round", "dd MB/s", "stall s",
                "write s", "save MB/s", "% of dd", "load s", "load MB/s", "verified");
    for (int round = 0; round < rounds; ++round) {
      fill(params, 3 * round + 1);
      fill(exp_avg, 3 * round + 2);
      fill(exp_avg_sq, 3 * round + 3);
      const uint32_t crcs[3] = {store_crc(params), store_crc(exp_avg), store_crc(exp_avg_sq)};

      const double dd_before = run_dd();

      deco::TrainingState state;
      state.step = 1000 * (round + 1);
      Clock::time_point start = Clock::now();
      writer.save({&params, &exp_avg, &exp_avg_sq}, state, "model: {}\n");
      const double stall_s = seconds_since(start);
      writer.wait();
      const double write_s = writer.last_write_seconds();
      const int64_t written = writer.last_write_bytes();

      // Loaded back into the same stores, cleared first; cold page cache.
      const std::string step_dir = save_dir + "/" + deco::checkpoint_dir_name(state.step);
      evict(step_dir);
      std::memset(params.flat().raw(), 0, params.flat().nbytes());
      std::memset(exp_avg.flat().raw(), 0, exp_avg.flat().nbytes());
      std::memset(exp_avg_sq.flat().raw(), 0, exp_avg_sq.flat().nbytes());
      start = Clock::now();
      deco::load_checkpoint(step_dir, {&params, &exp_avg, &exp_avg_sq});
      const double load = seconds_since(start);
      const bool same = store_crc(params) == crcs[0] && store_crc(exp_avg) == crcs[1] &&
                        store_crc(exp_avg_sq) == crcs[2];
      // The disk's speed drifts (a shared virtual disk here): the reference
      // is the mean of one dd right before and one right after the save.
      const double dd_s = 0.5 * (dd_before + run_dd());

      const double mb = 1e6;
      dd_bw.push_back(static_cast<double>(blocks << 24) / dd_s / mb);
      save_bw.push_back(static_cast<double>(written) / write_s / mb);
      ratio.push_back(100.0 * save_bw.back() / dd_bw.back());
      stall.push_back(stall_s);
      load_s.push_back(load);
      std::printf("%5d %10.0f %10.3f %10.2f %10.0f %7.0f%% %10.2f %10.0f %10s\n", round + 1,
                  dd_bw.back(), stall_s, write_s, save_bw.back(), ratio.back(), load,
                  static_cast<double>(written) / load / mb, same ? "yes" : "NO");
      if (!same) return 1;
    }
    std::printf("%5s %10.0f %10.3f %10s %10.0f %7.0f%% %10.2f\n", "median", median(dd_bw),
                median(stall), "", median(save_bw), median(ratio), median(load_s));
    struct rusage usage {};
    ::getrusage(RUSAGE_SELF, &usage);
    std::printf("\npeak RSS %.2f GB = stores %.2f GB + writer's host copy %.2f GB + %.3f GB other\n",
                static_cast<double>(usage.ru_maxrss) * 1024 / gb, static_cast<double>(bytes) / gb,
                static_cast<double>(bytes) / gb,
                (static_cast<double>(usage.ru_maxrss) * 1024 - 2.0 * static_cast<double>(bytes)) / gb);
    std::printf("stall: save() copying into the host buffer (round 1 also allocates it); "
                "write: the background thread (checksums, files, fsync, rename, latest)\n");
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
