// C entry points of the decoders for hosts that call them directly (onnxcomp's Python runtime,
// through ctypes: a foreign call releases the GIL, so threads decode on every core).
//
// Each returns 0 on success, or 1 with a NUL-terminated message in `error` (at most
// `error_size` bytes). They never throw across the C boundary. On failure the output may hold
// part of a decode: callers discard it.
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "decode.h"
#include "quantize.h"

#define ONNXCOMP_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

// Output types of onnxcomp_entropy_decode (TensorProto data types).
constexpr int32_t kFloat = 1, kInt8 = 3, kInt16 = 5, kInt32 = 6;

int fail(const std::string& message, char* error, uint64_t error_size) {
  if (error && error_size) {
    const size_t n = message.size() < error_size - 1 ? message.size() : error_size - 1;
    std::memcpy(error, message.data(), n);
    error[n] = '\0';
  }
  return 1;
}

template <typename T>
void store_narrow(void* context, const int32_t* values, uint64_t start, uint64_t n) {
  T* out = static_cast<T*>(context) + start;
  for (uint64_t i = 0; i < n; ++i) out[i] = static_cast<T>(values[i]);
}

struct Scaled {
  float* out;
  const float* step;
  uint64_t step_count, step_stride;
};

// float(v) * step, one rounding each as onnxruntime's Cast(to float32) then Mul. Element i takes
// step[(i / step_stride) % step_count]: one step per row (stride = row length), per last-axis
// column (stride 1), or per any one axis.
void store_scaled(void* context, const int32_t* values, uint64_t start, uint64_t n) {
  const Scaled& s = *static_cast<const Scaled*>(context);
  float* out = s.out + start;
  if (s.step_count <= 1) {
    const float step = s.step[0];
    for (uint64_t i = 0; i < n; ++i) out[i] = static_cast<float>(values[i]) * step;
    return;
  }
  if (s.step_stride == 1) {  // a step per last-axis column: whole rows against the step vector
    uint64_t column = start % s.step_count;
    for (uint64_t i = 0; i < n;) {
      const uint64_t run = s.step_count - column < n - i ? s.step_count - column : n - i;
      const float* step = s.step + column;
      for (uint64_t j = 0; j < run; ++j) out[i + j] = static_cast<float>(values[i + j]) * step[j];
      i += run;
      column = 0;
    }
    return;
  }
  uint64_t within = start % s.step_stride, index = (start / s.step_stride) % s.step_count;
  for (uint64_t i = 0; i < n;) {
    const float step = s.step[index];
    const uint64_t run = s.step_stride - within < n - i ? s.step_stride - within : n - i;
    for (const uint64_t e = i + run; i < e; ++i) out[i] = static_cast<float>(values[i]) * step;
    within += run;
    if (within == s.step_stride) {
      within = 0;
      if (++index == s.step_count) index = 0;
    }
  }
}

}  // namespace

// Version of this C interface (bumped when a signature below changes).
ONNXCOMP_EXPORT int onnxcomp_native_abi_version() { return 3; }

// A batch of EntropyDecode streams (decode.h: entropy_decode_batch interleaves four at a time),
// each written to `out` as `out_type`: 6 int32; 3 int8 or 5 int16 (the table's range offset ..
// offset + K - 1 must fit); 1 float32 = the decoded value times a step (the graph's Cast -> Mul
// folded): `step[0]` for every value when step_count <= 1, else step[(i / step_stride) % step_count]
// (a step per index of one axis; step_count * step_stride divides count). `status` (0 ok,
// 1 failed) and `error` are written per job. Returns how many failed.
struct DecodeJob {
  const uint8_t* bitstream;
  uint64_t num_bytes;
  const int32_t* frequencies;
  uint64_t num_symbols;
  int32_t offset;
  uint32_t crc32;
  uint64_t count;
  void* out;
  int32_t out_type;
  const float* step;
  uint64_t step_count;
  uint64_t step_stride;
  int32_t status;
  char error[256];
};

template <typename T>
void store_direct(void* context, const int32_t* values, uint64_t start, uint64_t n) {
  std::memcpy(static_cast<T*>(context) + start, values, n * sizeof(T));
}

