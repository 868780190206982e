// CUDA epilogue of efficientad::conv2d_relu_pool and conv2d_relu_pool_split: the convolution
// runs in cuDNN WITHOUT its bias (see conv2d_relu_pool_cuda.cpp); this one kernel then reads
// the NHWC convolution output once and applies bias + optional ReLU + optional 2x2/stride-2
// average pooling (common/pdn_epilogue.h), writing one or two dense NHWC outputs.
//
// Invariants:
//   - Layout: y is [B, H, W, C] dense; output g (g = 0, 1) holds channels [g * split, C) /
//     [0, split) as a dense [B, OH, OW, C_g] tensor (C_0 = split, C_1 = C - split), so a
//     teacher+student pair needs no channel-slice copies afterwards. Without pooling OH = H,
//     OW = W and one tap; output 0 may be y itself (in place: each element is read, then
//     written, by the same thread, and no other thread touches it).
//   - Mapping: grid.y walks output rows (b, oy); threads of a row walk (ox, channel vector),
//     consecutive threads on consecutive channel vectors, so loads and stores coalesce. The
//     pooling windows do not overlap (stride 2, kernel 2): every activation is read once.
//   - Vectorisation: V = 16 / sizeof(T) channels per thread (8 half/bf16, 4 float, 2 double)
//     with one 16-byte load per tap and one 16-byte store, when the host has checked that C and
//     split are multiples of V and y, bias and both outputs are 16-byte aligned; else V = 1.
//   - Math, per channel, in acc_t<T> (float; double for double): tap = relu(conv + bias),
//     output = 0.25 * (sum of in-bounds taps in row-major tap order), i.e. count_include_pad.
//     No value is rounded to T before the output. Launch: one kernel, no host sync.
#include "common/pdn_epilogue.h"
#include "cuda/device_utils.cuh"

namespace efficientad::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  static_assert(V == 1 || sizeof(T) * V == 16, "one element or one 16-byte vector");
  T v[V];
};

// 16-byte vectors move as one LDG.E.128 / STG.E.128 (checked in the sm_80 / sm_90 SASS; a Vec of
// half / bf16 elements copied as a struct is split into element accesses); scalars as they are.
template <typename T, int V>
__device__ __forceinline__ Vec<T, V> load_vec(const T* p) {
  Vec<T, V> v;
  if constexpr (sizeof(Vec<T, V>) == 16) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);  // 16-byte aligned (host check)
    memcpy(&v, &raw, 16);
  } else {
    v.v[0] = p[0];
  }
  return v;
}

