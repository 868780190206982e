// Radix selection on order-preserving integer keys of IEEE-754 values.
//
// Invariant: for any two non-NaN values a, b of one floating type, a < b implies
// ordered_key(bits(a)) < ordered_key(bits(b)) as unsigned integers, and -0.0 sorts just below
// +0.0. NaN is never selected: callers detect NaN first (any NaN makes the quantile NaN, as
// torch.quantile does). Selecting the k-th smallest value then reduces to finding the k-th
// smallest key, one digit at a time from the most significant end: count the digit values
// of the keys that share the digits found so far (the prefix), and pick the bucket whose
// cumulative count passes k. Each pass reads the data once, so selection costs
// O(n * key_bits / digit_bits) with no sort and no extra copy of the data.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace efficientad {

// Unsigned integer of the same width as the floating type's bits.
template <int Bytes> struct KeyOfWidth;
template <> struct KeyOfWidth<2> { using type = uint16_t; };
template <> struct KeyOfWidth<4> { using type = uint32_t; };
template <> struct KeyOfWidth<8> { using type = uint64_t; };

template <typename Key>
EAD_HD Key sign_bit() { return Key(Key(1) << (sizeof(Key) * 8 - 1)); }

// bits -> key: negative values have all bits flipped (so larger magnitude sorts lower),
// non-negative values get the sign bit set (so they sort above all negatives).
template <typename Key>
EAD_HD Key ordered_key(Key bits) {
  return (bits & sign_bit<Key>()) ? Key(~bits) : Key(bits | sign_bit<Key>());
}

// key -> bits, the inverse of ordered_key.
template <typename Key>
EAD_HD Key bits_from_ordered_key(Key key) {
  return (key & sign_bit<Key>()) ? Key(key & Key(~sign_bit<Key>())) : Key(~key);
}

// The digit of `key` that starts `shift` bits from the least significant end.
template <typename Key>
EAD_HD uint32_t key_digit(Key key, int shift, uint32_t digit_mask) {
  return uint32_t(key >> shift) & digit_mask;
}

// True when the bits of `key` above bit `shift` (exclusive of the current digit) equal the
// selected prefix. `prefix_mask` has ones exactly on the bits already decided.
template <typename Key>
EAD_HD bool key_matches_prefix(Key key, Key prefix, Key prefix_mask) {
  return (key & prefix_mask) == prefix;
}

// Given the histogram `counts[0..nbins)` of one digit among the keys that share the prefix,
// find the bucket that holds the element of rank `rank` (0-based) among them. Returns the
// bucket and writes the rank of that element inside the bucket to *rank_in_bucket.
// Precondition: rank < sum(counts).
template <typename Count>
EAD_HD uint32_t find_rank_bucket(const Count* counts, uint32_t nbins, int64_t rank,
                                 int64_t* rank_in_bucket) {
  int64_t before = 0;
  for (uint32_t b = 0; b < nbins; ++b) {
    const int64_t c = static_cast<int64_t>(counts[b]);
    if (rank < before + c) {
      *rank_in_bucket = rank - before;
      return b;
    }
    before += c;
  }
  *rank_in_bucket = 0;  // unreachable when the precondition holds
  return nbins - 1;
}

}  // namespace efficientad
