#include "trainer/data_sources.h"

#include "core/error.h"
#include "data/megatron_data.h"
#include "data/synthetic_corpus.h"

namespace deco {

TrainingData make_training_data(const Config& config, const ProcessGroups& groups) {
  const ModelConfig& m = config.model;
  const TrainingConfig& t = config.training;
  TrainingData data;
  if (config.data.data_path.empty()) {
    auto corpus = [&](Split split) {
      return std::make_unique<SyntheticCorpus>(m.vocab_size, m.seq_length, config.data.synthetic_successors,
                                               config.data.synthetic_repeat_prob, t.seed, split);
    };
    data.train = corpus(Split::Train);
    data.valid = corpus(Split::Valid);
    data.test = corpus(Split::Test);
    data.description = data.train->describe();
    return data;
  }

  MegatronDataOptions options;
  for (const DataPathEntry& e : config.data.data_path) options.data_path.emplace_back(e.weight, e.prefix);
  options.split = config.data.split;
  options.cache_dir = config.data.data_cache_path;
  options.seq_length = m.seq_length;
  options.seed = t.seed;
  // Megatron-LM's requested sizes (docs/data.md).
  const bool evaluates = t.eval_interval > 0 && t.eval_iters > 0;
  options.train_samples = t.train_iters * t.global_batch_size;
  options.valid_samples = evaluates ? (t.train_iters / t.eval_interval + 1) * t.eval_iters * t.global_batch_size : 0;
  options.test_samples = t.eval_iters * t.global_batch_size;
  options.build_indices = groups.layout.rank == 0;
  Communicator* world = groups.world.get();
  options.barrier = [world] { world->barrier(); };
  MegatronDatasets built = build_megatron_datasets(options);

  if (built.max_token >= m.vocab_size)
    fail(built.max_token_file, " holds token id ", built.max_token, ", which is not below model.vocab_size (",
         m.vocab_size, ") of ", config.source, "; set model.vocab_size to at least ", built.max_token + 1,
         " or point data.data_path at a corpus made with this model's tokenizer.");
  if (!built.train)
    fail(config.source, ": data.split ('", config.data.split, "') leaves no training data in data.data_path (",
         built.empty_reason[0], "); give the training split a share.");
  if (evaluates && !built.valid)
    fail(config.source, ": training.eval_interval asks for validation but data.split ('", config.data.split,
         "') leaves the validation split empty (", built.empty_reason[1],
         "); give it a share, such as \"969,30,1\", or set training.eval_interval to 0.");
  data.train = std::move(built.train);
  data.valid = std::move(built.valid);
  data.test = std::move(built.test);
  data.description = built.description;
  return data;
}

}  // namespace deco
