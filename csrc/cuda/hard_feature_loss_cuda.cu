// CUDA kernels of efficientad::hard_feature_loss and its backward.
//
// Groups are `groups` contiguous segments of group_size elements (the whole batch, or one per
// sample, in the layout of hard_loss_layout); each group gets its own threshold. d = (t - s)^2
// is recomputed on the fly in every pass and never stored, bit-identical to the CPU (one
// subtraction and one multiplication in the accumulation type: nothing to contract).
// Forward launches (fixed by groups, group_size and dtype; no host sync):
//   radix selection of ranks {lower, upper} of p in every group (radix_select.cuh),
//   threshold kernel: thr[g] = quantile_lerp<double>(lower, upper, weight), NaN if g has NaN,
//   sum kernel: per block and group, the double sum and count of d >= thr[g] (partials),
//   loss kernel (one block): in a fixed order per group, count[g], and
//     loss = mean over groups of sum_g / count_g (deterministic for a given device).
// NaN in a group: NaN threshold, nothing selected (count 0), NaN loss; gradient zero.
// Backward: one pass; scale_g = 2 * grad / (groups * count_g) computed in double from the
// device grad, gs = -(scale_g * diff) where d >= thr[g] else -0, gt = +(...) when requested.
// Workspace: partial sums/counts (groups * blocks) + the selection state (~32 KiB per group).
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/anomaly_math.h"
#include "common/quantile_math.h"
#include "cuda/radix_select.cuh"

namespace efficientad::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kItems = 4;

template <typename T>
struct SquaredDiff {
  const T* __restrict__ t;
  const T* __restrict__ s;
  int64_t seg_size;
  __device__ __forceinline__ acc_t<T> operator()(int64_t seg, int64_t i) const {
    const int64_t k = seg * seg_size + i;
    return squared(to_acc(t[k]) - to_acc(s[k]));
  }
};

// Blocks per group of the sum and backward kernels (a pure function of the sizes and device).
unsigned blocks_per_group(int64_t groups, int64_t group_size) {
  const int64_t cap = std::max<int64_t>(1, int64_t(sm_count()) * 8 / segment_blocks(groups));
  return grid_blocks(group_size, kThreads * kItems, cap);
}

