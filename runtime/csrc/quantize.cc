// Compress-side kernels: nearest rounding onto a per-channel step grid, and integer histograms.
// They are the arithmetic of passes/quantize/step_rule.py (quantize_array with plain rounding)
// and onnxcomp/coding.py (histograms for size estimates), bit for bit: the Python paths remain
// the fallback and the tests compare the two.
#include <cmath>
#include <cstdint>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "quantize.h"

namespace onnxcomp {
namespace {

constexpr double kLimit = 2147483647.0;        // latents are clipped to +-(2**31 - 1)
constexpr double kRound = 6755399441055744.0;  // 1.5 * 2**52: (x + kRound) - kRound rounds |x| < 2**51
                                               // to the nearest integer, ties to even, as rint does

// One element: clip(rint(w / s)) as int32 (NaN -> INT32_MIN, what numpy's float64 -> int32 cast
// gives on x86). Clipping at integers commutes with rounding, so this equals numpy's clip(rint(x)).
inline int32_t round_clipped(float w, double s) {
  const double x = static_cast<double>(w) / s;
  if (x != x) return INT32_MIN;
  const double clipped = x < -kLimit ? -kLimit : (x > kLimit ? kLimit : x);
  return static_cast<int32_t>((clipped + kRound) - kRound);
}

// n elements; element i's step is step[i] (kPerElement: a row of per-column steps) or step[0].
template <bool kPerElement>
void quantize_run(const float* w, uint64_t n, const float* step, int32_t* k, float* deq, int32_t& lo, int32_t& hi) {
  int32_t low = lo, high = hi;
  uint64_t i = 0;
#if defined(__SSE2__)
  // Four at a time: the same operations in the same order as round_clipped, so the same bits.
  const __m128d vlimit = _mm_set1_pd(kLimit), vnlimit = _mm_set1_pd(-kLimit), vround = _mm_set1_pd(kRound);
  const __m128 vfixed = _mm_set1_ps(step[0]);
  const __m128i vnan = _mm_set1_epi32(INT32_MIN);
  __m128i vlow = _mm_set1_epi32(low), vhigh = _mm_set1_epi32(high);
  for (; i + 4 <= n; i += 4) {
    const __m128 x4 = _mm_loadu_ps(w + i), vstep = kPerElement ? _mm_loadu_ps(step + i) : vfixed;
    const __m128d a = _mm_div_pd(_mm_cvtps_pd(x4), _mm_cvtps_pd(vstep));
    const __m128d b = _mm_div_pd(_mm_cvtps_pd(_mm_movehl_ps(x4, x4)), _mm_cvtps_pd(_mm_movehl_ps(vstep, vstep)));
    // max/min return their second operand for a NaN lane; those lanes are replaced below.
    const __m128d ca = _mm_min_pd(_mm_max_pd(a, vnlimit), vlimit), cb = _mm_min_pd(_mm_max_pd(b, vnlimit), vlimit);
    const __m128i ra = _mm_cvttpd_epi32(_mm_sub_pd(_mm_add_pd(ca, vround), vround));
    const __m128i rb = _mm_cvttpd_epi32(_mm_sub_pd(_mm_add_pd(cb, vround), vround));
    __m128i v = _mm_unpacklo_epi64(ra, rb);
    const __m128i nan_a = _mm_castpd_si128(_mm_cmpunord_pd(a, a)), nan_b = _mm_castpd_si128(_mm_cmpunord_pd(b, b));
    const __m128i nan = _mm_unpacklo_epi64(_mm_shuffle_epi32(nan_a, _MM_SHUFFLE(3, 3, 2, 0)),
                                           _mm_shuffle_epi32(nan_b, _MM_SHUFFLE(3, 3, 2, 0)));
    v = _mm_or_si128(_mm_and_si128(nan, vnan), _mm_andnot_si128(nan, v));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(k + i), v);
    _mm_storeu_ps(deq + i, _mm_mul_ps(_mm_cvtepi32_ps(v), vstep));
    const __m128i below = _mm_cmplt_epi32(v, vlow), above = _mm_cmpgt_epi32(v, vhigh);
    vlow = _mm_or_si128(_mm_and_si128(below, v), _mm_andnot_si128(below, vlow));
    vhigh = _mm_or_si128(_mm_and_si128(above, v), _mm_andnot_si128(above, vhigh));
  }
  alignas(16) int32_t lows[4], highs[4];
  _mm_store_si128(reinterpret_cast<__m128i*>(lows), vlow);
  _mm_store_si128(reinterpret_cast<__m128i*>(highs), vhigh);
  for (int j = 0; j < 4; ++j) {
    low = lows[j] < low ? lows[j] : low;
    high = highs[j] > high ? highs[j] : high;
  }
#endif
  for (; i < n; ++i) {
    const float si = kPerElement ? step[i] : step[0];
    const int32_t v = round_clipped(w[i], static_cast<double>(si));
    k[i] = v;
    deq[i] = static_cast<float>(v) * si;
    low = v < low ? v : low;
    high = v > high ? v : high;
  }
  lo = low;
  hi = high;
}

}  // namespace

void quantize_nearest(const float* w, uint64_t count, const float* step, uint64_t step_count, uint64_t step_stride,
                      int32_t* k, float* deq, int32_t* lo, int32_t* hi) {
  int32_t low = INT32_MAX, high = INT32_MIN;
  if (step_count <= 1) {
    quantize_run<false>(w, count, step, k, deq, low, high);
  } else if (step_stride == 1) {  // a step per last-axis column: rows of step_count elements
    for (uint64_t i = 0; i < count; i += step_count)
      quantize_run<true>(w + i, step_count < count - i ? step_count : count - i, step, k + i, deq + i, low, high);
  } else {  // a step per index of an outer axis: runs of step_stride elements share one
    uint64_t index = 0;
    for (uint64_t i = 0; i < count; i += step_stride) {
      const uint64_t run = step_stride < count - i ? step_stride : count - i;
      quantize_run<false>(w + i, run, step + index, k + i, deq + i, low, high);
      if (++index == step_count) index = 0;
    }
  }
  *lo = count ? low : 0;
  *hi = count ? high : 0;
}

void histogram(const int32_t* values, uint64_t count, int32_t lo, uint64_t bins, uint64_t* counts) {
  for (uint64_t b = 0; b < bins; ++b) counts[b] = 0;
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t b = static_cast<uint64_t>(static_cast<int64_t>(values[i]) - lo);
    if (b < bins) ++counts[b];
  }
}

}  // namespace onnxcomp
