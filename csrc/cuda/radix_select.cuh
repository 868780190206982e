// Exact order statistics on the GPU by radix selection (see common/radix_select.h), for S
// independent segments of seg_size elements (segment s is elements [s*seg_size, (s+1)*seg_size)
// of the source) and the same sorted list of R distinct 0-based ranks in every segment.
//
// Keys: float32 keys (uint32) for float accumulation (half / bfloat16 widened exactly), uint64
// for double. Digits of 11 bits, most significant first: 3 passes for float, 6 for double. Each
// pass is
//   histogram kernel(s): grid (x: chunks of the segment, y: segments); each block counts the
//     digit of the keys matching up to kSlotsPerLaunch distinct prefixes of its segment in a
//     shared-memory histogram (uint32; a block sees < 2^31 elements of a segment) and adds it
//     to the segment's global uint64 histogram. Pass 0 also counts NaN (never selected).
//     ceil(R / kSlotsPerLaunch) launches per pass (1 in pass 0); blocks of a launch whose slots
//     are unused this pass return at once.
//   select kernel, after each histogram launch: one block per segment finds, for every rank
//     of those slots, the bucket holding it (find_rank_bucket over 256 chunk sums, then over
//     the chunk's bins), appends the digit to the rank's prefix, keeps the rank within the
//     bucket and zeroes the histogram; the pass's last one rebuilds the distinct prefixes
//     (ranks are sorted, so equal prefixes are adjacent).
// Memory: ~28 bytes per rank and segment + global histograms of min(R, 4) * 16 KiB per segment.
// All state lives in a device workspace; the launch sequence depends on (S, R, dtype) only, so
// there is no host synchronisation and the whole selection can be captured in a CUDA graph.
// Values are produced on the fly by a Source functor `Acc operator()(int64 segment, int64 i)`,
// so the hard-feature loss selects on (t - s)^2 without storing it. When a segment has NaN its
// results are garbage (but every access stays in bounds): callers output NaN for it.
#pragma once

#include <vector>

#include "cuda/device_utils.cuh"

