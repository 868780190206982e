// Exact order statistics on the CPU by radix selection (see common/radix_select.h).
//
// Keys are float32 (uint32) or float64 (uint64) bit patterns; half and bfloat16 inputs are
// widened to float32 first (exact and order-preserving). Digits are 16 bits wide, so a
// float32 selection is two passes over the data and a float64 one four. Each pass is
// parallel over chunks with per-thread histograms of 2^16 uint32 counts (256 KiB, L2
// resident); chunks are capped at 2^31 elements so a per-thread count cannot overflow.
// The values are produced by a callable, so the hard-feature loss selects on
// d = (teacher - student)^2 without ever storing d.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/quantile_math.h"
#include "common/radix_select.h"

namespace efficientad::cpu {

template <typename Acc>
using KeyFor = typename KeyOfWidth<sizeof(Acc)>::type;

template <typename Acc>
inline KeyFor<Acc> key_of(Acc v) {
  KeyFor<Acc> bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return ordered_key(bits);
}

template <typename Acc>
inline Acc value_of(KeyFor<Acc> key) {
  const KeyFor<Acc> bits = bits_from_ordered_key(key);
  Acc v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

struct SelectionResult {
  int64_t nan_count = 0;
};

// Finds the values of the given 0-based ranks (each < n - nan_count) among the n values
// value_at(0..n-1); NaN values are counted and left out. Writes them to out[0..nranks).
// If NaN values exist, out is left untouched and the NaN count is returned: callers turn
// that into NaN results.
template <typename Acc, typename ValueAt>
SelectionResult radix_select(int64_t n, const ValueAt& value_at, const int64_t* ranks,
                             int64_t nranks, Acc* out) {
  using Key = KeyFor<Acc>;
  constexpr int kDigitBits = 16;
  constexpr uint32_t kBins = 1u << kDigitBits;
  constexpr int kKeyBits = int(sizeof(Key) * 8);
  constexpr int kPasses = kKeyBits / kDigitBits;
  constexpr int64_t kMaxChunk = int64_t(1) << 31;
  constexpr int kGroup = 8;  // distinct prefixes histogrammed in one pass over the data

  std::vector<Key> prefix(nranks, Key(0));
  std::vector<int64_t> rank(ranks, ranks + nranks);
  Key prefix_mask = 0;
  SelectionResult result;
  const int nthreads = at::get_num_threads();

  for (int pass = 0; pass < kPasses; ++pass) {
    const int shift = kKeyBits - (pass + 1) * kDigitBits;
    std::vector<Key> distinct(prefix);
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());

    for (size_t g0 = 0; g0 < distinct.size(); g0 += kGroup) {
      const int groups = int(std::min<size_t>(kGroup, distinct.size() - g0));
      const Key* group_prefix = distinct.data() + g0;
      std::vector<int64_t> totals(size_t(groups) * kBins, 0);
      std::vector<uint32_t> local(size_t(nthreads) * groups * kBins);
      std::vector<int64_t> local_nan(nthreads, 0);
      const bool count_nan = pass == 0 && g0 == 0;

      for (int64_t c0 = 0; c0 < n; c0 += kMaxChunk) {
        const int64_t c1 = std::min(n, c0 + kMaxChunk);
        std::fill(local.begin(), local.end(), 0u);
        at::parallel_for(c0, c1, 1 << 14, [&](int64_t begin, int64_t end) {
          const int tid = at::get_thread_num();
          uint32_t* hist = local.data() + size_t(tid) * groups * kBins;
          int64_t nan = 0;
          for (int64_t i = begin; i < end; ++i) {
            const Acc v = value_at(i);
            if (v != v) {
              ++nan;
              continue;
            }
            const Key key = key_of(v);
            const Key masked = Key(key & prefix_mask);
            for (int g = 0; g < groups; ++g) {
              if (masked == group_prefix[g]) {
                ++hist[size_t(g) * kBins + key_digit(key, shift, kBins - 1)];
                break;
              }
            }
          }
          if (count_nan) local_nan[tid] += nan;
        });
        for (int t = 0; t < nthreads; ++t)
          for (size_t b = 0; b < size_t(groups) * kBins; ++b)
            totals[b] += local[size_t(t) * groups * kBins + b];
      }
      if (count_nan) {
        for (int64_t c : local_nan) result.nan_count += c;
        if (result.nan_count > 0) return result;
      }
      for (int64_t r = 0; r < nranks; ++r) {
        for (int g = 0; g < groups; ++g) {
          if (prefix[r] != group_prefix[g]) continue;
          int64_t rank_in_bucket = 0;
          const uint32_t digit =
              find_rank_bucket(totals.data() + size_t(g) * kBins, kBins, rank[r], &rank_in_bucket);
          prefix[r] = Key(prefix[r] | (Key(digit) << shift));
          rank[r] = rank_in_bucket;
          break;
        }
      }
    }
    prefix_mask = Key(prefix_mask | (Key(kBins - 1) << shift));
  }
  for (int64_t r = 0; r < nranks; ++r) out[r] = value_of<Acc>(prefix[r]);
  return result;
}

// Quantiles q[0..nq) of the n values value_at(i) by the definition of common/quantile_math.h.
// NaN anywhere gives NaN for every q (as torch.quantile).
template <typename Acc, typename ValueAt>
void select_quantiles(int64_t n, const ValueAt& value_at, const double* q, int64_t nq, Acc* out) {
  std::vector<int64_t> ranks;
  ranks.reserve(2 * nq);
  std::vector<QuantilePosition> pos(nq);
  for (int64_t i = 0; i < nq; ++i) {
    pos[i] = quantile_position(q[i], n);
    ranks.push_back(pos[i].lower);
    ranks.push_back(pos[i].upper);
  }
  std::vector<Acc> values(ranks.size());
  const SelectionResult r = radix_select<Acc>(n, value_at, ranks.data(), int64_t(ranks.size()), values.data());
  for (int64_t i = 0; i < nq; ++i) {
    out[i] = r.nan_count > 0
                 ? Acc(NAN)
                 : Acc(quantile_lerp<double>(values[2 * i], values[2 * i + 1], pos[i].weight));
  }
}

}  // namespace efficientad::cpu
