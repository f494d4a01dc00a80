// The Python module ember._C: a thin layer over the public C++ API. Long calls (engine start-up,
// waiting for a token) release the GIL so that Python threads and the engine run side by side.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <chrono>
#include <cmath>

#include "ember/engine.h"
#include "ember/error.h"

#ifdef EMBER_HAVE_CUDA
#include "ember/cuda_backend.h"
#endif

#if __has_include("bindings/bench_bindings.h")
#include "bindings/bench_bindings.h"
#define EMBER_BIND_BENCH 1
#endif

#if __has_include("bindings/gguf_bindings.h")
#include "bindings/gguf_bindings.h"
#define EMBER_BIND_GGUF 1
#endif

namespace nb = nanobind;
using namespace nb::literals;

namespace ember {
namespace {

nb::object event_logits(const TokenEvent& ev) {
  if (ev.logits.empty()) return nb::none();
  auto* data = new std::vector<float>(ev.logits);
  nb::capsule owner(data, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
  return nb::cast(nb::ndarray<nb::numpy, float, nb::ndim<1>>(data->data(), {data->size()}, owner));
}

nb::dict config_dict(const ModelConfig& c) {
  nb::dict d;
  d["architecture"] = c.architecture;
  d["vocab_size"] = c.vocab_size;
  d["hidden_size"] = c.hidden_size;
  d["intermediate_size"] = c.intermediate_size;
  d["num_layers"] = c.num_layers;
  d["num_heads"] = c.num_heads;
  d["num_kv_heads"] = c.num_kv_heads;
  d["head_dim"] = c.head_dim;
  d["max_position_embeddings"] = c.max_position_embeddings;
  d["rms_norm_eps"] = c.rms_norm_eps;
  d["rope_theta"] = c.rope_theta;
  d["tie_word_embeddings"] = c.tie_word_embeddings;
  d["attention_bias"] = c.attention_bias;
  d["qk_norm"] = c.qk_norm;
  d["dtype"] = std::string(dtype_name(c.dtype));
  d["eos_token_ids"] = c.eos_token_ids;
  d["bos_token_id"] = c.bos_token_id;
  d["num_parameters"] = c.num_parameters();
  return d;
}

nb::dict stats_dict(const EngineStats& s) {
  nb::dict d;
  d["num_blocks"] = s.num_blocks;
  d["blocks_used"] = s.blocks_used;
  d["blocks_free"] = s.blocks_free;
  d["block_size"] = s.block_size;
  d["running"] = s.running;
  d["waiting"] = s.waiting;
  d["preemptions"] = s.preemptions;
  d["steps"] = s.steps;
  d["prompt_tokens"] = s.prompt_tokens;
  d["generated_tokens"] = s.generated_tokens;
  d["num_stages"] = s.num_stages;
  d["interleave"] = s.interleave;
  d["max_model_len"] = s.max_model_len;
  d["chunk_size"] = s.chunk_size;
  d["edge_chunk_size"] = s.edge_chunk_size;
  nb::list stages;
  for (const StageStats& st : s.stages) {
    nb::dict sd;
    sd["device"] = st.device;
    sd["transport"] = st.transport;
    sd["layers"] = st.layers;
    sd["blocks"] = st.blocks;
    nb::list block_layers;
    for (int64_t n : st.block_layers) block_layers.append(n);
    sd["block_layers"] = block_layers;
    sd["compute_s"] = st.compute_s;
    sd["copy_s"] = st.copy_s;
    sd["batches"] = st.batches;
    sd["weight_bytes"] = st.weight_bytes;
    sd["graphs"] = st.graphs;
    stages.append(sd);
  }
  d["stages"] = stages;
  return d;
}

}  // namespace
}  // namespace ember

NB_MODULE(_C, m) {
  using namespace ember;
  m.doc() = "Ember's C++ engine";

  nb::exception<ModelFormatError>(m, "ModelFormatError", PyExc_ValueError);
  nb::exception<EngineError>(m, "EngineError", PyExc_RuntimeError);
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  nb::class_<EngineOptions>(m, "EngineOptions")
      .def(nb::init<>())
      .def_rw("model_path", &EngineOptions::model_path)
      .def_rw("devices", &EngineOptions::devices)
      .def_rw("layer_split", &EngineOptions::layer_split)
      .def_rw("transport", &EngineOptions::transport)
      .def_rw("interleave", &EngineOptions::interleave)
      .def_rw("batches_in_flight", &EngineOptions::batches_in_flight)
      .def_rw("max_model_len", &EngineOptions::max_model_len)
      .def_rw("kv_cache_tokens", &EngineOptions::kv_cache_tokens)
      .def_rw("kv_memory_fraction", &EngineOptions::kv_memory_fraction)
      .def_rw("block_size", &EngineOptions::block_size)
      .def_rw("max_num_seqs", &EngineOptions::max_num_seqs)
      .def_rw("max_num_batched_tokens", &EngineOptions::max_num_batched_tokens)
      .def_rw("chunk_size", &EngineOptions::chunk_size)
      .def_rw("edge_chunk_size", &EngineOptions::edge_chunk_size)
      .def_rw("num_threads", &EngineOptions::num_threads)
      .def_rw("max_memory", &EngineOptions::max_memory)
      .def_rw("gpu_memory_utilization", &EngineOptions::gpu_memory_utilization)
      .def_rw("use_cuda_graphs", &EngineOptions::use_cuda_graphs)
      .def_rw("profile_stages", &EngineOptions::profile_stages)
      .def_rw("keep_quantized", &EngineOptions::keep_quantized);

  nb::class_<SamplingOptions>(m, "SamplingOptions")
      .def(nb::init<>())
      .def_rw("temperature", &SamplingOptions::temperature)
      .def_rw("top_k", &SamplingOptions::top_k)
      .def_rw("top_p", &SamplingOptions::top_p)
      .def_rw("min_p", &SamplingOptions::min_p)
      .def_rw("repetition_penalty", &SamplingOptions::repetition_penalty)
      .def_rw("presence_penalty", &SamplingOptions::presence_penalty)
      .def_rw("frequency_penalty", &SamplingOptions::frequency_penalty)
      .def_rw("has_seed", &SamplingOptions::has_seed)
      .def_rw("seed", &SamplingOptions::seed)
      .def_rw("stop_token_ids", &SamplingOptions::stop_token_ids)
      .def_rw("ignore_eos", &SamplingOptions::ignore_eos)
      .def_rw("max_tokens", &SamplingOptions::max_tokens)
      .def_rw("min_tokens", &SamplingOptions::min_tokens)
      .def_rw("logprobs", &SamplingOptions::logprobs)
      .def_rw("return_logits", &SamplingOptions::return_logits);

  nb::class_<TokenEvent>(m, "TokenEvent")
      .def_ro("token", &TokenEvent::token)
      .def_ro("logprob", &TokenEvent::logprob)
      .def_ro("top_logprobs", &TokenEvent::top_logprobs)
      .def_prop_ro("logits", [](const TokenEvent& ev) { return event_logits(ev); })
      .def_prop_ro("finish_reason", [](const TokenEvent& ev) -> nb::object {
        if (ev.finish == FinishReason::None) return nb::none();
        return nb::str(finish_reason_name(ev.finish));
      })
      .def_ro("error", &TokenEvent::error);

  nb::class_<RequestStream>(m, "RequestStream")
      .def_prop_ro("id", &RequestStream::id)
      .def("next", [](RequestStream& s, double timeout_s) -> nb::object {
            TokenEvent ev;
            bool got;
            {
              nb::gil_scoped_release release;
              auto ms = std::chrono::milliseconds(static_cast<int64_t>(std::max(0.0, timeout_s) * 1000.0));
              got = s.next(&ev, ms);
            }
            if (!got) return nb::none();
            return nb::cast(std::move(ev));
          }, "timeout_s"_a = 1.0, "Next event, or None after timeout_s seconds (or once finished).")
      .def("drain", &RequestStream::drain)
      .def_prop_ro("finished", &RequestStream::finished);

  nb::class_<Engine>(m, "Engine")
      .def("__init__", [](Engine* self, const EngineOptions& opts) {
            nb::gil_scoped_release release;
            new (self) Engine(opts);
          }, "options"_a)
      .def("add_request", [](Engine& e, std::vector<int32_t> prompt, const SamplingOptions& o) {
            return e.add_request(std::move(prompt), o);
          }, "prompt"_a, "options"_a)
      .def("abort", &Engine::abort, "request_id"_a)
      .def("stats", [](const Engine& e) { return stats_dict(e.stats()); })
      .def_prop_ro("config", [](const Engine& e) { return config_dict(e.config()); })
      .def_prop_ro("max_model_len", [](const Engine& e) { return e.options().max_model_len; })
      .def_prop_ro("healthy", &Engine::healthy)
      .def_prop_ro("fatal_error", &Engine::fatal_error);

  m.def("cuda_device_count", []() -> int {
#ifdef EMBER_HAVE_CUDA
    return cuda_device_count();
#else
    return 0;
#endif
  }, "Number of CUDA devices this build can use (0 without the CUDA backend or a GPU).");
  m.attr("has_cuda") = nb::bool_(
#ifdef EMBER_HAVE_CUDA
      true
#else
      false
#endif
  );

#ifdef EMBER_BIND_GGUF
  bind_gguf(m);
#endif
#ifdef EMBER_BIND_BENCH
  bind_bench(m);
#endif
}
