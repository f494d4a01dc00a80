// The transport every pair of backends supports: copy out to a host buffer owned by the
// transport, copy in on the receiving side. CPU stages pay two memcpys, nothing else.
#include "pipeline/transport.h"

#include <string>

#include "ember/error.h"

namespace ember {
namespace {

class HostStagedTransport : public Transport {
 public:
  HostStagedTransport(Backend& from, Backend& to, size_t max_bytes) : from_(from), to_(to), staging_(max_bytes) {}
  std::string name() const override { return "host"; }
  void send(const void* src, void* dst, size_t bytes, int /*slot*/) override {
    if (bytes > staging_.size())
      throw EngineError("transport: " + std::to_string(bytes) + " bytes exceed the staging buffer of " + std::to_string(staging_.size()));
    from_.copy_to_host(staging_.data(), src, bytes);
    to_.copy_to_device(dst, staging_.data(), bytes);
  }
  void wait_arrival(int /*slot*/, void* /*dst*/, size_t /*bytes*/) override {}  // send() returned once it landed
  void synchronize() override {}

 private:
  Backend& from_;
  Backend& to_;
  std::vector<char> staging_;
};

}  // namespace

std::unique_ptr<Transport> make_host_staged_transport(Backend& from, Backend& to, size_t max_bytes) {
  return std::make_unique<HostStagedTransport>(from, to, max_bytes);
}

}  // namespace ember
