// The ai.onnxcomp operators for onnxruntime: EntropyDecode and BytePlaneDecode (float32 output)
// as a custom-op library any onnxruntime host loads (RegisterCustomOps below).
//
// A kernel whose inputs are initializers (every file onnxcomp writes) decodes once, when the
// session creates it: a bad node fails session creation with a message naming it, and every Run
// copies the kernel's decoded tensor out. Inputs fed at Run time (not constants) are checked and
// decoded on each Run. Checks are those of FORMAT.md sections 2-4 and 7 and the per-node decode
// budget of section 8; the file's seal (section 8) is the loader's to check, since a kernel sees
// its node's inputs only.
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "decode.h"
#include "ort_abi.h"

#define ONNXCOMP_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

using onnxcomp::ort::Api;

Api api;  // loaded once, by the first RegisterCustomOps
std::atomic<uint64_t> kernel_decodes{0};  // nodes decoded by kernels, at creation or in Runs

constexpr const char* kDomain = "ai.onnxcomp";
constexpr int64_t kFormatVersion = 1;  // of both ops' `format_version` attribute
constexpr int kInputs = 4;
// Decode budget (FORMAT.md section 8), per node here as in onnxcomp's Python custom op.
constexpr uint64_t kMinDecodedBytes = uint64_t{256} << 20;
constexpr uint64_t kMaxExpansion = 1024;
constexpr const char* kBudgetEnv = "ONNXCOMP_MAX_DECODED_BYTES";

enum class Kind { kEntropyDecode, kBytePlaneDecode };

struct OpDef : OrtCustomOp {
  Kind kind;
  const char* name;
  ONNXTensorElementDataType inputs[kInputs];
  ONNXTensorElementDataType output;
};

// A tensor input as the checks need it.
struct Tensor {
  const void* data = nullptr;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> dims;
  uint64_t count = 0;
  uint64_t bytes = 0;
};

bool ok(OrtStatus* status, std::string& error) {
  if (!status) return true;
  error = api.GetErrorMessage(status);
  api.ReleaseStatus(status);
  return false;
}

uint64_t element_size(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return 1;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return 2;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return 4;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return 8;
    default: return 0;
  }
}

bool read_tensor(const OrtValue* value, Tensor& t, std::string& error) {
  if (!value) {
    error = "input is missing";
    return false;
  }
  OrtTensorTypeAndShapeInfo* info = nullptr;
  if (!ok(api.GetTensorTypeAndShape(value, &info), error)) return false;
  size_t rank = 0;
  bool good = ok(api.GetTensorElementType(info, &t.type), error) && ok(api.GetDimensionsCount(info, &rank), error);
  if (good) {
    t.dims.assign(rank, 0);
    good = ok(api.GetDimensions(info, t.dims.data(), rank), error);
  }
  api.ReleaseTensorTypeAndShapeInfo(info);
  if (!good) return false;
  t.count = 1;
  for (int64_t d : t.dims) t.count *= static_cast<uint64_t>(d);  // onnxruntime's own tensor: sizes are real
  t.bytes = t.count * element_size(t.type);
  void* data = nullptr;
  if (!ok(api.GetTensorMutableData(const_cast<OrtValue*>(value), &data), error)) return false;
  t.data = data;
  return true;
}

const char* type_name(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: return "int16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    default: return "another type";
  }
}

bool expect(const Tensor& t, const char* what, ONNXTensorElementDataType type, size_t rank, std::string& error) {
  if (t.type != type || t.dims.size() != rank) {
    error = std::string(what) + " must be a " + std::to_string(rank) + "-D " + type_name(type) + " tensor, got " +
            type_name(t.type) + " of rank " + std::to_string(t.dims.size());
    return false;
  }
  return true;
}

// The declared output shape (FORMAT.md section 4): 1-D int64, rank <= 16, entries >= 0, at most
// 2^33 elements.
bool output_shape(const Tensor& shape, std::vector<int64_t>& dims, uint64_t& count, std::string& error) {
  if (!expect(shape, "shape", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, 1, error)) return false;
  if (shape.count > static_cast<uint64_t>(onnxcomp::kMaxRank)) {
    error = "shape has rank " + std::to_string(shape.count) + ", more than " + std::to_string(onnxcomp::kMaxRank);
    return false;
  }
  dims.assign(static_cast<const int64_t*>(shape.data), static_cast<const int64_t*>(shape.data) + shape.count);
  bool zero = false;
  for (int64_t d : dims) {
    if (d < 0) {
      error = "negative dimension " + std::to_string(d) + " in the declared shape";
      return false;
    }
    zero |= d == 0;
  }
  count = zero ? 0 : 1;
  for (int64_t d : dims) {
    if (zero) break;
    if (count > onnxcomp::kMaxElements / static_cast<uint64_t>(d)) {
      error = "declared shape exceeds " + std::to_string(onnxcomp::kMaxElements) + " elements";
      return false;
    }
    count *= static_cast<uint64_t>(d);
  }
  return true;
}

