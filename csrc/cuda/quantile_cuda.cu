// CUDA kernels of efficientad::quantile: exact quantiles of all n elements of a dense array
// (memory order is irrelevant), by radix selection (radix_select.cuh) on float32 keys (half,
// bfloat16 and float widened exactly) or float64 keys.
//
// Definition (common/quantile_math.h): position q * (n - 1) in double, ranks lower and upper,
// result = quantile_lerp<double>(v[lower], v[upper], weight), rounded to the accumulation type
// and then to the input dtype, exactly as the CPU kernel. All distinct ranks of all q's are
// selected together (sorted on the host from n and q only, which the host already has).
// NaN anywhere (counted in the first pass) makes every result NaN.
// Launches: memset + ceil(R/64) init + per pass (3 or 6) ceil(R/4) histogram (1 in pass 0)
// + 1 select + ceil(nq/64) finalize, R = number of distinct ranks <= 2 nq. No host sync.
// Memory: the workspace (~16 KiB per rank for the histograms); the input is never copied.
// n may exceed 2^31 (int64 indexing, grid-stride loops; n < 2^53 for exact positions).
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/quantile_math.h"
#include "cuda/radix_select.cuh"

namespace efficientad::cuda {
namespace {

template <typename T>
struct DenseSource {
  const T* __restrict__ x;
  __device__ __forceinline__ acc_t<T> operator()(int64_t, int64_t i) const { return to_acc(x[i]); }
};

constexpr int kQuantileChunk = 64;

struct QuantileChunk {
  int64_t offset;
  int32_t count;
  double q[kQuantileChunk];
  int32_t lower[kQuantileChunk];  // index of each q's lower / upper rank in the selected ranks
  int32_t upper[kQuantileChunk];
};

template <typename T>
__global__ void quantile_finalize_kernel(RadixState st, int64_t n, QuantileChunk c, T* __restrict__ out) {
  using Acc = acc_t<T>;
  const int i = threadIdx.x;
  if (i >= c.count) return;
  const QuantilePosition pos = quantile_position(c.q[i], n);
  const Acc lo = value_of<Acc>(st.prefix[c.lower[i]]);
  const Acc hi = value_of<Acc>(st.prefix[c.upper[i]]);
  const Acc r = st.nan_count[0] > 0 ? Acc(NAN) : Acc(quantile_lerp<double>(lo, hi, pos.weight));
  out[c.offset + i] = from_acc<T>(r);
}

}  // namespace

size_t quantile_workspace_bytes(int64_t nq) { return radix_state_bytes(1, 2 * std::max<int64_t>(nq, 1)); }

template <typename T>
cudaError_t launch_quantile(const T* x, int64_t n, const double* q, int64_t nq, T* out, void* workspace,
                            cudaStream_t stream) {
  std::vector<int64_t> ranks;
  ranks.reserve(size_t(2 * nq));
  for (int64_t i = 0; i < nq; ++i) {
    const QuantilePosition pos = quantile_position(q[i], n);
    ranks.push_back(pos.lower);
    ranks.push_back(pos.upper);
  }
  std::sort(ranks.begin(), ranks.end());
  ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
  auto index_of = [&ranks](int64_t r) {
    return int32_t(std::lower_bound(ranks.begin(), ranks.end(), r) - ranks.begin());
  };

  RadixState st;
  cudaError_t err = radix_select<acc_t<T>>(DenseSource<T>{x}, 1, n, ranks, workspace, stream, &st);
  if (err != cudaSuccess) return err;
  for (int64_t off = 0; off < nq; off += kQuantileChunk) {
    QuantileChunk c{off, int32_t(std::min<int64_t>(kQuantileChunk, nq - off)), {}, {}, {}};
    for (int i = 0; i < c.count; ++i) {
      const QuantilePosition pos = quantile_position(q[off + i], n);
      c.q[i] = q[off + i];
      c.lower[i] = index_of(pos.lower);
      c.upper[i] = index_of(pos.upper);
    }
    quantile_finalize_kernel<T><<<1, kQuantileChunk, 0, stream>>>(st, n, c, out);
  }
  return cudaGetLastError();
}

#define EFFICIENTAD_INSTANTIATE(T)                                                                   \
  template cudaError_t launch_quantile<T>(const T*, int64_t, const double*, int64_t, T*, void*, cudaStream_t);
EFFICIENTAD_FOR_ELEMENT_TYPES(EFFICIENTAD_INSTANTIATE)
#undef EFFICIENTAD_INSTANTIATE

}  // namespace efficientad::cuda