template <typename T, int V>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, V>& v) {
  if constexpr (sizeof(Vec<T, V>) == 16) {
    // One st.global.v4 written out: nvcc 13 split every C++ form of this store (uint4
    // assignment, memcpy'd words) into four 32-bit stores when the address is not provably
    // 16-byte aligned at compile time (here it is only checked at run time, on the host).
    uint32_t w[4];
    memcpy(w, &v, 16);
    asm("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3]) : "memory");
  } else {
    p[0] = v.v[0];
  }
}

// kPool: 2x2 windows; else one tap per output (OH = H, OW = W), scale 1.
template <typename T, int V, bool kPool>
__global__ void __launch_bounds__(kThreads) conv_epilogue_kernel(EpilogueArgs<T> a) {
  using Acc = acc_t<T>;
  const int64_t C = a.C, H = a.H, W = a.W, vecs = C / V;
  const int64_t row_len = a.out_w * vecs;
  for (int64_t row = blockIdx.y; row < a.B * a.out_h; row += gridDim.y) {
    const int64_t b = row / a.out_h, oy = row - b * a.out_h;
    const int64_t y0 = kPool ? pool_tap(oy, 0, a.pool_padding) : oy;
    const int64_t y1 = kPool ? pool_tap(oy, 1, a.pool_padding) : oy;
    const bool y0_ok = y0 >= 0 && y0 < H, y1_ok = kPool && y1 >= 0 && y1 < H;
    const T* plane = a.y + b * H * W * C;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < row_len;
         i += int64_t(gridDim.x) * blockDim.x) {
      const int64_t ox = idiv(i, vecs), c = (i - ox * vecs) * V;
      const int64_t x0 = kPool ? pool_tap(ox, 0, a.pool_padding) : ox;
      const int64_t x1 = kPool ? pool_tap(ox, 1, a.pool_padding) : ox;
      const bool x0_ok = x0 >= 0 && x0 < W, x1_ok = kPool && x1 >= 0 && x1 < W;
      Acc bias[V] = {};
      if (a.bias != nullptr) {
        const Vec<T, V> bv = load_vec<T, V>(a.bias + c);
#pragma unroll
        for (int k = 0; k < V; ++k) bias[k] = to_acc(bv.v[k]);
      }
      Acc acc[V];
#pragma unroll
      for (int k = 0; k < V; ++k) acc[k] = Acc(0);
      auto tap = [&](int64_t yy, int64_t xx) {
        const Vec<T, V> t = load_vec<T, V>(plane + (yy * W + xx) * C + c);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const Acc v = to_acc(t.v[k]);
          acc[k] += a.bias != nullptr ? conv_activation(v, bias[k], a.relu) : maybe_relu(v, a.relu);
        }
      };
      if (y0_ok && x0_ok) tap(y0, x0);
      if (y0_ok && x1_ok) tap(y0, x1);
      if (y1_ok && x0_ok) tap(y1, x0);
      if (y1_ok && x1_ok) tap(y1, x1);
      const bool second = c >= a.split;  // split % V == 0: a vector never straddles the halves
      const int64_t cg = second ? C - a.split : a.split;
      T* dst = (second ? a.out1 : a.out0) + (row * a.out_w + ox) * cg + (second ? c - a.split : c);
      Vec<T, V> o;
#pragma unroll
      for (int k = 0; k < V; ++k) o.v[k] = from_acc<T>(kPool ? acc[k] * Acc(0.25) : acc[k]);
      store_vec<T, V>(dst, o);
    }
  }
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T, int V>
cudaError_t launch(const EpilogueArgs<T>& a, cudaStream_t stream) {
  const int64_t rows = a.B * a.out_h, row_len = a.out_w * (a.C / V);
  const unsigned gy = segment_blocks(rows);
  const int64_t cap = std::max<int64_t>(1, int64_t(sm_count()) * 8 / gy);
  const dim3 grid(grid_blocks(row_len, kThreads, cap), gy);
  if (a.pool)
    conv_epilogue_kernel<T, V, true><<<grid, kThreads, 0, stream>>>(a);
  else
    conv_epilogue_kernel<T, V, false><<<grid, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

// The 16-byte path's preconditions, checked at run time on the actual pointers.
template <typename T>
bool vectorisable(const EpilogueArgs<T>& a) {
  constexpr int64_t V = 16 / sizeof(T);
  return a.C % V == 0 && a.split % V == 0 && aligned16(a.y) && aligned16(a.bias) && aligned16(a.out0) &&
         aligned16(a.out1);
}

}  // namespace

template <typename T>
cudaError_t launch_conv_epilogue_nhwc(const EpilogueArgs<T>& a, cudaStream_t stream) {
  if (a.B * a.C * a.out_h * a.out_w == 0) return cudaSuccess;
  if (vectorisable(a)) return launch<T, 16 / sizeof(T)>(a, stream);
  return launch<T, 1>(a, stream);
}

#define EFFICIENTAD_INSTANTIATE(T) \
  template cudaError_t launch_conv_epilogue_nhwc<T>(const EpilogueArgs<T>&, cudaStream_t);
EFFICIENTAD_FOR_ELEMENT_TYPES(EFFICIENTAD_INSTANTIATE)
#undef EFFICIENTAD_INSTANTIATE

}  // namespace efficientad::cuda
