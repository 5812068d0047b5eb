// The ai.onnxcomp decoders in C++ (see decode.h). Written from FORMAT.md; the tests compare every
// output with the Python decoder (constriction) and the pure-Python reference.
#include "decode.h"

#include <cmath>
#include <cstdio>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
#include <vector>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "the ai.onnxcomp native decoder assumes a little-endian host (streams and outputs are little-endian)"
#endif

namespace onnxcomp {
namespace {

// Symbols decoded between two CRC updates: small enough to stay in L1/L2, large enough to
// amortize the call.
constexpr uint64_t kChunk = 1 << 14;
// Tensors of at least this many symbols get a bucket lookup table; smaller ones search the
// cumulative table.
constexpr uint64_t kBucketMinCount = 1 << 14;
constexpr int kBucketBits = 12;  // 16 KB: the table stays in L1 (2^16 buckets: 20% slower)

uint32_t crc_table[8][256];
const bool crc_ready = [] {
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    crc_table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; ++i)
    for (int t = 1; t < 8; ++t) crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
  return true;
}();

const uint8_t kZeroWord[4] = {0, 0, 0, 0};

inline uint32_t load_word(const uint8_t* bytes, uint64_t index) {
  uint32_t w;
  std::memcpy(&w, bytes + 4 * index, 4);
  return w;
}

// A checked table with the lookup structure decoding needs.
struct Table {
  std::vector<uint32_t> cdf;     // K + 1 entries, cdf[0] = 0, cdf[K] = 2^24
  // Empty, or bucket[i] = the symbol holding quantile i << 12, with kMixed set when the bucket's
  // quantiles span more than one symbol (then the decoder searches on from it, up to the symbol
  // of the next bucket: bucket[2^12] = K - 1 is the sentinel).
  std::vector<uint32_t> bucket;
  struct Symbol {
    uint32_t start, frequency;
  };
  std::vector<Symbol> symbols;  // cdf[s], f[s] side by side: one load per decoded symbol
  uint32_t max_frequency = 0;
  static constexpr uint32_t kMixed = 1u << 31;

  bool build(const int32_t* f, uint64_t k, uint64_t count, const char* what, std::string& error) {
    if (k < 2 || k > kMaxSymbols) {
      error = std::string(what) + "frequency table has " + std::to_string(k) + " entries, need 2.." +
              std::to_string(kMaxSymbols);
      return false;
    }
    cdf.resize(k + 1);
    uint64_t total = 0;
    cdf[0] = 0;
    for (uint64_t s = 0; s < k; ++s) {
      if (f[s] < 1) {
        error = std::string(what) + "frequency table has an entry < 1 (at index " + std::to_string(s) + ")";
        return false;
      }
      total += static_cast<uint64_t>(f[s]);
      if (total > kTotal) break;  // the sum check below refuses it; the cdf stays in uint32
      cdf[s + 1] = static_cast<uint32_t>(total);
      if (static_cast<uint32_t>(f[s]) > max_frequency) max_frequency = static_cast<uint32_t>(f[s]);
    }
    if (total != kTotal) {
      error = std::string(what) + "frequency table does not sum to exactly 2**24";
      return false;
    }
    symbols.resize(k);
    for (uint64_t s = 0; s < k; ++s) symbols[s] = {cdf[s], cdf[s + 1] - cdf[s]};
    if (count >= kBucketMinCount) build_buckets();
    return true;
  }

  void build_buckets() {
    const uint64_t k = cdf.size() - 1;
    bucket.resize((size_t{1} << kBucketBits) + 1);
    bucket.back() = static_cast<uint32_t>(k - 1);
    uint32_t s = 0;
    for (uint32_t i = 0; i + 1 < bucket.size(); ++i) {
      const uint32_t q = i << (kPrecision - kBucketBits);
      while (cdf[s + 1] <= q) ++s;
      const uint32_t last = q + (1u << (kPrecision - kBucketBits)) - 1;
      bucket[i] = s | (cdf[s + 1] <= last ? kMixed : 0u);
    }
  }

