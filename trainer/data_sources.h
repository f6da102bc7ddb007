// The datasets a run reads: the config's Megatron-LM corpora
// (data.data_path), or the built-in synthetic corpus when there are none.
#pragma once

#include <memory>
#include <string>

#include "data/sample_source.h"
#include "parallel/layout.h"
#include "trainer/config.h"

namespace deco {

struct TrainingData {
  std::unique_ptr<SampleSource> train, valid, test;  // valid/test null when the split gives them nothing
  std::string description;                           // for the start-up banner
};

// Builds (rank 0) or loads the sample indices, sized as Megatron-LM sizes
// them: train_iters x global batch samples for training, enough validation
// batches for every evaluation, eval_iters batches for test. Refuses a
// corpus holding a token id >= model.vocab_size, naming the file, and a
// config that evaluates without a validation split.
TrainingData make_training_data(const Config& config, const ProcessGroups& groups);

}  // namespace deco