bool within_budget(uint64_t declared, uint64_t coded, std::string& error) {
  uint64_t budget = coded > kMinDecodedBytes / kMaxExpansion ? kMaxExpansion * coded : kMinDecodedBytes;
  if (const char* env = std::getenv(kBudgetEnv); env && *env) {
    char* end = nullptr;
    const double value = std::strtod(env, &end);
    if (end == env || !std::isfinite(value) || value < 0) {
      error = std::string(kBudgetEnv) + "=" + env + " is not a number of bytes";
      return false;
    }
    budget = value >= 1.8e19 ? UINT64_MAX : static_cast<uint64_t>(value);
  }
  if (declared > budget) {
    error = "declares " + std::to_string(declared) + " decoded bytes from " + std::to_string(coded) +
            " coded bytes, over the decode budget of " + std::to_string(budget) +
            " bytes (max(256 MiB, 1024x the coded bytes)); if you trust the file, raise it with " + kBudgetEnv;
    return false;
  }
  return true;
}

struct Kernel {
  Kind kind;
  std::string where;  // names the node in every message
  int64_t crc32 = 0;
  // Decoded at session creation from constant inputs (those pointers), served to every Run.
  bool cached = false;
  const void* cached_inputs[kInputs] = {};
  std::vector<int64_t> dims;
  std::vector<unsigned char> values;
};

// Checks a node's four inputs and decodes them into memory from `allocate(dims, bytes)`.
template <typename Allocate>
bool decode_node(const Kernel& k, const Tensor (&in)[kInputs], Allocate allocate, std::string& error) {
  std::vector<int64_t> dims;
  uint64_t count = 0;
  if (!output_shape(in[3], dims, count, error)) return false;
  uint64_t coded = 0;
  for (const Tensor& t : in) coded += t.bytes;
  if (k.kind == Kind::kEntropyDecode) {
    if (!expect(in[0], "bitstream", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, 1, error) ||
        !expect(in[1], "frequencies", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, 1, error))
      return false;
    if (in[2].type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 || in[2].count != 1 || in[2].dims.size() > 1) {
      error = "offset must be an int32 scalar";
      return false;
    }
    const onnxcomp::Stream stream{static_cast<const uint8_t*>(in[0].data), in[0].count,
                                  static_cast<const int32_t*>(in[1].data), in[1].count};
    if (!onnxcomp::check_stream(stream, count, error) || !within_budget(4 * count, coded, error)) return false;
    void* out = allocate(dims, 4 * count, error);
    kernel_decodes.fetch_add(1, std::memory_order_relaxed);
    return out && onnxcomp::entropy_decode(stream, *static_cast<const int32_t*>(in[2].data), count,
                                           static_cast<uint32_t>(k.crc32), static_cast<int32_t*>(out), error);
  }
  constexpr int kWidth = 4;  // float32 output (float16 ones decode at load)
  if (!expect(in[0], "bitstream", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, 1, error) ||
      !expect(in[1], "stream_bytes", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, 1, error) ||
      !expect(in[2], "frequencies", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, 2, error))
    return false;
  if (in[1].count != kWidth || in[2].dims[0] != kWidth || in[2].dims[1] != onnxcomp::kPlaneSymbols) {
    error = "stream_bytes must be int64[4] and frequencies int32[4, 256] for a float32 output";
    return false;
  }
  if (!within_budget(kWidth * count, coded, error)) return false;
  // Allocate only for a node that can decode (byte_plane_decode runs the same checks first).
  const int64_t* sizes = static_cast<const int64_t*>(in[1].data);
  if (!onnxcomp::check_byte_planes(static_cast<const uint8_t*>(in[0].data), in[0].count, sizes,
                                   static_cast<const int32_t*>(in[2].data), kWidth, count, error))
    return false;
  void* out = allocate(dims, kWidth * count, error);
  kernel_decodes.fetch_add(1, std::memory_order_relaxed);
  return out && onnxcomp::byte_plane_decode(static_cast<const uint8_t*>(in[0].data), in[0].count, sizes,
                                            static_cast<const int32_t*>(in[2].data), kWidth, count,
                                            static_cast<uint32_t>(k.crc32), out, error);
}

OrtStatus* failure(const Kernel& k, const std::string& error) {
  return api.CreateStatus(ORT_INVALID_ARGUMENT, ("onnxcomp: " + k.where + ": " + error).c_str());
}