  // The symbol s with cdf[s] <= q < cdf[s + 1].
  inline uint32_t symbol(uint32_t q) const;
};

// The largest s in [lo, hi] with cdf[s] <= q.
inline uint32_t search_cdf(const uint32_t* cdf, uint32_t q, uint32_t lo, uint32_t hi) {
  while (lo < hi) {
    const uint32_t mid = (lo + hi + 1) / 2;
    if (cdf[mid] <= q) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// The symbol holding quantile q in a table with buckets, from raw pointers (the lockstep loop
// keeps them in registers).
inline uint32_t bucket_symbol(const uint32_t* bucket, const uint32_t* cdf, uint32_t q) {
  const uint32_t b = q >> (kPrecision - kBucketBits);
  const uint32_t e = bucket[b];
  uint32_t s = e & ~Table::kMixed;
  if (!(e & Table::kMixed)) return s;
  const uint32_t last = bucket[b + 1] & ~Table::kMixed;
  if (last - s <= 8) {
    while (cdf[s + 1] <= q) ++s;
    return s;
  }
  return search_cdf(cdf, q, s, last);  // a hostile table's crowded bucket: log2(K) steps, never 2^12
}

inline uint32_t Table::symbol(uint32_t q) const {
  return bucket.empty() ? search_cdf(cdf.data(), q, 0, static_cast<uint32_t>(cdf.size()) - 2)
                        : bucket_symbol(bucket.data(), cdf.data(), q);
}

// The state of one stream while it decodes (FORMAT.md section 3).
struct Decoder {
  const uint8_t* bytes;
  uint64_t words;  // words not yet read; the next one read is words - 1 (the stack's top)
  uint64_t x = 0;

  Decoder(const uint8_t* b, uint64_t num_words) : bytes(b), words(num_words) {
    for (int i = 0; i < 2 && words > 0; ++i) x = (x << 32) | load_word(bytes, --words);
  }

  template <typename Emit>
  inline void decode(const Table& t, uint64_t n, Emit emit) {
    const Table::Symbol* symbols = t.symbols.data();
    uint64_t state = x, left = words;
    for (uint64_t i = 0; i < n; ++i) {
      const uint32_t q = static_cast<uint32_t>(state) & (kTotal - 1);
      const uint32_t s = t.symbol(q);
      const Table::Symbol y = symbols[s];
      state = static_cast<uint64_t>(y.frequency) * (state >> kPrecision) + q - y.start;
      if (state < (uint64_t{1} << 32) && left > 0) state = (state << 32) | load_word(bytes, --left);
      emit(i, s);
    }
    x = state;
    words = left;
  }

  bool ended() const { return words == 0 && x == 0; }
};

bool check_bound(uint64_t num_bytes, uint32_t max_frequency, uint64_t count, const char* what, std::string& error) {
  // Every symbol costs at least 24 - log2(max f) bits; the final state adds at most 64.
  const double min_bits = kPrecision - std::log2(static_cast<double>(max_frequency));
  if (min_bits > 0 && static_cast<double>(count) > (8.0 * static_cast<double>(num_bytes) + kStateBits) / min_bits) {
    error = std::string(what) + "declared " + std::to_string(count) + " values, more than a " +
            std::to_string(num_bytes) + "-byte bitstream can hold under its table";
    return false;
  }
  return true;
}

bool check_bytes(const uint8_t* bytes, uint64_t num_bytes, const char* what, std::string& error) {
  if (num_bytes % 4) {
    error = std::string(what) + "bitstream length " + std::to_string(num_bytes) + " is not divisible by 4";
    return false;
  }
  if (num_bytes && load_word(bytes, num_bytes / 4 - 1) == 0) {
    error = std::string(what) + "bitstream ends in a zero word (never written by an ANS coder)";
    return false;
  }
  return true;
}

std::string crc_mismatch(uint32_t stored, uint32_t decoded) {
  char text[96];
  std::snprintf(text, sizeof text, "CRC mismatch (stored 0x%08x, decoded 0x%08x): tampered or corrupt", stored, decoded);
  return text;
}

}  // namespace

#if defined(__x86_64__) && defined(__GNUC__)
// CRC-32 (zlib's polynomial) of a multiple of 16 bytes, at least 64, by carry-less multiplication:
// four 128-bit lanes folded over the data, then reduced to 32 bits (Gopal et al., "Fast CRC
// Computation for Generic Polynomials Using PCLMULQDQ", Intel 2009). The constants are powers
// of x modulo the bit-reflected polynomial, as every implementation of that paper uses them.
// `c` is the register (the CRC before its final inversion), in and out.
#define ONNXCOMP_CLMUL __attribute__((target("pclmul,sse4.1")))

ONNXCOMP_CLMUL inline __m128i load(const uint8_t* q) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(q)); }

// x folded 128 bits forward by k (its two halves multiplied by k's), plus the next block.
ONNXCOMP_CLMUL inline __m128i fold(__m128i x, __m128i k, __m128i next) {
  return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x11), _mm_clmulepi64_si128(x, k, 0x00)), next);
}

