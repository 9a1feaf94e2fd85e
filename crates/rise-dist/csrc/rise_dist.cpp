// The C ABI over libtorch's c10d that rise-dist binds: a TCPStore rendezvous and one
// process group (Gloo for CPU tensors, NCCL for CUDA tensors), with the collectives the
// trainer needs. Every collective is c10d's own; nothing here moves bytes itself.
//
// Tensors cross the FFI boundary as tch passes them: a `torch::Tensor*` (torch-sys's
// `C_tensor`, `typedef torch::Tensor *tensor` in libtch/torch_api.h).
#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#ifdef RISE_DIST_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

struct rise_pg {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank;
  int world;
};

namespace {

char* dup(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.c_str(), s.size() + 1);
  }
  return out;
}

// Runs `f`, turning any exception into a message in `*err` (freed by rise_dist_free_err).
template <typename F>
int guarded(char** err, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    if (err != nullptr) *err = dup(e.what());
  } catch (...) {
    if (err != nullptr) *err = dup("unknown C++ exception");
  }
  return 1;
}

void wait(const c10::intrusive_ptr<c10d::Work>& work) {
  // Gloo: blocks until done. NCCL: makes the current CUDA stream wait for the collective.
  work->wait();
}

}  // namespace

extern "C" {

// 1 when this build carries the NCCL backend.
int rise_dist_has_nccl() {
#ifdef RISE_DIST_NCCL
  return 1;
#else
  return 0;
#endif
}

// Joins the group: rank 0 serves the TCPStore at `addr:port`, every rank connects to it.
// `backend`: 0 = Gloo, 1 = NCCL. `timeout_ms` bounds the rendezvous and every collective.
rise_pg* rise_dist_init(const char* addr, uint16_t port, int rank, int world, int backend,
                        int64_t timeout_ms, char** err) {
  rise_pg* out = nullptr;
  guarded(err, [&] {
    const std::chrono::milliseconds timeout(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = rank == 0;
    opts.numWorkers = static_cast<std::size_t>(world);
    opts.waitWorkers = true;
    opts.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(addr), opts);
    auto pg = std::make_unique<rise_pg>();
    pg->store = store;
    pg->rank = rank;
    pg->world = world;
    if (backend == 0) {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      const std::string host(addr);
      // On one machine every rank talks over loopback; across machines each rank binds
      // the address its own hostname resolves to (Gloo's default).
      if (host == "127.0.0.1" || host == "localhost") {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
      } else {
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      pg->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    } else if (backend == 1) {
#ifdef RISE_DIST_NCCL
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      pg->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
#else
      throw std::runtime_error(
          "this build of rise-dist has no NCCL backend (built without the CUDA/NCCL headers)");
#endif
    } else {
      throw std::runtime_error("unknown backend " + std::to_string(backend));
    }
    out = pg.release();
  });
  return out;
}

void rise_dist_free(rise_pg* pg) { delete pg; }

void rise_dist_free_err(char* err) { std::free(err); }

// In place: `t` becomes the sum of every rank's `t`.
int rise_dist_all_reduce_sum(rise_pg* pg, torch::Tensor* t, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> ts{*t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    wait(pg->backend->allreduce(ts, opts));
  });
}

// `out` (numel n) becomes rank r's chunk of the sum of every rank's `in` (numel world * n).
int rise_dist_reduce_scatter_sum(rise_pg* pg, torch::Tensor* out, torch::Tensor* in, char** err) {
  return guarded(err, [&] {
    c10d::ReduceScatterOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    wait(pg->backend->_reduce_scatter_base(*out, *in, opts));
  });
}

// `out` (numel world * n) becomes every rank's `in` (numel n), in rank order.
int rise_dist_all_gather(rise_pg* pg, torch::Tensor* out, torch::Tensor* in, char** err) {
  return guarded(err, [&] { wait(pg->backend->_allgather_base(*out, *in)); });
}

// In place: every rank's `t` becomes rank `root`'s.
int rise_dist_broadcast(rise_pg* pg, torch::Tensor* t, int root, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    wait(pg->backend->broadcast(ts, opts));
  });
}

int rise_dist_barrier(rise_pg* pg, char** err) {
  return guarded(err, [&] { wait(pg->backend->barrier()); });
}

}  // extern "C"