namespace efficientad::cuda {
namespace {

constexpr int kDigitBits = 11;
constexpr uint32_t kMaxBins = 1u << kDigitBits;  // 2048; global histogram stride
constexpr int kSlotsPerLaunch = 4;                // shared histogram <= 4 * 8 KiB
constexpr int kHistThreads = 256;
constexpr int kHistItems = 4;
constexpr int kHistBlocksPerSm = 8;
constexpr int kSelectThreads = 256;
constexpr int kRankChunk = 64;                         // ranks per init-kernel parameter block
constexpr int64_t kMaxBlockElements = int64_t(1) << 31;  // per block and segment (uint32 counts)

struct RadixState {
  uint64_t* prefix;               // [S][R] key bits decided so far; after the last pass: the key
  int64_t* rank;                  // [S][R] rank still to find among the keys sharing prefix
  uint64_t* distinct;             // [S][R] distinct prefixes, ascending; ndistinct[s] used
  int32_t* slot;                  // [S][R] index into distinct of each rank's prefix
  int32_t* ndistinct;             // [S]
  unsigned long long* nan_count;  // [S]
  unsigned long long* hist;       // [S][H][kMaxBins], H = hist_slots: the slots of one launch
  int64_t nranks;                 // R
  int64_t hist_slots;             // H = min(R, kSlotsPerLaunch)
};

inline int64_t hist_slots_for(int64_t R) { return std::min<int64_t>(R, kSlotsPerLaunch); }

// Workspace layout (256-byte aligned regions); fills *st when given. Monotone in S and R.
inline size_t radix_state_bytes(int64_t S, int64_t R, void* base = nullptr, RadixState* st = nullptr) {
  size_t off = 0;
  auto take = [&off](size_t bytes) {
    const size_t at = off;
    off += (bytes + 255) / 256 * 256;
    return at;
  };
  const size_t sr = size_t(S) * size_t(R);
  const size_t o_prefix = take(sr * 8), o_rank = take(sr * 8), o_distinct = take(sr * 8), o_slot = take(sr * 4);
  const size_t o_nd = take(size_t(S) * 4), o_nan = take(size_t(S) * 8);
  const size_t o_hist = take(size_t(S) * size_t(hist_slots_for(R)) * kMaxBins * 8);
  if (st) {
    char* b = static_cast<char*>(base);
    *st = {reinterpret_cast<uint64_t*>(b + o_prefix), reinterpret_cast<int64_t*>(b + o_rank),
           reinterpret_cast<uint64_t*>(b + o_distinct), reinterpret_cast<int32_t*>(b + o_slot),
           reinterpret_cast<int32_t*>(b + o_nd), reinterpret_cast<unsigned long long*>(b + o_nan),
           reinterpret_cast<unsigned long long*>(b + o_hist), R, hist_slots_for(R)};
  }
  return off;
}

struct RankChunk {
  int64_t offset;
  int32_t count;
  int64_t rank[kRankChunk];
};

// After a zeroing memset: ranks, and one distinct prefix (0) per segment.
__global__ void radix_init_kernel(RadixState st, int64_t S, RankChunk chunk) {
  for (int64_t seg = blockIdx.x; seg < S; seg += gridDim.x) {
    for (int i = threadIdx.x; i < chunk.count; i += blockDim.x)
      st.rank[seg * st.nranks + chunk.offset + i] = chunk.rank[i];
    if (chunk.offset == 0 && threadIdx.x == 0) st.ndistinct[seg] = 1;
  }
}

template <typename Acc, typename Source>
__global__ void __launch_bounds__(kHistThreads)
    radix_histogram_kernel(Source src, int64_t S, int64_t seg_size, RadixState st, int shift, uint32_t bins,
                           uint64_t prefix_mask, int slot_begin, int slots, bool count_nan) {
  using Key = typename KeyOfWidth<sizeof(Acc)>::type;
  extern __shared__ unsigned int sh_hist[];  // [slots][bins]
  __shared__ Key sh_prefix[kSlotsPerLaunch];
  __shared__ unsigned long long sh_nan;
  const Key mask = Key(prefix_mask);
  const uint32_t digit_mask = bins - 1;
  for (int64_t seg = blockIdx.y; seg < S; seg += gridDim.y) {
    const int active = min(slots, max(0, st.ndistinct[seg] - slot_begin));  // uniform in the block
    if (active == 0 && !count_nan) continue;
    for (uint32_t b = threadIdx.x; b < uint32_t(active) * bins; b += blockDim.x) sh_hist[b] = 0;
    if (int(threadIdx.x) < active) sh_prefix[threadIdx.x] = Key(st.distinct[seg * st.nranks + slot_begin + threadIdx.x]);
    if (threadIdx.x == 0) sh_nan = 0;
    __syncthreads();
    unsigned long long nan = 0;
    grid_stride<kHistItems>(
        seg_size, [&](int64_t i) { return src(seg, i); },
        [&](int64_t, Acc v) {
          if (v != v) {
            ++nan;
            return;
          }
          const Key key = key_of(v);
          const Key masked = Key(key & mask);
          for (int a = 0; a < active; ++a) {
            if (masked == sh_prefix[a]) {
              atomicAdd(&sh_hist[uint32_t(a) * bins + key_digit(key, shift, digit_mask)], 1u);
              break;
            }
          }
        });
    if (count_nan && nan > 0) atomicAdd(&sh_nan, nan);
    __syncthreads();
    unsigned long long* g = st.hist + seg * st.hist_slots * kMaxBins;
    for (uint32_t b = threadIdx.x; b < uint32_t(active) * bins; b += blockDim.x) {
      const unsigned int c = sh_hist[b];
      if (c != 0) atomicAdd(&g[(b / bins) * kMaxBins + b % bins], static_cast<unsigned long long>(c));
    }
    if (count_nan && threadIdx.x == 0 && sh_nan > 0) atomicAdd(&st.nan_count[seg], sh_nan);
    __syncthreads();  // before the next segment reuses the shared histogram
  }
}

// Selects within the slots [slot_begin, slot_begin + slots) histogrammed by the launch before.
//
// Barrier invariant: every __syncthreads() below is reached by all threads of the block the
// same number of times, because the only loop containing barriers runs over a block-uniform
// count. That count comes from st.ndistinct[seg], which thread 0 itself rewrites in the
// rebuild at the end of the segment; so it is read once, by thread 0, into shared memory
// before barrier (A), and every thread takes it from there. No thread reads st.ndistinct[seg]
// from global memory after (A), so the rewrite (after the slot loop in thread 0's program
// order) cannot be seen early by a late warp, whether or not the slot loop is empty. Barrier
// (B) ends the segment: the shared slot count, chunk sums and the rebuilt distinct/slot arrays
// are not touched for the next segment until every thread is done with this one.
__global__ void __launch_bounds__(kSelectThreads)
    radix_select_kernel(RadixState st, int64_t S, int shift, uint32_t bins, int slot_begin, int slots, bool rebuild) {
  __shared__ long long chunk_sum[kSelectThreads];
  __shared__ int sh_slot_end;
  const int64_t R = st.nranks;
  const uint32_t width = (bins + kSelectThreads - 1) / kSelectThreads;  // bins per chunk
  const uint32_t nchunks = (bins + width - 1) / width;
  for (int64_t seg = blockIdx.x; seg < S; seg += gridDim.x) {
    if (threadIdx.x == 0) sh_slot_end = min(st.ndistinct[seg], slot_begin + slots);
    __syncthreads();  // (A)
    const int slot_end = sh_slot_end;  // block-uniform
    unsigned long long* hist = st.hist + seg * st.hist_slots * kMaxBins;
    uint64_t* prefix = st.prefix + seg * R;
    int64_t* rank = st.rank + seg * R;
    int32_t* slot = st.slot + seg * R;
    for (int s = slot_begin; s < slot_end; ++s) {
      const unsigned long long* h = hist + size_t(s - slot_begin) * kMaxBins;
      for (uint32_t c = threadIdx.x; c < nchunks; c += blockDim.x) {
        long long sum = 0;
        for (uint32_t b = c * width; b < min(bins, (c + 1) * width); ++b) sum += static_cast<long long>(h[b]);
        chunk_sum[c] = sum;
      }
      __syncthreads();  // chunk sums complete
      for (int64_t r = threadIdx.x; r < R; r += blockDim.x) {
        if (slot[r] != s) continue;
        int64_t in_chunk = 0, in_bucket = 0;
        const uint32_t c = find_rank_bucket(chunk_sum, nchunks, rank[r], &in_chunk);
        const uint32_t first = c * width;
        const uint32_t digit = first + find_rank_bucket(h + first, min(bins, first + width) - first, in_chunk, &in_bucket);
        prefix[r] |= uint64_t(digit) << shift;
        rank[r] = in_bucket;
      }
      // Before the next slot overwrites chunk_sum, and before thread 0's rebuild reads
      // prefix[] / rewrites slot[] that other threads used above.
      __syncthreads();
    }
    for (int64_t b = threadIdx.x; b < int64_t(max(0, slot_end - slot_begin)) * kMaxBins; b += blockDim.x) hist[b] = 0;
    if (rebuild && threadIdx.x == 0) {  // ranks are sorted, so equal prefixes are adjacent
      int n = 0;
      for (int64_t r = 0; r < R; ++r) {
        if (r == 0 || prefix[r] != prefix[r - 1]) st.distinct[seg * R + n++] = prefix[r];
        slot[r] = n - 1;
      }
      st.ndistinct[seg] = n;  // read again only by later kernels (stream order) or after (A)
    }
    __syncthreads();  // (B)
  }
}

// Runs the selection; afterwards state->prefix[s * R + r] is the key of rank ranks[r] of
// segment s and state->nan_count[s] its NaN count. `ranks`: sorted, distinct, < seg_size.
// `workspace`: at least radix_state_bytes(S, ranks.size()) bytes.
template <typename Acc, typename Source>
cudaError_t radix_select(const Source& src, int64_t S, int64_t seg_size, const std::vector<int64_t>& ranks,
                         void* workspace, cudaStream_t stream, RadixState* state) {
  using Key = typename KeyOfWidth<sizeof(Acc)>::type;
  constexpr int kKeyBits = int(sizeof(Key) * 8);
  const int64_t R = int64_t(ranks.size());
  RadixState st;
  const size_t bytes = radix_state_bytes(S, R, workspace, &st);
  *state = st;
  cudaError_t err = cudaMemsetAsync(workspace, 0, bytes, stream);
  if (err != cudaSuccess) return err;
  const unsigned seg_blocks = segment_blocks(S);
  for (int64_t off = 0; off < R; off += kRankChunk) {
    RankChunk chunk{off, int32_t(std::min<int64_t>(kRankChunk, R - off)), {}};
    for (int i = 0; i < chunk.count; ++i) chunk.rank[i] = ranks[size_t(off + i)];
    radix_init_kernel<<<seg_blocks, kRankChunk, 0, stream>>>(st, S, chunk);
  }
  const int64_t cap = std::max<int64_t>(1, int64_t(sm_count()) * kHistBlocksPerSm / seg_blocks);
  const unsigned gx = std::max<unsigned>(grid_blocks(seg_size, kHistThreads * kHistItems, cap),
                                         unsigned(ceil_div(seg_size, kMaxBlockElements)));
  for (int hi = kKeyBits; hi > 0;) {
    const int width = std::min(kDigitBits, hi), shift = hi - width;
    const uint32_t bins = 1u << width;
    const uint64_t mask = hi == kKeyBits ? 0 : uint64_t(Key(Key(~Key(0)) >> hi << hi));
    const bool first = hi == kKeyBits;
    const int64_t launches = first ? 1 : ceil_div(R, kSlotsPerLaunch);
    for (int64_t j = 0; j < launches; ++j) {
      const int slots = first ? 1 : int(std::min<int64_t>(kSlotsPerLaunch, R - j * kSlotsPerLaunch));
      const size_t smem = size_t(slots) * bins * sizeof(unsigned int);
      const int slot_begin = int(j * kSlotsPerLaunch);
      radix_histogram_kernel<Acc, Source><<<dim3(gx, seg_blocks), kHistThreads, smem, stream>>>(
          src, S, seg_size, st, shift, bins, mask, slot_begin, slots, first);
      radix_select_kernel<<<seg_blocks, kSelectThreads, 0, stream>>>(st, S, shift, bins, slot_begin, slots,
                                                                     j == launches - 1);
    }
    hi = shift;
  }
  return cudaGetLastError();
}

}  // namespace
}  // namespace efficientad::cuda