ONNXCOMP_CLMUL uint32_t crc32_fold(uint32_t c, const uint8_t* p, size_t size) {
  const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596, 0x0154442bd4);
  const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009e, 0x01751997d0);
  const __m128i k5k0 = _mm_set_epi64x(0, 0x0163cd6124);
  const __m128i poly = _mm_set_epi64x(0x01f7011641, 0x01db710641);
  __m128i x1 = _mm_xor_si128(load(p), _mm_cvtsi32_si128(static_cast<int>(c)));
  __m128i x2 = load(p + 16), x3 = load(p + 32), x4 = load(p + 48);
  p += 64;
  size -= 64;
  for (; size >= 64; p += 64, size -= 64) {  // four lanes, each folded 512 bits forward
    x1 = fold(x1, k1k2, load(p));
    x2 = fold(x2, k1k2, load(p + 16));
    x3 = fold(x3, k1k2, load(p + 32));
    x4 = fold(x4, k1k2, load(p + 48));
  }
  x1 = fold(fold(fold(x1, k3k4, x2), k3k4, x3), k3k4, x4);  // into one lane
  for (; size >= 16; p += 16, size -= 16) x1 = fold(x1, k3k4, load(p));
  // 128 -> 64 bits
  const __m128i low32 = _mm_setr_epi32(~0, 0, ~0, 0);
  x2 = _mm_clmulepi64_si128(x1, k3k4, 0x10);
  x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), x2);
  x2 = _mm_srli_si128(x1, 4);
  x1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, low32), k5k0, 0x00), x2);
  // Barrett reduction to 32 bits
  x2 = _mm_clmulepi64_si128(_mm_and_si128(x1, low32), poly, 0x10);
  x2 = _mm_clmulepi64_si128(_mm_and_si128(x2, low32), poly, 0x00);
  return static_cast<uint32_t>(_mm_extract_epi32(_mm_xor_si128(x1, x2), 1));
}

const bool has_clmul = [] {
  __builtin_cpu_init();  // a static initializer runs before the CPU model is filled in otherwise
  return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
}();
#endif

uint32_t crc32_update(uint32_t crc, const void* data, size_t size) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint32_t c = ~crc;
#if defined(__x86_64__) && defined(__GNUC__)
  if (has_clmul && size >= 64) {
    const size_t folded = size & ~size_t{15};
    c = crc32_fold(c, p, folded);
    p += folded;
    size -= folded;
  }
#endif
  while (size >= 8) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= c;
    c = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^ crc_table[5][(lo >> 16) & 0xFF] ^
        crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF] ^
        crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
    p += 8;
    size -= 8;
  }
  while (size--) c = crc_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
  return ~c;
}

bool check_stream(const Stream& s, uint64_t count, std::string& error) {
  Table t;
  return check_bytes(s.bytes, s.num_bytes, "", error) && t.build(s.frequencies, s.num_symbols, 0, "", error) &&
         check_bound(s.num_bytes, t.max_frequency, count, "", error);
}