template <typename Acc>
__global__ void threshold_kernel(RadixState st, int64_t groups, int64_t group_size, double p, int lower,
                                 int upper, Acc* __restrict__ threshold) {
  const QuantilePosition pos = quantile_position(p, group_size);
  for (int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += int64_t(gridDim.x) * blockDim.x) {
    const Acc lo = value_of<Acc>(st.prefix[g * st.nranks + lower]);
    const Acc hi = value_of<Acc>(st.prefix[g * st.nranks + upper]);
    threshold[g] = st.nan_count[g] > 0 ? Acc(NAN) : Acc(quantile_lerp<double>(lo, hi, pos.weight));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    selected_sum_kernel(SquaredDiff<T> d, int64_t groups, const acc_t<T>* __restrict__ threshold,
                        double* __restrict__ part_sum, long long* __restrict__ part_count) {
  using Acc = acc_t<T>;
  for (int64_t g = blockIdx.y; g < groups; g += gridDim.y) {
    const Acc thr = threshold[g];
    double sum = 0.0;
    long long count = 0;
    grid_stride<kItems>(
        d.seg_size, [&](int64_t i) { return d(g, i); },
        [&](int64_t, Acc v) {
          if (v >= thr) {
            sum += double(v);
            ++count;
          }
        });
    sum = block_reduce(sum, Plus{}, 0.0);
    count = block_reduce(count, Plus{}, 0ll);
    if (threadIdx.x == 0) {
      part_sum[g * gridDim.x + blockIdx.x] = sum;
      part_count[g * gridDim.x + blockIdx.x] = count;
    }
  }
}

template <typename Acc>
__global__ void __launch_bounds__(kThreads)
    loss_kernel(const double* __restrict__ part_sum, const long long* __restrict__ part_count, int64_t groups,
                int64_t parts, int64_t* __restrict__ count, Acc* __restrict__ loss) {
  double total = 0.0;  // meaningful in thread 0
  for (int64_t g = 0; g < groups; ++g) {
    double sum = 0.0;
    long long c = 0;
    for (int64_t k = threadIdx.x; k < parts; k += blockDim.x) {
      sum += part_sum[g * parts + k];
      c += part_count[g * parts + k];
    }
    sum = block_reduce(sum, Plus{}, 0.0);
    c = block_reduce(c, Plus{}, 0ll);
    if (threadIdx.x == 0) {
      count[g] = c;
      total += sum / double(c);  // c == 0 only when the threshold is NaN: NaN loss
    }
  }
  if (threadIdx.x == 0) *loss = Acc(total / double(groups));
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const T* __restrict__ t, const T* __restrict__ s, int64_t groups, int64_t group_size,
                    const double* __restrict__ grad_loss, const acc_t<T>* __restrict__ threshold,
                    const int64_t* __restrict__ count, T* __restrict__ gt, T* __restrict__ gs) {
  using Acc = acc_t<T>;
  const double upstream = *grad_loss;
  for (int64_t g = blockIdx.y; g < groups; g += gridDim.y) {
    const Acc thr = threshold[g];
    const Acc scale = Acc(2.0 * upstream / (double(groups) * double(count[g])));
    const int64_t off = g * group_size;
    grid_stride<kItems>(
        group_size, [&](int64_t i) { return to_acc(t[off + i]) - to_acc(s[off + i]); },
        [&](int64_t i, Acc diff) {
          const Acc gd = squared(diff) >= thr ? scale * diff : Acc(0);
          gs[off + i] = from_acc<T>(-gd);
          if (gt != nullptr) gt[off + i] = from_acc<T>(gd);
        });
  }
}

size_t partials_bytes(int64_t groups, int64_t group_size) {
  return (size_t(groups) * blocks_per_group(groups, group_size) * 16 + 255) / 256 * 256;
}

}  // namespace

size_t hard_loss_workspace_bytes(int64_t groups, int64_t group_size) {
  return partials_bytes(groups, group_size) + radix_state_bytes(groups, 2);
}

template <typename T>
cudaError_t launch_hard_feature_loss(const T* teacher, const T* student, int64_t groups, int64_t group_size,
                                     double p, acc_t<T>* loss, acc_t<T>* threshold, int64_t* count,
                                     void* workspace, cudaStream_t stream) {
  using Acc = acc_t<T>;
  const QuantilePosition pos = quantile_position(p, group_size);
  std::vector<int64_t> ranks{pos.lower};
  if (pos.upper != pos.lower) ranks.push_back(pos.upper);
  const unsigned gx = blocks_per_group(groups, group_size), gy = segment_blocks(groups);
  double* part_sum = static_cast<double*>(workspace);
  long long* part_count = reinterpret_cast<long long*>(part_sum + size_t(groups) * gx);
  void* select_ws = static_cast<char*>(workspace) + partials_bytes(groups, group_size);

  const SquaredDiff<T> d{teacher, student, group_size};
  RadixState st;
  cudaError_t err = radix_select<Acc>(d, groups, group_size, ranks, select_ws, stream, &st);
  if (err != cudaSuccess) return err;
  threshold_kernel<Acc><<<grid_blocks(groups, kThreads, 1024), kThreads, 0, stream>>>(
      st, groups, group_size, p, 0, int(ranks.size()) - 1, threshold);
  selected_sum_kernel<T><<<dim3(gx, gy), kThreads, 0, stream>>>(d, groups, threshold, part_sum, part_count);
  loss_kernel<Acc><<<1, kThreads, 0, stream>>>(part_sum, part_count, groups, gx, count, loss);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_hard_feature_loss_backward(const T* teacher, const T* student, int64_t groups,
                                              int64_t group_size, const double* grad_loss,
                                              const acc_t<T>* threshold, const int64_t* count,
                                              T* grad_teacher, T* grad_student, cudaStream_t stream) {
  const unsigned gx = blocks_per_group(groups, group_size), gy = segment_blocks(groups);
  backward_kernel<T><<<dim3(gx, gy), kThreads, 0, stream>>>(teacher, student, groups, group_size, grad_loss,
                                                            threshold, count, grad_teacher, grad_student);
  return cudaGetLastError();
}

#define EFFICIENTAD_INSTANTIATE(T)                                                                       \
  template cudaError_t launch_hard_feature_loss<T>(const T*, const T*, int64_t, int64_t, double, acc_t<T>*, \
                                                   acc_t<T>*, int64_t*, void*, cudaStream_t);                \
  template cudaError_t launch_hard_feature_loss_backward<T>(const T*, const T*, int64_t, int64_t,           \
                                                            const double*, const acc_t<T>*, const int64_t*, \
                                                            T*, T*, cudaStream_t);
EFFICIENTAD_FOR_ELEMENT_TYPES(EFFICIENTAD_INSTANTIATE)
#undef EFFICIENTAD_INSTANTIATE

}  // namespace efficientad::cuda
