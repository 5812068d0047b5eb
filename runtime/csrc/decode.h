// The ai.onnxcomp decoders (FORMAT.md sections 2-4 and 7) in C++: no onnxruntime, no Python.
//
// Every function checks what the spec says a decoder must check before it writes anything
// (table, stream length, how many symbols the stream can hold), then decodes, then checks that
// the stream ended where encoding began and that the CRC-32 matches. A failure returns false
// with a message in `error`; nothing here throws, aborts or trusts a size it was given.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace onnxcomp {

// Numbers of FORMAT.md (runtime/format.py is their Python source; tests compare the two).
constexpr int kPrecision = 24;
constexpr uint32_t kTotal = 1u << kPrecision;
constexpr uint64_t kMaxSymbols = 1ull << 24;
constexpr uint64_t kMaxElements = 1ull << 33;
constexpr int kMaxRank = 16;
constexpr int kStateBits = 64;
constexpr int kPlaneSymbols = 256;

// One ANS stream of FORMAT.md section 3 under one table. `words` are the stream's bytes, read
// as little-endian uint32 (no alignment needed). Writes `count` values `symbol + offset`.
struct Stream {
  const uint8_t* bytes;
  uint64_t num_bytes;
  const int32_t* frequencies;
  uint64_t num_symbols;
};

// Checks of section 4 that need no decoding: length % 4, table entries >= 1 summing to 2^24,
// 2 <= K <= 2^24, a non-empty stream's last word non-zero, and count within what the stream can
// hold (count * (24 - log2(max f)) <= 8 * bytes + 64).
bool check_stream(const Stream& s, uint64_t count, std::string& error);

// Values handed over in chunks: values[0..n) are elements start..start+n. They are only valid
// once the decode returns success (the end-of-stream and CRC checks come after the last chunk).
using ChunkSink = void (*)(void* context, const int32_t* values, uint64_t start, uint64_t n);

// EntropyDecode of one stream into int32: check_stream, offset + K - 1 within int32, decode,
// end-of-stream, CRC (a batch of one, below).
bool entropy_decode(const Stream& s, int32_t offset, uint64_t count, uint32_t crc32, int32_t* out,
                    std::string& error);

// Many EntropyDecode streams, decoded four at a time in lockstep: each stream's next symbol
// depends on its previous one, so one stream leaves the core waiting on that chain; four
// independent chains overlap (2.3x the symbols per second of one, measured). Each item is
// checked, decoded and finished as FORMAT.md says; a failing item gets its error and the others
// go on. Values reach each item's sink in chunks, in order.
struct BatchItem {
  Stream stream;
  int32_t offset;
  uint64_t count;
  uint32_t crc32;
  ChunkSink sink;
  void* context;
  bool ok = false;    // out
  std::string error;  // out
};
void entropy_decode_batch(BatchItem* items, size_t n);

// The checks of BytePlaneDecode that need no decoding (FORMAT.md section 7): width 2 or 4, count
// within the format, stream_bytes multiples of 4 that fit and sum to num_bytes, and every plane
// as check_stream checks a stream. byte_plane_decode runs them first; a caller that allocates its
// output only for a valid node (the onnxruntime kernel) runs them before it allocates.
bool check_byte_planes(const uint8_t* bitstream, uint64_t num_bytes, const int64_t* stream_bytes,
                       const int32_t* frequencies, int width, uint64_t count, std::string& error);

// BytePlaneDecode: `width` planes (4: float32, 2: float16), their streams back to back in
// `bitstream` with byte lengths `stream_bytes[width]`, tables `frequencies[width * 256]`.
// `out` receives count * width bytes (the elements' little-endian bits).
bool byte_plane_decode(const uint8_t* bitstream, uint64_t num_bytes, const int64_t* stream_bytes,
                       const int32_t* frequencies, int width, uint64_t count, uint32_t crc32, void* out,
                       std::string& error);

// CRC-32 of zlib (IEEE 802.3, reflected 0xEDB88320), continuing from `crc`.
uint32_t crc32_update(uint32_t crc, const void* data, size_t size);

}  // namespace onnxcomp