OrtStatus* create_kernel(const OrtCustomOp* op, const OrtApi*, const OrtKernelInfo* info, void** kernel) {
  const OpDef& def = *static_cast<const OpDef*>(op);
  *kernel = nullptr;
  Kernel* k = nullptr;
  try {
    k = new Kernel{};
    k->kind = def.kind;
    std::string name;
    size_t size = 0;
    std::string error;
    if (ok(api.KernelInfo_GetNodeName(info, nullptr, &size), error) && size > 1) {
      name.resize(size);
      if (ok(api.KernelInfo_GetNodeName(info, name.data(), &size), error)) name.resize(size - 1); else name.clear();
    }
    k->where = std::string(kDomain) + "::" + def.name + (name.empty() ? std::string(" node (unnamed)") : " node '" + name + "'");
    int64_t version = -1, to = 1;
    if (!ok(api.KernelInfoGetAttribute_int64(info, "format_version", &version), error)) version = -1;
    if (version != kFormatVersion) {
      OrtStatus* s = failure(*k, "format_version " + std::to_string(version) + " is not supported (this library reads " +
                                     std::to_string(kFormatVersion) + "); upgrade onnxcomp");
      delete k;
      return s;
    }
    if (!ok(api.KernelInfoGetAttribute_int64(info, "crc32", &k->crc32), error) || k->crc32 < 0 ||
        k->crc32 >= (int64_t{1} << 32)) {
      OrtStatus* s = failure(*k, "lacks a crc32 attribute in [0, 2^32)");
      delete k;
      return s;
    }
    if (def.kind == Kind::kBytePlaneDecode &&
        (!ok(api.KernelInfoGetAttribute_int64(info, "to", &to), error) || to != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)) {
      OrtStatus* s = failure(*k, "output type " + std::to_string(to) +
                                     ": this op serves float32 (1); float16 decodes at load (onnxcomp.runtime.InferenceSession)");
      delete k;
      return s;
    }
    // Initializer inputs: decode now, once.
    Tensor in[kInputs];
    bool constant = true;
    for (int i = 0; i < kInputs && constant; ++i) {
      int is_constant = 0;
      const OrtValue* value = nullptr;
      if (!ok(api.KernelInfoGetConstantInput_tensor(info, i, &is_constant, &value), error) || !is_constant) {
        constant = false;
        break;
      }
      if (!read_tensor(value, in[i], error)) {
        OrtStatus* s = failure(*k, "input " + std::to_string(i) + ": " + error);
        delete k;
        return s;
      }
    }
    if (constant) {
      auto allocate = [k](const std::vector<int64_t>& dims, uint64_t bytes, std::string&) -> void* {
        k->dims = dims;
        k->values.resize(bytes ? bytes : 1);
        return k->values.data();
      };
      if (!decode_node(*k, in, allocate, error)) {
        OrtStatus* s = failure(*k, error);
        delete k;
        return s;
      }
      for (int i = 0; i < kInputs; ++i) k->cached_inputs[i] = in[i].data;
      k->cached = true;
    }
    *kernel = k;
    return nullptr;
  } catch (const std::bad_alloc&) {
    OrtStatus* s = k ? failure(*k, "out of memory while decoding") : api.CreateStatus(ORT_FAIL, "onnxcomp: out of memory");
    delete k;
    return s;
  }
}

OrtStatus* compute(void* kernel, OrtKernelContext* context) {
  Kernel& k = *static_cast<Kernel*>(kernel);
  std::string error;
  try {
    Tensor in[kInputs];
    for (int i = 0; i < kInputs; ++i) {
      const OrtValue* value = nullptr;
      if (!ok(api.KernelContext_GetInput(context, i, &value), error) || !read_tensor(value, in[i], error))
        return failure(k, "input " + std::to_string(i) + ": " + error);
    }
    auto allocate = [context](const std::vector<int64_t>& dims, uint64_t, std::string& err) -> void* {
      OrtValue* out = nullptr;
      void* data = nullptr;
      if (!ok(api.KernelContext_GetOutput(context, 0, dims.data(), dims.size(), &out), err) ||
          !ok(api.GetTensorMutableData(out, &data), err))
        return nullptr;
      return data;
    };
    bool same = k.cached;
    for (int i = 0; i < kInputs && same; ++i) same = in[i].data == k.cached_inputs[i];
    if (same) {  // the initializers decoded at creation: copy the result out
      void* out = allocate(k.dims, k.values.size(), error);
      if (!out) return failure(k, error);
      uint64_t count = 1;
      for (int64_t d : k.dims) count *= static_cast<uint64_t>(d);
      if (count) std::memcpy(out, k.values.data(), 4 * count);
      return nullptr;
    }
    if (!decode_node(k, in, allocate, error)) return failure(k, error);
    return nullptr;
  } catch (const std::bad_alloc&) {
    return failure(k, "out of memory while decoding");
  }
}