namespace {

// One stream of a batch while it decodes.
struct Lane {
  BatchItem* item = nullptr;
  Table table;
  Decoder decoder{nullptr, 0};
  uint64_t done = 0;
  uint32_t crc = 0;
  std::vector<int32_t> values = std::vector<int32_t>(kChunk);
};

// Checks an item (FORMAT.md section 4); false, with the item's error set, when it cannot start.
bool start_lane(Lane& lane, BatchItem& item) {
  lane.item = &item;
  lane.done = 0;
  lane.crc = 0;
  if (!item.error.empty()) return false;  // refused by the caller before decoding
  const Stream& s = item.stream;
  if (item.count > kMaxElements) {
    item.error = "declared " + std::to_string(item.count) + " values, over the format's " + std::to_string(kMaxElements);
    return false;
  }
  lane.table = Table{};
  if (!check_bytes(s.bytes, s.num_bytes, "", item.error) ||
      !lane.table.build(s.frequencies, s.num_symbols, item.count, "", item.error) ||
      !check_bound(s.num_bytes, lane.table.max_frequency, item.count, "", item.error))
    return false;
  if (static_cast<int64_t>(item.offset) + static_cast<int64_t>(s.num_symbols) - 1 > INT32_MAX) {
    item.error = "offset " + std::to_string(item.offset) + " with " + std::to_string(s.num_symbols) +
                 " symbols puts decoded values outside int32";
    return false;
  }
  lane.decoder = Decoder(s.bytes, s.num_bytes / 4);
  return true;
}

void finish_lane(Lane& lane) {
  BatchItem& item = *lane.item;
  if (!lane.decoder.ended()) {
    item.error = "bitstream has data left after " + std::to_string(item.count) +
                 " symbols (truncated table, shape or stream)";
  } else if (lane.crc != item.crc32) {
    item.error = crc_mismatch(item.crc32, lane.crc);
  } else {
    item.ok = true;
  }
  lane.item = nullptr;
}

// n symbols of each of N lanes, one symbol of every lane per step.
template <int N>
void decode_lockstep(Lane* const* lanes, uint64_t n) {
  uint64_t x[N], left[N];
  const uint8_t* bytes[N];
  const uint32_t* bucket[N];
  const uint32_t* cdf[N];
  const Table::Symbol* symbols[N];
  int32_t* out[N];
  int32_t offset[N];
  for (int k = 0; k < N; ++k) {
    Lane& lane = *lanes[k];
    if (lane.table.bucket.empty()) lane.table.build_buckets();
    x[k] = lane.decoder.x;
    left[k] = lane.decoder.words;
    // The refill below reads a word whether it is taken or not (no branch to mispredict), so a
    // stream with no words at all reads a zero word of our own instead.
    bytes[k] = lane.item->stream.num_bytes >= 4 ? lane.decoder.bytes : kZeroWord;
    bucket[k] = lane.table.bucket.data();
    cdf[k] = lane.table.cdf.data();
    symbols[k] = lane.table.symbols.data();
    out[k] = lane.values.data();
    offset[k] = lane.item->offset;
  }
  for (uint64_t i = 0; i < n; ++i) {
#pragma GCC unroll 4
    for (int k = 0; k < N; ++k) {
      const uint32_t q = static_cast<uint32_t>(x[k]) & (kTotal - 1);
      const uint32_t s = bucket_symbol(bucket[k], cdf[k], q);
      const Table::Symbol y = symbols[k][s];
      x[k] = static_cast<uint64_t>(y.frequency) * (x[k] >> kPrecision) + q - y.start;
      // Refill without a branch: the state needs a word about once every 32 / (bits per symbol)
      // symbols, at random, which a branch mispredicts every time.
      const uint64_t has = left[k] > 0;
      const uint64_t word = load_word(bytes[k], left[k] - has);
      const uint64_t refill = has & ((x[k] >> 32) == 0);
      x[k] = refill ? (x[k] << 32) | word : x[k];
      left[k] -= refill;
      out[k][i] = static_cast<int32_t>(s) + offset[k];
    }
  }
  for (int k = 0; k < N; ++k) {
    lanes[k]->decoder.x = x[k];
    lanes[k]->decoder.words = left[k];
  }
}

}  // namespace

void entropy_decode_batch(BatchItem* items, size_t n) {
  (void)crc_ready;
  constexpr int kLanes = 4;
  Lane lanes[kLanes];
  Lane* active[kLanes];
  int count = 0;
  size_t next = 0;
  for (;;) {
    for (int k = 0; k < kLanes && count < kLanes; ++k) {  // fill idle lanes from the queue
      if (lanes[k].item) continue;
      while (next < n) {
        BatchItem& item = items[next++];
        if (!start_lane(lanes[k], item)) {
          lanes[k].item = nullptr;
          continue;
        }
        if (item.count == 0) {
          finish_lane(lanes[k]);
          continue;
        }
        break;
      }
      if (lanes[k].item) ++count;
    }
    if (count == 0) return;
    int m = 0;
    uint64_t step = kChunk;
    for (Lane& lane : lanes) {
      if (!lane.item) continue;
      active[m++] = &lane;
      const uint64_t left = lane.item->count - lane.done;
      if (left < step) step = left;
    }
    switch (m) {
      case 4: decode_lockstep<4>(active, step); break;
      case 3: decode_lockstep<3>(active, step); break;
      case 2: decode_lockstep<2>(active, step); break;
      default: decode_lockstep<1>(active, step); break;
    }
    for (int k = 0; k < m; ++k) {
      Lane& lane = *active[k];
      lane.crc = crc32_update(lane.crc, lane.values.data(), step * 4);
      lane.item->sink(lane.item->context, lane.values.data(), lane.done, step);
      lane.done += step;
      if (lane.done == lane.item->count) {
        finish_lane(lane);
        --count;
      }
    }
  }
}

