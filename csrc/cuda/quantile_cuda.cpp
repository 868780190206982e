// CUDA registration of efficientad::quantile (kernels: quantile_cuda.cu). Same checks, output
// (1-D, len(q), input dtype) and NaN semantics as the CPU kernel. A dense tensor in any memory
// order is read as it lies; only overlapping or gapped views are made contiguous. No host sync.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/torch_glue.h"

namespace efficientad::cuda {
namespace {

at::Tensor quantile_cuda(const at::Tensor& input, at::ArrayRef<double> q) {
  check_quantile_args(input, q);
  const c10::cuda::CUDAGuard guard(input.device());

  const at::Tensor x = input.is_non_overlapping_and_dense() ? input : input.contiguous();
  const int64_t nq = int64_t(q.size());
  at::Tensor out = at::empty({nq}, x.options());
  at::Tensor workspace = at::empty({int64_t(quantile_workspace_bytes(nq))}, x.options().dtype(at::kByte));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quantile_cuda", [&] {
    C10_CUDA_CHECK(launch_quantile(in_ptr<scalar_t>(x), x.numel(), q.data(), nq, out_ptr<scalar_t>(out),
                                   workspace.mutable_data_ptr(), current_stream()));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(efficientad, CUDA, m) { m.impl("quantile", &quantile_cuda); }

}  // namespace efficientad::cuda
