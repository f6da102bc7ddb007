// Checkpoints (checkpoint.h, docs/checkpoints.md): the directory protocol
// that makes a save atomic, the background writer, and verified loading.
//
// A save, on the writer's thread:
//   1. remove what killed saves left (<save>/*.tmp-<pid> of dead processes);
//   2. write model.h5, optimizer.h5 and state.h5 into
//      <save>/step_XXXXXXX.tmp-<pid>/, each fsynced, then fsync the directory;
//   3. rename it to <save>/step_XXXXXXX and fsync <save>;
//   4. rewrite <save>/latest atomically (write_file_atomic);
//   5. keep_last: older step directories are renamed to a .tmp-<pid> name
//      and removed.
// Until 3 the new directory has a name nothing reads; until 4 `latest` names
// the previous checkpoint, which nothing before 5 touches. A kill at any
// point therefore leaves `latest` naming a complete checkpoint.
#include "trainer/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>
#include <utility>

#include "core/error.h"
#include "core/file_io.h"
#include "trainer/weights_io.h"

namespace deco {
namespace {

namespace fs = std::filesystem;

constexpr const char* kModelFile = "model.h5";
constexpr const char* kOptimizerFile = "optimizer.h5";
constexpr const char* kStateFile = "state.h5";
constexpr const char* kLatest = "latest";
constexpr const char* kTmpMarker = ".tmp-";
constexpr const char* kResumeFix = "resume from an earlier checkpoint";

std::string join(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

// The step of a directory named "step_<digits>", or -1 (temporaries too).
int64_t step_of(const std::string& name) {
  const std::string prefix = "step_";
  if (name.compare(0, prefix.size(), prefix) != 0 || name.size() == prefix.size() ||
      name.size() > prefix.size() + 18)
    return -1;
  int64_t step = 0;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

// The pid in "<name>.tmp-<pid>", or 0 when the name is not a temporary.
pid_t tmp_owner(const std::string& name) {
  const size_t at = name.rfind(kTmpMarker);
  if (at == std::string::npos) return 0;
  const std::string digits = name.substr(at + std::strlen(kTmpMarker));
  if (digits.empty() || digits.size() > 9 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return 0;
  return static_cast<pid_t>(std::stol(digits));
}

std::string base_name(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool process_alive(pid_t pid) { return ::kill(pid, 0) == 0 || errno == EPERM; }

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return names;
  while (const dirent* entry = ::readdir(d)) {
    const std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(d);
  return names;
}

bool remove_tree(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  return !ec;
}

// Makes the directory's entries (new files, a rename) durable. Filesystems
// that cannot fsync a directory say EINVAL; their renames are as durable as
// they get.
void sync_dir(const std::string& dir, const char* context) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail(context, ": cannot open ", dir, " to flush it: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL && err != ENOTSUP)
    fail(context, ": flushing directory ", dir, " failed: ", std::strerror(err));
}

std::string read_small_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string trim(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t\r\n") - begin + 1);
}

// The step directory <dir>/latest names, checked to exist.
std::string follow_latest(const std::string& dir) {
  const std::string latest = join(dir, kLatest);
  const std::string name = trim(read_small_file(latest));
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == ".." ||
      tmp_owner(name) != 0)
    fail(latest, " does not name a checkpoint directory (it holds '", name.substr(0, 80),
         "'); write the name of a step directory such as step_0001000 into it, or set "
         "checkpoint.load to a step directory");
  const std::string target = join(dir, name);
  if (!is_directory(target))
    fail(latest, " names ", name, ", but ", target, " does not exist; set checkpoint.load to an "
         "existing step directory of ", dir);
  return target;
}

// What `latest` says now, for messages about a failed save.
std::string previous_note(const std::string& save_dir) {
  const std::string latest = join(save_dir, kLatest);
  if (!exists(latest)) return "no earlier checkpoint exists in " + save_dir;
  return latest + " still names " + trim(read_small_file(latest)) + ", which is intact";
}

// Removes temporaries that killed or failed saves left: <save>/*.tmp-<pid>
// whose process is gone, and with `own` this process's (its own earlier
// failures). A live process's temporary is another run writing into the
// same directory now.
void remove_leftovers(const std::string& save_dir, bool own) {
  for (const std::string& name : list_dir(save_dir)) {
    const pid_t pid = tmp_owner(name);
    const bool mine = pid == ::getpid();
    if (pid == 0 || (mine && !own) || (!mine && process_alive(pid))) continue;
    remove_tree(join(save_dir, name));
  }
}

// Moves the finished temporary directory to its final name. A directory of
// the same step can exist (a run resumed from an earlier checkpoint reached
// this step again); it is swapped out atomically, so `latest` never names a
// missing directory, and removed.
void publish(const std::string& tmp, const std::string& final_dir) {
  if (::rename(tmp.c_str(), final_dir.c_str()) == 0) return;
  if (errno != EEXIST && errno != ENOTEMPTY)
    fail("renaming ", tmp, " to ", final_dir, " failed: ", std::strerror(errno));
#ifdef RENAME_EXCHANGE
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
    remove_tree(tmp);  // now the old directory
    return;
  }
#endif
  // No atomic exchange on this filesystem: move the old one aside first.
  const std::string aside = final_dir + ".old" + kTmpMarker + std::to_string(::getpid());
  remove_tree(aside);
  if (::rename(final_dir.c_str(), aside.c_str()) != 0 || ::rename(tmp.c_str(), final_dir.c_str()) != 0)
    fail("replacing ", final_dir, " with ", tmp, " failed: ", std::strerror(errno));
  remove_tree(aside);
}

// keep_last: after a save of `step`, keeps it and the keep_last - 1 newest
// step directories below it. Directories of later steps (left by a run this
// one resumed before) are not counted and not touched.
void prune(const std::string& save_dir, int64_t step, int64_t keep_last) {
  std::vector<std::pair<int64_t, std::string>> older;
  for (const std::string& name : list_dir(save_dir)) {
    const int64_t s = step_of(name);
    if (s >= 0 && s < step && is_directory(join(save_dir, name))) older.emplace_back(s, name);
  }
  std::sort(older.rbegin(), older.rend());
  for (size_t i = static_cast<size_t>(keep_last - 1); i < older.size(); ++i) {
    // Renamed first, so that a kill halfway through the removal leaves a
    // temporary the next save cleans up, not a step directory missing files.
    const std::string dir = join(save_dir, older[i].second);
    const std::string doomed = dir + kTmpMarker + std::to_string(::getpid());
    if (::rename(dir.c_str(), doomed.c_str()) != 0 || !remove_tree(doomed))
      std::cerr << "warning: checkpoint.keep_last: cannot remove " << dir << ": "
                << std::strerror(errno) << "\n";
  }
}

bool same_layout(const ParamLayout& a, const ParamLayout& b) {
  if (&a == &b) return true;
  if (a.total_numel() != b.total_numel() || a.specs().size() != b.specs().size()) return false;
  for (size_t i = 0; i < a.specs().size(); ++i) {
    const ParamSpec &x = a.specs()[i], &y = b.specs()[i];
    if (x.name != y.name || x.shape != y.shape || x.offset != y.offset) return false;
  }
  return true;
}

// Copies a live store into the float32 host copy the worker writes from.
void snapshot(const ParamStore& src, const ParamStore& dst) {
  const Tensor& from = src.flat();
  if (from.dtype() == DType::F32) {
    device_copy(Device::CPU, dst.flat().raw(), from.device(), from.raw(), from.nbytes());
    return;
  }
  for (const ParamSpec& spec : src.layout().specs())
    copy_to_float32(src.get(spec), dst.get(spec).data<float>());
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

// ---------------------------------------------------------------- state.h5 fields

const H5Scalar& field(const std::map<std::string, H5Scalar>& values, const std::string& key,
                      const std::string& path) {
  const auto it = values.find(key);
  if (it == values.end())
    fail(path, " has no /", key, "; the checkpoint's training state is incomplete: ", kResumeFix);
  return it->second;
}

int64_t int_field(const std::map<std::string, H5Scalar>& values, const std::string& key,
                  const std::string& path) {
  const H5Scalar& v = field(values, key, path);
  if (const auto* i = std::get_if<int64_t>(&v)) return *i;
  if (const auto* u = std::get_if<uint64_t>(&v); u && *u <= static_cast<uint64_t>(INT64_MAX))
    return static_cast<int64_t>(*u);
  fail(path, ": /", key, " is not an integer; the training state is damaged: ", kResumeFix);
}

uint64_t uint_field(const std::map<std::string, H5Scalar>& values, const std::string& key,
                    const std::string& path) {
  const H5Scalar& v = field(values, key, path);
  if (const auto* u = std::get_if<uint64_t>(&v)) return *u;
  if (const auto* i = std::get_if<int64_t>(&v); i && *i >= 0) return static_cast<uint64_t>(*i);
  fail(path, ": /", key, " is not a non-negative integer; the training state is damaged: ",
       kResumeFix);
}

double real_field(const std::map<std::string, H5Scalar>& values, const std::string& key,
                  const std::string& path) {
  const H5Scalar& v = field(values, key, path);
  if (const auto* d = std::get_if<double>(&v)) return *d;
  fail(path, ": /", key, " is not a floating-point number; the training state is damaged: ",
       kResumeFix);
}

std::string text_field(const std::map<std::string, H5Scalar>& values, const std::string& key,
                       const std::string& path) {
  const H5Scalar& v = field(values, key, path);
  if (const auto* s = std::get_if<std::string>(&v)) return *s;
  fail(path, ": /", key, " is not a string; the training state is damaged: ", kResumeFix);
}

}  // namespace

std::string checkpoint_dir_name(int64_t step) {
  DECO_ASSERT(step >= 0, "checkpoint of step ", step);
  char name[40];
  std::snprintf(name, sizeof name, "step_%07lld", static_cast<long long>(step));
  return name;
}

// ---------------------------------------------------------------- the writer

struct CheckpointWriter::Job {
  // The layout is copied: the host copy must not depend on how long the
  // live model lives.
  std::shared_ptr<const ParamLayout> layout;
  std::unique_ptr<ParamStore> params, exp_avg, exp_avg_sq;  // float32, host
  // A sharded save: the pieces this rank writes (ShardPieces' layouts).
  std::unique_ptr<ParamStore> model_pieces, exp_avg_pieces, exp_avg_sq_pieces;
  bool with_optimizer = false;
  TrainingState state;
  std::string config_yaml;
};

namespace {

// Creates checkpoint.save if missing; `name` is the step being saved, for the message.
void make_save_dir(const std::string& save_dir, const std::string& name) {
  std::error_code ec;
  fs::create_directories(save_dir, ec);
  if (ec || !is_directory(save_dir))
    fail("checkpoint ", name, " was not saved: cannot create the directory ", save_dir, " (",
         ec ? ec.message() : "a file is in the way", "); check checkpoint.save");
}

std::map<std::string, H5Scalar> state_values(const TrainingState& state, const std::string& config_yaml) {
  return {
      {"step", state.step},
      {"optimizer_steps", state.optimizer_steps >= 0 ? state.optimizer_steps : state.step},
      {"consumed_samples", state.consumed_samples},
      {"evaluations", state.evaluations},
      {"reg_coef", state.reg_coef},
      {"elapsed_s", state.elapsed_s},
      {"seed", state.seed},
      {"expert_crossover", state.expert_crossover},
      {"config", config_yaml},
      {"version", std::string(DECO_VERSION)},
      {"saved_at", utc_now()},
  };
}

std::string rank_file_name(int64_t rank) {
  char name[32];
  std::snprintf(name, sizeof name, "rank_%05lld.h5", static_cast<long long>(rank));
  return name;
}

// Steps 1-5 of the file comment; returns the bytes written.
int64_t write_checkpoint(const std::string& save_dir, int64_t keep_last, const TrainingState& state,
                         const std::string& config_yaml, const ParamStore& params,
                         const ParamStore* exp_avg, const ParamStore* exp_avg_sq) {
  const std::string name = checkpoint_dir_name(state.step);
  make_save_dir(save_dir, name);
  remove_leftovers(save_dir, /*own=*/true);

  const std::string final_dir = join(save_dir, name);
  const std::string tmp = final_dir + kTmpMarker + std::to_string(::getpid());
  int64_t bytes = 0;
  try {
    if (::mkdir(tmp.c_str(), 0777) != 0)
      fail("cannot create ", tmp, ": ", std::strerror(errno));
    const std::map<std::string, std::string> provenance = {
        {"deco_version", DECO_VERSION}, {"step", std::to_string(state.step)}};
    bytes += save_stores_h5(join(tmp, kModelFile), {{"model", &params}}, provenance,
                            WriteMode::Create);
    if (exp_avg != nullptr)
      bytes += save_stores_h5(join(tmp, kOptimizerFile),
                              {{"exp_avg", exp_avg}, {"exp_avg_sq", exp_avg_sq}}, provenance,
                              WriteMode::Create);
    bytes += save_scalars_h5(join(tmp, kStateFile), state_values(state, config_yaml), {}, WriteMode::Create);
    sync_dir(tmp, "saving the checkpoint");
    publish(tmp, final_dir);
    sync_dir(save_dir, "saving the checkpoint");
  } catch (const Error& e) {
    remove_tree(tmp);
    fail("checkpoint ", name, " was not saved: ", e.what(), "; ", previous_note(save_dir));
  } catch (...) {
    remove_tree(tmp);
    throw;
  }
  write_file_atomic(join(save_dir, kLatest), name + "\n");
  if (keep_last > 0) prune(save_dir, state.step, keep_last);
  return bytes;
}

// A sharded save (ShardedSave): this rank's file into the shared temporary
// directory, then, on rank 0, state.h5, the wait for every writer, and the
// single-process protocol's publication. Returns the bytes this rank wrote.
int64_t write_sharded_checkpoint(const std::string& save_dir, int64_t keep_last, const ShardedSave& sharded,
                                 const TrainingState& state, const std::string& config_yaml,
                                 const ParamStore* model, const ParamStore* exp_avg, const ParamStore* exp_avg_sq) {
  const std::string name = checkpoint_dir_name(state.step);
  const bool leader = sharded.context.rank == 0;
  make_save_dir(save_dir, name);
  // Only temporaries of dead jobs: this job's other ranks may already be
  // writing their part of the next step.
  if (leader) remove_leftovers(save_dir, /*own=*/false);
  const std::string final_dir = join(save_dir, name);
  const std::string tmp = final_dir + kTmpMarker + sharded.job_id;
  int64_t bytes = 0;
  const bool writer = (model && !model->layout().specs().empty()) || (exp_avg && !exp_avg->layout().specs().empty());
  // A rank with nothing to write stays out of the directory: a late one
  // would recreate it after the leader has published it.
  if (!leader && !writer) return 0;
  try {
    std::error_code ec;
    fs::create_directories(tmp, ec);
    if (ec) fail("cannot create ", tmp, ": ", ec.message());
    const std::map<std::string, std::string> provenance = {
        {"deco_version", DECO_VERSION}, {"step", std::to_string(state.step)},
        {"rank", std::to_string(sharded.context.rank)}};
    std::vector<StoreGroup> groups;
    if (model && !model->layout().specs().empty()) groups.push_back({"model", model});
    if (exp_avg && !exp_avg->layout().specs().empty()) {
      groups.push_back({"exp_avg", exp_avg});
      groups.push_back({"exp_avg_sq", exp_avg_sq});
    }
    const std::string mine = rank_file_name(sharded.context.rank);
    if (!groups.empty()) {
      bytes += save_stores_h5(join(tmp, mine), groups, provenance, WriteMode::Create);
      write_file_atomic(join(tmp, mine + ".done"), "");
    }
    if (!leader) return bytes;

    std::string files;
    for (int64_t r : sharded.writers) files += rank_file_name(r) + "\n";
    std::map<std::string, H5Scalar> values = state_values(state, config_yaml);
    values["shard_files"] = files;
    bytes += save_scalars_h5(join(tmp, kStateFile), values, {}, WriteMode::Create);
    // Every writer's mark, then the marks go: the published directory holds
    // state.h5 and the rank files only.
    const auto start = std::chrono::steady_clock::now();
    for (int64_t r : sharded.writers) {
      const std::string mark = join(tmp, rank_file_name(r) + ".done");
      while (!exists(mark)) {
        const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (sharded.timeout_s > 0 && waited > sharded.timeout_s)
          fail("rank ", r, " did not finish its part (", rank_file_name(r), ") within ", waited,
               " s; check that checkpoint.save is on a filesystem every rank shares");
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
    for (int64_t r : sharded.writers) ::unlink(join(tmp, rank_file_name(r) + ".done").c_str());
    sync_dir(tmp, "saving the checkpoint");
    publish(tmp, final_dir);
    sync_dir(save_dir, "saving the checkpoint");
  } catch (const Error& e) {
    if (leader) remove_tree(tmp);
    fail("checkpoint ", name, " was not saved: ", e.what(), "; ", previous_note(save_dir));
  }
  write_file_atomic(join(save_dir, kLatest), name + "\n");
  if (keep_last > 0) prune(save_dir, state.step, keep_last);
  return bytes;
}

}  // namespace

CheckpointWriter::CheckpointWriter(std::string save_dir, int64_t keep_last)
    : save_dir_(std::move(save_dir)), keep_last_(keep_last) {
  DECO_ASSERT(!save_dir_.empty(), "CheckpointWriter without a directory");
  DECO_ASSERT(keep_last_ >= 0, "keep_last ", keep_last_);
}

CheckpointWriter::CheckpointWriter(std::string save_dir, int64_t keep_last, ShardedSave sharded)
    : CheckpointWriter(std::move(save_dir), keep_last) {
  DECO_ASSERT(sharded.layout != nullptr, "a sharded save needs the rank's layout");
  sharded_ = std::make_unique<ShardedSave>(std::move(sharded));
  pieces_ = std::make_unique<ShardPieces>(*sharded_->layout, sharded_->context);
}

CheckpointWriter::~CheckpointWriter() {
  join();
  if (!error_) return;
  try {
    std::rethrow_exception(error_);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
  } catch (...) {
    std::cerr << "error: saving a checkpoint failed\n";
  }
}

void CheckpointWriter::join() {
  if (worker_.joinable()) worker_.join();
}

void CheckpointWriter::save(const CheckpointTensors& tensors, const TrainingState& state,
                            const std::string& config_yaml) {
  wait();  // the previous save: finished, and its error (if any) thrown here
  DECO_ASSERT(tensors.params != nullptr, "a checkpoint needs the parameters");
  if (sharded_) {
    DECO_ASSERT(tensors.exp_avg_flat.defined() && tensors.exp_avg_sq_flat.defined(),
                "a sharded save takes the moments as flat tensors");
    if (!job_) {
      auto job = std::make_shared<Job>();
      job->model_pieces = std::make_unique<ParamStore>(pieces_->model_layout(), DType::F32, Device::CPU);
      job->exp_avg_pieces = std::make_unique<ParamStore>(pieces_->moment_layout(), DType::F32, Device::CPU);
      job->exp_avg_sq_pieces = std::make_unique<ParamStore>(pieces_->moment_layout(), DType::F32, Device::CPU);
      job_ = std::move(job);
    }
    pieces_->copy_model(*tensors.params, *job_->model_pieces);
    pieces_->copy_moment(tensors.exp_avg_flat, *job_->exp_avg_pieces);
    pieces_->copy_moment(tensors.exp_avg_sq_flat, *job_->exp_avg_sq_pieces);
    job_->with_optimizer = true;
    job_->state = state;
    job_->config_yaml = config_yaml;
    worker_ = std::thread(&CheckpointWriter::run, this, job_);
    return;
  }
  DECO_ASSERT((tensors.exp_avg == nullptr) == (tensors.exp_avg_sq == nullptr),
              "a checkpoint holds both AdamW moments or neither");
  const ParamLayout& layout = tensors.params->layout();
  const bool with_optimizer = tensors.exp_avg != nullptr;
  if (with_optimizer)
    DECO_ASSERT(same_layout(tensors.exp_avg->layout(), layout) &&
                    same_layout(tensors.exp_avg_sq->layout(), layout),
                "AdamW moments with another layout than the parameters");

  if (!job_ || !same_layout(*job_->layout, layout) || (with_optimizer && !job_->exp_avg)) {
    job_.reset();  // the old copy goes before the new one is allocated
    auto job = std::make_shared<Job>();
    job->layout = std::make_shared<const ParamLayout>(layout);
    job->params = std::make_unique<ParamStore>(*job->layout, DType::F32, Device::CPU);
    if (with_optimizer) {
      job->exp_avg = std::make_unique<ParamStore>(*job->layout, DType::F32, Device::CPU);
      job->exp_avg_sq = std::make_unique<ParamStore>(*job->layout, DType::F32, Device::CPU);
    }
    job_ = std::move(job);
  }
  snapshot(*tensors.params, *job_->params);
  if (with_optimizer) {
    snapshot(*tensors.exp_avg, *job_->exp_avg);
    snapshot(*tensors.exp_avg_sq, *job_->exp_avg_sq);
  }
  job_->with_optimizer = with_optimizer;
  job_->state = state;
  job_->config_yaml = config_yaml;
  worker_ = std::thread(&CheckpointWriter::run, this, job_);
}

void CheckpointWriter::run(std::shared_ptr<Job> job) {
  const auto start = std::chrono::steady_clock::now();
  std::exception_ptr error;
  int64_t bytes = 0;
  try {
    if (sharded_)
      bytes = write_sharded_checkpoint(save_dir_, keep_last_, *sharded_, job->state, job->config_yaml,
                                       job->model_pieces.get(), job->exp_avg_pieces.get(),
                                       job->exp_avg_sq_pieces.get());
    else
      bytes = write_checkpoint(save_dir_, keep_last_, job->state, job->config_yaml, *job->params,
                               job->with_optimizer ? job->exp_avg.get() : nullptr,
                               job->with_optimizer ? job->exp_avg_sq.get() : nullptr);
  } catch (...) {
    error = std::current_exception();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::lock_guard<std::mutex> lock(mutex_);
  if (error) {
    error_ = error;
  } else {
    last_seconds_ = seconds;
    last_bytes_ = bytes;
  }
}

void CheckpointWriter::wait() {
  join();
  std::exception_ptr error;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    error = std::exchange(error_, nullptr);
  }
  if (error) std::rethrow_exception(error);
}

double CheckpointWriter::last_write_seconds() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return last_seconds_;
}

int64_t CheckpointWriter::last_write_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return last_bytes_;
}

// ---------------------------------------------------------------- finding and loading

std::string resolve_checkpoint(const std::string& load, const std::string& save_dir) {
  if (load.empty()) return "";
  if (load == "auto") {
    if (save_dir.empty() || !exists(join(save_dir, kLatest))) return "";
    return follow_latest(save_dir);
  }
  struct stat st {};
  if (::stat(load.c_str(), &st) != 0)
    fail("checkpoint.load: ", load, " does not exist (", std::strerror(errno), "); give a step "
         "directory such as <save>/step_0001000, a save directory with a `latest` file, or auto");
  if (!S_ISDIR(st.st_mode))
    fail("checkpoint.load: ", load, " is a file, not a checkpoint directory; give a step directory "
         "such as <save>/step_0001000 (to start from weights only, pass the file to --load)");
  if (tmp_owner(base_name(load)) != 0)
    fail("checkpoint.load: ", load, " is an unfinished save (a run was stopped while writing it) "
         "and is not a checkpoint; load a complete step directory");
  if (exists(join(load, kLatest))) return follow_latest(load);
  if (exists(join(load, kStateFile)) || exists(join(load, kModelFile))) return load;
  fail("checkpoint.load: ", load, " is not a checkpoint: it has neither ", kStateFile,
       " (a step directory) nor `latest` (a save directory)");
}

bool is_sharded_checkpoint(const std::string& dir) {
  return !exists(join(dir, kModelFile)) && exists(join(dir, kStateFile));
}

LoadedCheckpoint load_checkpoint_pieces(const std::string& dir, const ParamLayout& local,
                                        const ShardContext& context, const ParamStore* params,
                                        const Tensor* exp_avg, const Tensor* exp_avg_sq) {
  LoadedCheckpoint out = load_checkpoint(dir, {});  // the state, and the directory's checks
  std::vector<std::string> model_files, moment_files;
  if (!is_sharded_checkpoint(dir)) {
    model_files = {join(dir, kModelFile)};
    moment_files = {join(dir, kOptimizerFile)};
  } else {
    const std::string state_path = join(dir, kStateFile);
    std::istringstream list(text_field(load_scalars_h5(state_path, kResumeFix), "shard_files", state_path));
    for (std::string name; std::getline(list, name);)
      if (!name.empty()) model_files.push_back(join(dir, name));
    moment_files = model_files;
  }
  for (const auto* files : {&model_files, &moment_files})
    for (const std::string& f : *files)
      if (!exists(f))
        fail("cannot load checkpoint ", dir, ": ", f, " is missing, so the checkpoint is incomplete; ", kResumeFix);
  load_pieces(model_files, moment_files, local, context, params, exp_avg, exp_avg_sq, kResumeFix);
  return out;
}

LoadedCheckpoint load_checkpoint(const std::string& dir, const CheckpointTensors& into) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0)
    fail("cannot load checkpoint ", dir, ": ", std::strerror(errno), "; check checkpoint.load");
  if (!S_ISDIR(st.st_mode))
    fail("cannot load checkpoint ", dir, ": it is not a directory; a checkpoint is a step "
         "directory such as <save>/step_0001000");

  const std::string state_path = join(dir, kStateFile);
  if (!exists(state_path))
    fail("cannot load checkpoint ", dir, ": ", state_path, " is missing, so the checkpoint is "
         "incomplete; ", kResumeFix);
  const std::map<std::string, H5Scalar> values = load_scalars_h5(state_path, kResumeFix);
  LoadedCheckpoint out;
  out.state.step = int_field(values, "step", state_path);
  out.state.consumed_samples = int_field(values, "consumed_samples", state_path);
  out.state.evaluations = int_field(values, "evaluations", state_path);
  out.state.reg_coef = real_field(values, "reg_coef", state_path);
  out.state.elapsed_s = real_field(values, "elapsed_s", state_path);
  out.state.seed = uint_field(values, "seed", state_path);
  if (values.count("optimizer_steps")) out.state.optimizer_steps = int_field(values, "optimizer_steps", state_path);
  if (values.count("expert_crossover")) out.state.expert_crossover = real_field(values, "expert_crossover", state_path);
  out.config_yaml = text_field(values, "config", state_path);
  out.version = text_field(values, "version", state_path);
  if (out.state.step < 0 || out.state.consumed_samples < 0 || out.state.evaluations < 0 ||
      out.state.optimizer_steps > out.state.step)
    fail(state_path, ": negative step or sample count, or more optimizer steps than steps; the training state is damaged: ", kResumeFix);

  std::vector<std::pair<std::string, std::vector<StoreGroup>>> files;
  if (into.params != nullptr) files.push_back({join(dir, kModelFile), {{"model", into.params}}});
  std::vector<StoreGroup> moments;
  if (into.exp_avg != nullptr) moments.push_back({"exp_avg", into.exp_avg});
  if (into.exp_avg_sq != nullptr) moments.push_back({"exp_avg_sq", into.exp_avg_sq});
  if (!moments.empty()) files.push_back({join(dir, kOptimizerFile), moments});
  for (const auto& file : files)
    if (!exists(file.first))
      fail("cannot load checkpoint ", dir, ": ", file.first, " is missing, so the checkpoint is "
           "incomplete; ", kResumeFix);
  // Every file is checked whole before any store changes: a damaged
  // optimizer.h5 must not leave the run with loaded weights and stale moments.
  for (const auto& [path, groups] : files) verify_stores_h5(path, groups, kResumeFix);
  for (const auto& [path, groups] : files) read_stores_h5(path, groups, kResumeFix);
  return out;
}

}  // namespace deco