bool entropy_decode(const Stream& s, int32_t offset, uint64_t count, uint32_t crc32, int32_t* out,
                    std::string& error) {
  BatchItem item{s, offset, count, crc32,
                 [](void* context, const int32_t* values, uint64_t start, uint64_t n) {
                   std::memcpy(static_cast<int32_t*>(context) + start, values, n * sizeof(int32_t));
                 },
                 out};
  entropy_decode_batch(&item, 1);
  error = item.error;
  return item.ok;
}

bool check_byte_planes(const uint8_t* bitstream, uint64_t num_bytes, const int64_t* stream_bytes,
                       const int32_t* frequencies, int width, uint64_t count, std::string& error) {
  if (width != 2 && width != 4) {
    error = "BytePlaneDecode element width " + std::to_string(width) + " is not 2 or 4";
    return false;
  }
  if (count > kMaxElements) {
    error = "declared " + std::to_string(count) + " values, over the format's " + std::to_string(kMaxElements);
    return false;
  }
  uint64_t start = 0;
  for (int j = 0; j < width; ++j) {
    if (stream_bytes[j] < 0 || stream_bytes[j] % 4 || static_cast<uint64_t>(stream_bytes[j]) > num_bytes - start) {
      error = "stream_bytes must be multiples of 4 summing to the bitstream's " + std::to_string(num_bytes) + " bytes";
      return false;
    }
    const Stream plane{bitstream + start, static_cast<uint64_t>(stream_bytes[j]), frequencies + j * kPlaneSymbols,
                       kPlaneSymbols};
    if (!check_stream(plane, count, error)) {
      error = "plane " + std::to_string(j) + ": " + error;
      return false;
    }
    start += plane.num_bytes;
  }
  if (start != num_bytes) {
    error = "stream_bytes must be multiples of 4 summing to the bitstream's " + std::to_string(num_bytes) + " bytes";
    return false;
  }
  return true;
}

bool byte_plane_decode(const uint8_t* bitstream, uint64_t num_bytes, const int64_t* stream_bytes,
                       const int32_t* frequencies, int width, uint64_t count, uint32_t crc32, void* out,
                       std::string& error) {
  if (!check_byte_planes(bitstream, num_bytes, stream_bytes, frequencies, width, count, error)) return false;
  std::vector<Table> tables(width);
  std::vector<Decoder> planes;
  uint64_t start = 0;
  for (int j = 0; j < width; ++j) {  // checked above: the tables build
    tables[j].build(frequencies + j * kPlaneSymbols, kPlaneSymbols, count, "", error);
    planes.emplace_back(bitstream + start, static_cast<uint64_t>(stream_bytes[j]) / 4);
    start += static_cast<uint64_t>(stream_bytes[j]);
  }
  std::vector<uint32_t> rotated(kChunk);
  uint8_t* dst = static_cast<uint8_t*>(out);
  uint32_t crc = 0;
  const int bits = 8 * width;
  for (uint64_t done = 0; done < count;) {
    const uint64_t n = count - done < kChunk ? count - done : kChunk;
    std::fill(rotated.begin(), rotated.begin() + n, 0u);
    for (int j = 0; j < width; ++j) {
      const int shift = 8 * (width - 1 - j);
      planes[j].decode(tables[j], n, [&](uint64_t i, uint32_t sym) { rotated[i] |= sym << shift; });
    }
    uint8_t* chunk = dst + done * width;
    if (width == 4) {
      for (uint64_t i = 0; i < n; ++i) {
        const uint32_t v = rotated[i];
        const uint32_t u = (v >> 1) | (v << 31);
        std::memcpy(chunk + 4 * i, &u, 4);
      }
    } else {
      for (uint64_t i = 0; i < n; ++i) {
        const uint32_t v = rotated[i];
        const uint16_t u = static_cast<uint16_t>(((v >> 1) | (v << (bits - 1))) & 0xFFFFu);
        std::memcpy(chunk + 2 * i, &u, 2);
      }
    }
    crc = crc32_update(crc, chunk, n * width);
    done += n;
  }
  for (int j = 0; j < width; ++j) {
    if (!planes[j].ended()) {
      error = "plane " + std::to_string(j) + ": bitstream has data left after " + std::to_string(count) +
              " symbols (truncated table, shape or stream)";
      return false;
    }
  }
  if (crc != crc32) {
    error = crc_mismatch(crc32, crc);
    return false;
  }
  return true;
}

}  // namespace onnxcomp
