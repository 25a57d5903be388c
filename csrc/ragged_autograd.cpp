// Autograd of ragged_bag (schema in csrc/ops.cpp): the gradient with respect to
// per_sample_weights, the only differentiable input (the table is a pruned, served one).
//
//   d out[b] / d w[i] = row(ids[i])   for each lookup i of bag b (mode sum), so
//   grad_w[i] = <row(ids[i]), grad[b]>, the rows gathered by ragged_gather.
//
// Registered here, in C++, rather than from Python: a call that needs no gradient (no
// weights, weights that do not require grad, or grad mode off) goes straight to the
// kernel below autograd, without entering Python. Python's register_autograd costs ~5 µs
// per call in eager mode, more than the kernel itself for a small serving batch
// (bench/bench_host_overhead.py). torch.compile and torch.export trace through this
// kernel as they do through the ops of other C++ libraries.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <utility>

namespace mixemb {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using BagSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                int64_t, int64_t, const at::Tensor&, const at::Tensor&, int64_t,
                                const std::optional<at::Tensor>&, bool, bool, c10::string_view,
                                bool, std::optional<int64_t>, const std::optional<at::Tensor>&);
using GatherSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   int64_t, int64_t, const at::Tensor&, bool, bool,
                                   std::optional<int64_t>, const std::optional<at::Tensor>&);

const c10::TypedOperatorHandle<BagSignature>& bag_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mixemb::ragged_bag", "")
                             .typed<BagSignature>();
  return op;
}

const c10::TypedOperatorHandle<GatherSignature>& gather_op() {
  static const auto op = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("mixemb::ragged_gather", "")
                              .typed<GatherSignature>();
  return op;
}

// ragged_bag's kernel for these arguments (the schema's, in its order), below autograd.
template <typename... Args>
at::Tensor bag_below_autograd(Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return bag_op().call(std::forward<Args>(args)...);
}

class RaggedBagFunction : public torch::autograd::Function<RaggedBagFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& masks,
                            const at::Tensor& values, const at::Tensor& group_offsets,
                            int64_t group_size, int64_t dim, const at::Tensor& ids,
                            const at::Tensor& offsets, int64_t mode,
                            const std::optional<at::Tensor>& per_sample_weights,
                            bool include_last_offset, bool check_bounds,
                            const std::string& bag_kernel, bool one_warp,
                            std::optional<int64_t> lookups_at_once,
                            const std::optional<at::Tensor>& scale_bias) {
    const bool int8 = scale_bias.has_value() && scale_bias->defined();
    ctx->save_for_backward(
        {masks, values, group_offsets, ids, offsets, int8 ? *scale_bias : at::Tensor()});
    ctx->saved_data["group_size"] = group_size;
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["weights_dtype"] = per_sample_weights->scalar_type();
    return bag_below_autograd(masks, values, group_offsets, group_size, dim, ids, offsets, mode,
                              per_sample_weights, include_last_offset, check_bounds, bag_kernel,
                              one_warp, lookups_at_once, scale_bias);
  }

  // One gradient per forward argument: only per_sample_weights (the 9th) has one.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& ids = saved[3];
    const at::Tensor& offsets = saved[4];
    const std::optional<at::Tensor> scale_bias =
        saved[5].defined() ? std::optional<at::Tensor>(saved[5]) : std::nullopt;
    const at::Tensor& grad = grads[0];
    variable_list out(15);
    // needs_input_grad counts tensor inputs only: masks, values, group_offsets, ids,
    // offsets, then per_sample_weights
    if (!ctx->needs_input_grad(5)) return out;
    // the rows dotted with their bag's gradient (ids already checked by the forward)
    const at::Tensor rows =
        gather_op().call(saved[0], saved[1], saved[2], ctx->saved_data["group_size"].toInt(),
                         ctx->saved_data["dim"].toInt(), ids, false, false, std::nullopt,
                         scale_bias);
    // the bag of each lookup: the last bag that starts at or before it (empty bags hold
    // none; with include_last_offset the last offset, M, starts no lookup). Sizes stay
    // symbolic, so torch.compile traces this with dynamic shapes.
    const at::Tensor positions =
        at::arange(at::Scalar(ids.sym_numel()), offsets.options().dtype(at::kLong));
    const at::Tensor bag_of =
        at::searchsorted(offsets.to(at::kLong), positions, /*out_int32=*/false, /*right=*/true) - 1;
    out[8] = (rows.to(grad.scalar_type()) * grad.index_select(0, bag_of))
                 .sum(1)
                 .to(ctx->saved_data["weights_dtype"].toScalarType());
    return out;
  }
};

at::Tensor ragged_bag_autograd(const at::Tensor& masks, const at::Tensor& values,
                               const at::Tensor& group_offsets, int64_t group_size, int64_t dim,
                               const at::Tensor& ids, const at::Tensor& offsets, int64_t mode,
                               const std::optional<at::Tensor>& per_sample_weights,
                               bool include_last_offset, bool check_bounds,
                               c10::string_view bag_kernel, bool one_warp,
                               std::optional<int64_t> lookups_at_once,
                               const std::optional<at::Tensor>& scale_bias) {
  const bool needs_grad = at::GradMode::is_enabled() && per_sample_weights.has_value() &&
                          per_sample_weights->defined() && per_sample_weights->requires_grad();
  if (!needs_grad) {
    return bag_below_autograd(masks, values, group_offsets, group_size, dim, ids, offsets, mode,
                              per_sample_weights, include_last_offset, check_bounds, bag_kernel,
                              one_warp, lookups_at_once, scale_bias);
  }
  return RaggedBagFunction::apply(masks, values, group_offsets, group_size, dim, ids, offsets,
                                  mode, per_sample_weights, include_last_offset, check_bounds,
                                  std::string(bag_kernel), one_warp, lookups_at_once,
                                  scale_bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(mixemb, Autograd, m) { m.impl("ragged_bag", &ragged_bag_autograd); }

}  // namespace mixemb