void destroy_kernel(void* kernel) { delete static_cast<Kernel*>(kernel); }

const char* op_name(const OrtCustomOp* op) { return static_cast<const OpDef*>(op)->name; }
const char* op_provider(const OrtCustomOp*) { return "CPUExecutionProvider"; }
ONNXTensorElementDataType op_input_type(const OrtCustomOp* op, size_t i) {
  return i < kInputs ? static_cast<const OpDef*>(op)->inputs[i] : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}
size_t op_input_count(const OrtCustomOp*) { return kInputs; }
ONNXTensorElementDataType op_output_type(const OrtCustomOp* op, size_t) { return static_cast<const OpDef*>(op)->output; }
size_t op_output_count(const OrtCustomOp*) { return 1; }
OrtCustomOpInputOutputCharacteristic op_required(const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; }
OrtMemType op_memory(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
int op_one(const OrtCustomOp*) { return 1; }

OpDef make_op(Kind kind, const char* name, ONNXTensorElementDataType in1, ONNXTensorElementDataType in2,
              ONNXTensorElementDataType in3, ONNXTensorElementDataType out) {
  OpDef d{};
  d.version = onnxcomp::ort::kApiVersion;
  d.CreateKernel = nullptr;  // onnxruntime calls CreateKernelV2 (version >= 16)
  d.GetName = op_name;
  d.GetExecutionProviderType = op_provider;
  d.GetInputType = op_input_type;
  d.GetInputTypeCount = op_input_count;
  d.GetOutputType = op_output_type;
  d.GetOutputTypeCount = op_output_count;
  d.KernelCompute = nullptr;  // KernelComputeV2
  d.KernelDestroy = destroy_kernel;
  d.GetInputCharacteristic = op_required;
  d.GetOutputCharacteristic = op_required;
  d.GetInputMemoryType = op_memory;
  d.GetVariadicInputMinArity = op_one;
  d.GetVariadicInputHomogeneity = op_one;
  d.GetVariadicOutputMinArity = op_one;
  d.GetVariadicOutputHomogeneity = op_one;
  d.CreateKernelV2 = create_kernel;
  d.KernelComputeV2 = compute;
  d.kind = kind;
  d.name = name;
  d.inputs[0] = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  d.inputs[1] = in1;
  d.inputs[2] = in2;
  d.inputs[3] = in3;
  d.output = out;
  return d;
}

const OpDef entropy_decode_op = make_op(Kind::kEntropyDecode, "EntropyDecode", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32,
                                        ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64,
                                        ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32);
const OpDef byte_plane_decode_op = make_op(Kind::kBytePlaneDecode, "BytePlaneDecode",
                                           ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32,
                                           ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);

std::mutex registry_lock;
std::vector<OrtCustomOpDomain*> domains;  // owned by the session options that use them: kept for the process

}  // namespace

// Nodes this process's kernels have decoded (a test observes that Runs do not decode again).
ONNXCOMP_EXPORT uint64_t onnxcomp_native_kernel_decodes() { return kernel_decodes.load(); }

// onnxruntime's entry point for a custom-op library (SessionOptions.register_custom_ops_library).
ONNXCOMP_EXPORT OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  std::lock_guard<std::mutex> hold(registry_lock);
  const OrtApi* table = api_base->GetApi(onnxcomp::ort::kApiVersion);
  if (!table) {
    // An older runtime: its version-1 table still creates the error it reports.
    const OrtApi* v1 = api_base->GetApi(1);
    auto create_status = reinterpret_cast<OrtStatus* (*)(OrtErrorCode, const char*)>(reinterpret_cast<void* const*>(v1)[0]);
    const std::string message = std::string("onnxcomp: the ai.onnxcomp library needs onnxruntime >= 1.16 (C API ") +
                                std::to_string(onnxcomp::ort::kApiVersion) + "), this is " + api_base->GetVersionString();
    return create_status(ORT_FAIL, message.c_str());
  }
  api.load(table);
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* s = api.CreateCustomOpDomain(kDomain, &domain)) return s;
  domains.push_back(domain);
  if (OrtStatus* s = api.CustomOpDomain_Add(domain, &entropy_decode_op)) return s;
  if (OrtStatus* s = api.CustomOpDomain_Add(domain, &byte_plane_decode_op)) return s;
  return api.AddCustomOpDomain(options, domain);
}
