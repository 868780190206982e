// Device helpers shared by the *_cuda.cu files (nvcc only; no torch headers): element <->
// accumulation conversions, ordered keys of accumulation values (common/radix_select.h), block
// reductions, index math and launch-geometry helpers. Everything lives in an unnamed namespace,
// so each .cu gets its own copy of the kernels it instantiates (no cross-TU kernel symbols).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/radix_select.h"
#include "cuda/launchers.h"

namespace efficientad::cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;

// ---- element <-> accumulation type (round to nearest even, as c10::Half / c10::BFloat16)
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// ---- ordered keys of accumulation values (float -> uint32, double -> uint64), held in uint64
__device__ __forceinline__ uint32_t key_of(float v) { return ordered_key<uint32_t>(__float_as_uint(v)); }
__device__ __forceinline__ uint64_t key_of(double v) {
  return ordered_key<uint64_t>(static_cast<uint64_t>(__double_as_longlong(v)));
}
template <typename Acc>
__device__ __forceinline__ Acc value_of(uint64_t key);
template <>
__device__ __forceinline__ float value_of<float>(uint64_t key) {
  return __uint_as_float(bits_from_ordered_key<uint32_t>(static_cast<uint32_t>(key)));
}
template <>
__device__ __forceinline__ double value_of<double>(uint64_t key) {
  return __longlong_as_double(static_cast<long long>(bits_from_ordered_key<uint64_t>(key)));
}
// Key for a NaN-propagating max: NaN maps to the largest key, which value_of decodes as NaN.
template <typename Acc>
__device__ __forceinline__ unsigned long long max_key(Acc v) {
  return v != v ? ~0ull : static_cast<unsigned long long>(key_of(v));
}

// ---- index math: 32-bit division when both operands fit (the common case), else 64-bit
__device__ __forceinline__ int64_t idiv(int64_t a, int64_t b) {
  return (a <= INT32_MAX && b <= INT32_MAX) ? int64_t(uint32_t(a) / uint32_t(b)) : a / b;
}

// Grid-stride loop over [0, n) of this thread (x dimension), kItems loads in flight per thread.
template <int kItems, typename Load, typename Use>
__device__ __forceinline__ void grid_stride(int64_t n, const Load& load, const Use& use) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + (kItems - 1) * stride < n; i += kItems * stride) {
    decltype(load(i)) v[kItems];
#pragma unroll
    for (int k = 0; k < kItems; ++k) v[k] = load(i + k * stride);
#pragma unroll
    for (int k = 0; k < kItems; ++k) use(i + k * stride, v[k]);
  }
  for (; i < n; i += stride) use(i, load(i));
}

// ---- reductions (every thread of the block must call; blockDim.x a multiple of 32)
template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, const Op& op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_down_sync(kFullMask, v, offset));
  return v;
}

// Result valid in thread 0. Deterministic for a fixed blockDim (fixed tree).
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, const Op& op, T identity) {
  __shared__ T partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_reduce(v, op);
  __syncthreads();  // `partial` may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) v = warp_reduce(lane < int(blockDim.x >> 5) ? partial[lane] : identity, op);
  return v;
}

struct Plus {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};

// ---- launch geometry (host)
inline int sm_count() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0)
    return 1;  // the error surfaces at the next launch check; the geometry only affects speed
  return sms;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for `work` items at `per_block` items each, capped at `cap` (>= 1) blocks.
inline unsigned grid_blocks(int64_t work, int64_t per_block, int64_t cap) {
  return unsigned(std::clamp<int64_t>(ceil_div(work, per_block), 1, std::max<int64_t>(cap, 1)));
}

// gridDim.y / a 1-D grid over independent segments: kernels loop when there are more.
inline unsigned segment_blocks(int64_t segments) { return unsigned(std::min<int64_t>(segments, 65535)); }

}  // namespace
}  // namespace efficientad::cuda
