// CPU kernel of efficientad::quantile: exact quantiles of all elements, O(n) by radix
// selection (radix_select_cpu.h). No sort and no copy of the input: a dense tensor in any
// memory order is read as it lies; only overlapping or gapped views are made contiguous.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "checks.h"
#include "common/accumulation.h"
#include "cpu/radix_select_cpu.h"

namespace efficientad::cpu {
namespace {

at::Tensor quantile_cpu(const at::Tensor& input, at::ArrayRef<double> q) {
  check_quantile_args(input, q);

  const at::Tensor x = input.is_non_overlapping_and_dense() ? input : input.contiguous();
  const int64_t n = x.numel();
  at::Tensor out = at::empty({int64_t(q.size())}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quantile_cpu", [&] {
    using Acc = acc_t<scalar_t>;
    const scalar_t* data = x.const_data_ptr<scalar_t>();
    std::vector<Acc> result(q.size());
    select_quantiles<Acc>(n, [data](int64_t i) { return static_cast<Acc>(data[i]); }, q.data(),
                          int64_t(q.size()), result.data());
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for (size_t i = 0; i < q.size(); ++i) o[i] = static_cast<scalar_t>(result[i]);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(efficientad, CPU, m) { m.impl("quantile", &quantile_cpu); }

}  // namespace efficientad::cpu
