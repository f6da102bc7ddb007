// Checkpoints: everything a run needs to continue exactly where it stopped.
//
// Layout (docs/checkpoints.md):
//   <save>/step_0001000/          one directory per saved step
//       model.h5                  /model/<name>: float32 master weights, logical shapes
//       optimizer.h5              /exp_avg/<name>, /exp_avg_sq/<name>: AdamW moments
//       state.h5                  training state (step, consumed samples, sparsity
//                                 coefficient, ...), the resolved config, the version
//   <save>/latest                 a text file naming the newest complete step directory
// Every tensor dataset carries a "crc32" attribute of its float32 bytes,
// checked on load. A save writes <save>/step_XXXXXXX.tmp-<pid>/, fsyncs it,
// renames it into place, and only then rewrites `latest` (atomically), so a
// crash at any point leaves the previous checkpoint loadable and named by
// `latest`; keep_last removes older step directories after that.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "model/params.h"
#include "trainer/checkpoint_shards.h"

namespace deco {

// The training state beyond tensors. deco keeps no running random state:
// initialization draws from (seed, parameter name) and the data order is a
// function of (seed, consumed samples), so the seed and the sample count
// restore both exactly.
struct TrainingState {
  int64_t step = 0;               // training steps taken, skipped non-finite ones included
  // AdamW's bias-correction count: the steps whose update was applied (step
  // less the skipped ones). Optional in state.h5 (older checkpoints: -1,
  // read as `step`).
  int64_t optimizer_steps = -1;
  int64_t consumed_samples = 0;   // data loader position
  int64_t evaluations = 0;        // validations run (each reads the next validation batches)
  double reg_coef = 0.0;          // the sparsity coefficient lambda for the next step
  double elapsed_s = 0.0;         // training time so far (for the console's elapsed column)
  uint64_t seed = 0;              // training.seed the run started with
  // model.expert_compute auto: the crossover ratio the run measured when it
  // started (a resumed run keeps it, so it repeats the same path choices);
  // negative when not measured. Optional in state.h5 (older checkpoints).
  double expert_crossover = -1.0;
};

// What one checkpoint holds, as views of the live buffers (or of host copies).
struct CheckpointTensors {
  CheckpointTensors() = default;
  CheckpointTensors(const ParamStore* p, const ParamStore* m, const ParamStore* v)
      : params(p), exp_avg(m), exp_avg_sq(v) {}
  const ParamStore* params = nullptr;      // float32 master weights
  const ParamStore* exp_avg = nullptr;     // AdamW first moment
  const ParamStore* exp_avg_sq = nullptr;  // AdamW second moment
  // Sharded saves take the moments as flat tensors instead: the whole local
  // layout, or the ZeRO-1 shard buffer (ShardPieces::copy_moment).
  Tensor exp_avg_flat, exp_avg_sq_flat;
};

// How a rank of a multi-process run whose ranks hold different parts of the
// model or optimizer (expert parallel, ZeRO-1) takes part in a save: every
// writing rank puts its rank file into the step's temporary directory
// (<save>/step_XXXXXXX.tmp-<job_id>, on a filesystem all ranks share) and
// marks it done; rank 0 writes state.h5, waits for every writer's mark,
// then publishes the directory and `latest` as in a single-process save.
// The writer threads never communicate through MPI.
struct ShardedSave {
  ShardContext context;          // what this rank writes
  const ParamLayout* layout = nullptr;  // this rank's local layout
  std::string job_id;            // identical on every rank (rank 0's pid)
  std::vector<int64_t> writers;  // ranks that write a rank file
  double timeout_s = 600;        // how long rank 0 waits for the others' files
};

// "step_0001000"
std::string checkpoint_dir_name(int64_t step);

// Saves checkpoints on a background thread. save() copies the tensors into
// host memory (waiting first for the previous save to finish), returns, and
// the thread writes the copy while training continues. wait() blocks until
// the last save is complete and rethrows its error, if any.
class CheckpointWriter {
 public:
  CheckpointWriter(std::string save_dir, int64_t keep_last);
  CheckpointWriter(std::string save_dir, int64_t keep_last, ShardedSave sharded);
  ~CheckpointWriter();  // waits for a save in progress (errors are reported, not thrown)
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  void save(const CheckpointTensors& tensors, const TrainingState& state, const std::string& config_yaml);
  void wait();
  // Seconds the last completed save took on the background thread, and its bytes.
  double last_write_seconds() const;
  int64_t last_write_bytes() const;

 private:
  struct Job;
  void run(std::shared_ptr<Job> job);
  void join();  // waits for the worker, leaving its error in error_

  std::string save_dir_;
  int64_t keep_last_;
  std::unique_ptr<ShardedSave> sharded_;
  std::unique_ptr<ShardPieces> pieces_;
  std::thread worker_;
  // The host copy the worker writes from; kept between saves so that only
  // the first save allocates (and page-faults) it.
  std::shared_ptr<Job> job_;
  mutable std::mutex mutex_;  // guards error_ and the last_* figures the worker sets
  std::exception_ptr error_;
  double last_seconds_ = 0.0;
  int64_t last_bytes_ = 0;
};

// The checkpoint directory checkpoint.load names: "auto" is <save>/latest's
// target when it exists ("" otherwise: start fresh), anything else a path
// to a step directory (or to a save directory, whose `latest` is followed).
// Throws deco::Error when an explicit path is not a checkpoint.
std::string resolve_checkpoint(const std::string& load, const std::string& save_dir);

struct LoadedCheckpoint {
  TrainingState state;
  std::string config_yaml;  // the resolved config the run was saved with
  std::string version;      // deco's version that wrote it
};

// Reads a checkpoint into the stores (any of them may be null to skip it),
// verifying names, shapes and checksums first; every problem is one
// deco::Error naming the file and the tensor.
LoadedCheckpoint load_checkpoint(const std::string& dir, const CheckpointTensors& into);

// The same for a rank whose layout holds part of the model or optimizer, or
// for any checkpoint written by such ranks: reads the pieces this rank
// needs (load_pieces) from either kind of checkpoint. The moments are flat
// tensors (CheckpointTensors::exp_avg_flat); null pointers skip a target.
LoadedCheckpoint load_checkpoint_pieces(const std::string& dir, const ParamLayout& local,
                                        const ShardContext& context, const ParamStore* params,
                                        const Tensor* exp_avg, const Tensor* exp_avg_sq);
// Whether a step directory was written by ranks holding parts (rank files).
bool is_sharded_checkpoint(const std::string& dir);

}  // namespace deco
