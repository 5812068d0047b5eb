// Compress-side kernels (quantize.cc).
#pragma once
#include <cstdint>

namespace onnxcomp {

// k[i] = clip(rint(double(w[i]) / double(step_i)), +-(2**31 - 1)) and deq[i] = float(k[i]) * step_i,
// with step_i = step[0] when step_count <= 1, else step[(i / step_stride) % step_count] (the
// caller checks the layout tiles count). lo/hi: the range of k (0, 0 when count is 0).
void quantize_nearest(const float* w, uint64_t count, const float* step, uint64_t step_count, uint64_t step_stride,
                      int32_t* k, float* deq, int32_t* lo, int32_t* hi);

// counts[b] = how many values equal lo + b, for b < bins (values outside are not counted).
void histogram(const int32_t* values, uint64_t count, int32_t lo, uint64_t bins, uint64_t* counts);

}  // namespace onnxcomp
