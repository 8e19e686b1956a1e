#pragma once
/// Data-parallel training on PyTorch's own distributed engine: c10d's ProcessGroupGloo, whose rendezvous goes
/// through xfer's own store (dist/store.h) rather than LibTorch's TCPStore.
///
/// A handful of free functions with a single-process default (flashlight's fl::distributed style): when
/// the torchrun variables are not set, world_size() is 1, rank() is 0 and every collective is a no-op
/// that makes no Gloo call. `xfer launch` (or torchrun) sets, for each process:
///
///   MASTER_ADDR, MASTER_PORT   where rank 0 serves the rendezvous store (bound to MASTER_ADDR only)
///   RANK, WORLD_SIZE           this process's global rank and the number of processes
///   LOCAL_RANK                 the rank on this machine
///   XFER_DIST_TIMEOUT          seconds to wait for the master or a collective before failing (default 300)
///
/// Gradients are averaged like PyTorch's DistributedDataParallel: flattened into buckets of about 25 MB,
/// all-reduced (sum) with allreduce_coalesced, then divided by the world size once the work is done (after
/// the backward pass, not overlapped with it as DDP does).
#include <cstdint>
#include <string>
#include <vector>

#include <torch/types.h>

namespace torch::nn {
class Module;
}

namespace xfer::dist {

/// Whether this build has c10d/Gloo (CMake option XFER_WITH_GLOO).
bool gloo_available();

/// Joins the process group described by the environment, once (later calls return at once). Returns
/// whether this process is one of several. With RANK/WORLD_SIZE unset, or WORLD_SIZE=1: single process,
/// no Gloo. BadInput (one line) if the variables are malformed, Gloo is not built in, or the rendezvous
/// fails: the master cannot be reached, or a rank does not join, within the timeout.
bool init_from_env();

bool is_distributed();
int rank();
int world_size();
int local_rank();
bool is_main();            // rank 0: the process that writes outputs
double timeout_seconds();  // XFER_DIST_TIMEOUT, default 300

/// Copies rank `root`'s values of `tensors` into every rank's (in place).
void broadcast(const std::vector<torch::Tensor>& tensors, int root = 0);
/// Broadcasts the parameters and buffers of `module` from rank 0.
void broadcast_module(const torch::nn::Module& module);

/// Sums each tensor over the ranks, in place (any dtype Gloo reduces: float, double, int64).
void all_reduce_sum(const std::vector<torch::Tensor>& tensors);

/// The sum of `x` over the ranks, differentiable: its backward sums the gradient over the ranks too, which
/// is right when every rank goes on to compute the same loss from the sum (or its own part of one loss over
/// the global batch) and the gradients are then averaged. `x` itself in a single process.
torch::Tensor all_reduce_sum_differentiable(const torch::Tensor& x);
/// The rows of every rank's shard of a global batch of `global_size` rows, in batch order, from this rank's
/// rows `local` (global rows [offset, offset + local.size(0))): a differentiable all-gather, so a loss on
/// another rank's rows sends their gradient back to the rank that computed them (mixup partners' hidden
/// features, BSS's spectrum of the whole batch). `local` in a single process.
torch::Tensor all_gather_rows(const torch::Tensor& local, int64_t global_size, int64_t offset);

/// Averages the gradients of `params` over the ranks, in place, in buckets of about `bucket_bytes`: each
/// bucket's gradients are copied into a flat buffer kept between calls, all-reduced with
/// allreduce_coalesced, divided by the world size after the wait, and copied back. Parameters without a
/// gradient are skipped (every rank runs the same code, so they are the same on every rank). A NaN or an
/// infinity in any rank's gradient reaches every rank's sum, so the ranks agree on non-finite gradients.
/// Returns the seconds spent (0 in a single process).
double all_reduce_gradients(const std::vector<torch::Tensor>& params, int64_t bucket_bytes = 25 << 20);
/// Averages tensors that are not parameters' gradients (GradMix's per-source gradients), in place.
void all_reduce_mean(const std::vector<torch::Tensor>& tensors);

/// Batch norm in training mode over the global batch, as torch.nn.SyncBatchNorm: the forward pass
/// all-reduces each channel's count, sum and sum of squares of `x` (N, C, ...), the backward pass each
/// channel's sums of the output gradient g and of g * xhat, so the input gradient is that of one batch norm
/// over all ranks' rows (the weight and bias gradients stay this rank's, for the gradient all-reduce).
/// `running_mean`/`running_var` (if defined) move towards the global mean and unbiased variance by
/// `momentum`, as torch::batch_norm does. In a single process: torch::batch_norm in training mode.
torch::Tensor sync_batch_norm(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                              const torch::Tensor& running_mean, const torch::Tensor& running_var,
                              double momentum, double eps);

/// Checks that every rank holds the same `value` (a hash of the resolved configuration); BadInput on every
/// rank listing the ranks that differ from rank 0's.
void check_same(uint64_t value, const std::string& what);

/// The smallest of each value over the ranks, in one tiny all-reduce: how the ranks agree on a decision any
/// one of them may trigger (a stop signal, a non-finite loss), so that all take it at the same step. The
/// values themselves in a single process.
std::vector<int64_t> all_reduce_min(const std::vector<int64_t>& values);

/// Waits for every rank.
void barrier();

/// Fault injection for tests of recovery, at the end of step `step` (after its checkpoint):
/// XFER_DIST_KILL_AT=RANK:STEP makes that rank SIGKILL itself, XFER_DIST_TERM_AT=RANK:STEP makes it
/// raise SIGTERM (a stop request only that rank sees). Nothing otherwise.
void fault_point(int64_t step);
/// Whether the fault variable `name` (RANK:STEP) names this rank and `step`; BadInput if it is malformed.
/// The Trainer's XFER_DIST_NAN_AT makes that rank's loss and gradients NaN at that (0-based) step.
bool fault_at(const char* name, int64_t step);

/// 64-bit FNV-1a of a text (the resolved configuration), the same on every machine.
uint64_t hash_text(const std::string& text);

}  // namespace xfer::dist
