// The stage loop: take a batch, run this stage's layers on its slot buffer, then either hand the
// hidden states to the next stage or (last stage) compute logits and sample. A failure travels
// down the pipeline with the batch, so the engine hears about it and keeps serving.
#include "pipeline/stage_worker.h"

#include "ember/error.h"

namespace ember {

StageWorker::StageWorker(int index, std::unique_ptr<Backend> backend, std::unique_ptr<DecoderStage> decoder,
                         int num_slots, int64_t max_tokens, int64_t hidden)
    : index_(index), backend_(std::move(backend)), decoder_(std::move(decoder)), hidden_(hidden) {
  const size_t bytes = static_cast<size_t>(max_tokens * hidden) * dtype_size(decoder_->activation_dtype());
  for (int i = 0; i < num_slots; ++i)
    slots_.push_back(backend_->allocate(bytes, "activation slot " + std::to_string(i) + " of stage " + std::to_string(index)));
}

StageWorker::~StageWorker() { stop(); }

void StageWorker::start(StageWorker* next, std::unique_ptr<Transport> to_next, ResultSink sink) {
  next_ = next;
  to_next_ = std::move(to_next);
  sink_ = std::move(sink);
  thread_ = std::thread([this] { run(); });
}

void StageWorker::stop() {
  inbox_.close();
  if (thread_.joinable()) thread_.join();
}

void StageWorker::run() {
  while (auto work = inbox_.pop()) {
    if (work->error.empty()) {
      try {
        process(*work);
      } catch (const std::exception& e) {
        work->error = "stage " + std::to_string(index_) + " (" + backend_->name() + "): " + e.what();
      }
    }
    if (!work->error.empty() || next_ == nullptr) {
      sink_(std::move(*work));
    } else {
      next_->submit(std::move(*work));
    }
  }
}

void StageWorker::process(StageResult& work) {
  StepBatch& b = *work.batch;
  DeviceStep step = backend_->upload_step(b.meta);
  Tensor x{slots_[b.slot].get(), decoder_->activation_dtype(), {step.num_tokens, hidden_}};
  decoder_->forward(step, x);
  if (next_ != nullptr) {
    to_next_->send(x.data, next_->slot_buffer(b.slot), x.nbytes());
    return;
  }
  Tensor logits = decoder_->compute_logits(step, x);
  backend_->sample(logits, b.sampling, &work.samples);
}

}  // namespace ember