ONNXCOMP_EXPORT uint64_t onnxcomp_entropy_decode_batch(DecodeJob* jobs, uint64_t n) {
  std::vector<onnxcomp::BatchItem> items(n);
  std::vector<Scaled> scaled(n);
  uint64_t failed = 0;
  try {
    for (uint64_t i = 0; i < n; ++i) {
      DecodeJob& j = jobs[i];
      onnxcomp::BatchItem& item = items[i];
      item.stream = {j.bitstream, j.num_bytes, j.frequencies, j.num_symbols};
      item.offset = j.offset;
      item.count = j.count;
      item.crc32 = j.crc32;
      item.context = j.out;
      if (j.out_type == kInt32) {
        item.sink = store_direct<int32_t>;
      } else if (j.out_type == kInt8 || j.out_type == kInt16) {
        const int64_t lo = j.out_type == kInt8 ? INT8_MIN : INT16_MIN, hi = j.out_type == kInt8 ? INT8_MAX : INT16_MAX;
        if (j.offset < lo || static_cast<int64_t>(j.offset) + static_cast<int64_t>(j.num_symbols) - 1 > hi) {
          item.count = UINT64_MAX;  // refused below, before decoding
          item.error = "the table's range does not fit the requested integer type";
        }
        item.sink = j.out_type == kInt8 ? store_narrow<int8_t> : store_narrow<int16_t>;
      } else if (j.out_type == kFloat && j.step &&
                 (j.step_count <= 1 || j.count == 0 || (j.step_stride && j.count % (j.step_count * j.step_stride) == 0))) {
        scaled[i] = {static_cast<float*>(j.out), j.step, j.step_count, j.step_stride};
        item.sink = store_scaled;
        item.context = &scaled[i];
      } else {
        item.count = UINT64_MAX;
        item.error = "unknown output type or steps that do not tile the values";
      }
    }
    onnxcomp::entropy_decode_batch(items.data(), items.size());
  } catch (const std::bad_alloc&) {
    for (auto& item : items) {
      if (item.ok) continue;
      item.error = "out of memory while decoding";
    }
  }
  for (uint64_t i = 0; i < n; ++i) {
    jobs[i].status = items[i].ok ? 0 : 1;
    failed += !items[i].ok;
    std::string message = items[i].ok ? "" : items[i].error;
    fail(message, jobs[i].error, sizeof jobs[i].error);
  }
  return failed;
}

// One BytePlaneDecode node: `width` (4 float32, 2 float16) plane streams back to back, their byte
// lengths stream_bytes[width], tables frequencies[width * 256]; count * width bytes into `out`.
ONNXCOMP_EXPORT int onnxcomp_byte_plane_decode(const uint8_t* bitstream, uint64_t num_bytes,
                                               const int64_t* stream_bytes, const int32_t* frequencies, int32_t width,
                                               uint64_t count, uint32_t crc32, void* out, char* error,
                                               uint64_t error_size) {
  std::string message;
  try {
    if (onnxcomp::byte_plane_decode(bitstream, num_bytes, stream_bytes, frequencies, width, count, crc32, out,
                                    message))
      return 0;
  } catch (const std::bad_alloc&) {
    message = "out of memory while decoding";
  }
  return fail(message, error, error_size);
}

// Nearest rounding of float32 weights onto a step grid (quantize.h: quantize_nearest), the
// compressor's per-tensor unit; steps tile as in onnxcomp_entropy_decode_batch. Never fails.
ONNXCOMP_EXPORT void onnxcomp_quantize_nearest(const float* w, uint64_t count, const float* step, uint64_t step_count,
                                               uint64_t step_stride, int32_t* k, float* deq, int32_t* lo_hi) {
  onnxcomp::quantize_nearest(w, count, step, step_count, step_stride, k, deq, lo_hi, lo_hi + 1);
}

// counts[b] = how many of the int32 `values` equal lo + b, b < bins.
ONNXCOMP_EXPORT void onnxcomp_histogram_int32(const int32_t* values, uint64_t count, int32_t lo, uint64_t bins,
                                              uint64_t* counts) {
  onnxcomp::histogram(values, count, lo, bins, counts);
}
