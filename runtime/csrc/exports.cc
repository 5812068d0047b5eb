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

#include "decode.h"

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
  uint64_t step_count, row_length;
};

// float(v) * step, one rounding each as onnxruntime's Cast(to float32) then Mul.
void store_scaled(void* context, const int32_t* values, uint64_t start, uint64_t n) {
  const Scaled& s = *static_cast<const Scaled*>(context);
  float* out = s.out + start;
  if (s.step_count <= 1) {
    const float step = s.step[0];
    for (uint64_t i = 0; i < n; ++i) out[i] = static_cast<float>(values[i]) * step;
    return;
  }
  for (uint64_t i = 0; i < n;) {
    const uint64_t row = (start + i) / s.row_length;
    const uint64_t row_end = (row + 1) * s.row_length - start;
    const float step = s.step[row];
    for (const uint64_t e = row_end < n ? row_end : n; i < e; ++i) out[i] = static_cast<float>(values[i]) * step;
  }
}

}  // namespace

// Version of this C interface (bumped when a signature below changes).
ONNXCOMP_EXPORT int onnxcomp_native_abi_version() { return 1; }

// One EntropyDecode stream into `out`, of `out_type`: 6 int32; 3 int8 or 5 int16 (the table's
// range offset .. offset + K - 1 must fit); 1 float32 = the decoded value times a step (the graph's
// Cast -> Mul folded): `step[0]` for every value when step_count <= 1, else step[i / row_length]
// (one step per row of axis 0; step_count * row_length == count).
ONNXCOMP_EXPORT int onnxcomp_entropy_decode(const uint8_t* bitstream, uint64_t num_bytes, const int32_t* frequencies,
                                            uint64_t num_symbols, int32_t offset, uint64_t count, uint32_t crc32,
                                            void* out, int32_t out_type, const float* step, uint64_t step_count,
                                            uint64_t row_length, char* error, uint64_t error_size) {
  std::string message;
  const onnxcomp::Stream stream{bitstream, num_bytes, frequencies, num_symbols};
  try {
    bool ok = false;
    if (out_type == kInt32) {
      ok = onnxcomp::entropy_decode(stream, offset, count, crc32, static_cast<int32_t*>(out), message);
    } else if (out_type == kInt8 || out_type == kInt16) {
      const int64_t lo = out_type == kInt8 ? std::numeric_limits<int8_t>::min() : std::numeric_limits<int16_t>::min();
      const int64_t hi = out_type == kInt8 ? std::numeric_limits<int8_t>::max() : std::numeric_limits<int16_t>::max();
      if (offset < lo || static_cast<int64_t>(offset) + static_cast<int64_t>(num_symbols) - 1 > hi)
        return fail("the table's range does not fit the requested integer type", error, error_size);
      ok = onnxcomp::entropy_decode(stream, offset, count, crc32,
                                    out_type == kInt8 ? store_narrow<int8_t> : store_narrow<int16_t>, out, message);
    } else if (out_type == kFloat) {
      if (!step || (step_count > 1 && step_count * row_length != count))
        return fail("scaled decode: " + std::to_string(step_count) + " steps do not tile " + std::to_string(count) +
                        " values in rows of " + std::to_string(row_length),
                    error, error_size);
      Scaled scaled{static_cast<float*>(out), step, step_count, row_length};
      ok = onnxcomp::entropy_decode(stream, offset, count, crc32, store_scaled, &scaled, message);
    } else {
      return fail("unknown output type " + std::to_string(out_type), error, error_size);
    }
    if (ok) return 0;
  } catch (const std::bad_alloc&) {
    message = "out of memory while decoding";
  }
  return fail(message, error, error_size);
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
