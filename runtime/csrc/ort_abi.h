// The part of onnxruntime's C API this library uses, declared from the documented ABI.
//
// No reachable registry ships onnxruntime's C headers, so this file declares what the library
// needs itself. The C API is a table of function pointers that only ever grows: entry N of
// version V is entry N of every later version, and `OrtApiBase::GetApi(V)` returns null from a
// runtime older than V. The slot numbers below were counted from onnxruntime_c_api.h (API 22)
// and cross-checked against onnxruntime_c_api.cc's static_asserts; the struct layouts (OrtApiBase,
// OrtCustomOp) are those of the same header. The tests load this library into two onnxruntime
// releases (1.19 and the newest); a wrong slot would fail them at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

extern "C" {

struct OrtApi;  // opaque here: read through Api below
struct OrtStatus;
struct OrtSessionOptions;
struct OrtCustomOpDomain;
struct OrtKernelInfo;
struct OrtKernelContext;
struct OrtValue;
struct OrtTensorTypeAndShapeInfo;

enum OrtErrorCode { ORT_OK = 0, ORT_FAIL = 1, ORT_INVALID_ARGUMENT = 2 };

enum ONNXTensorElementDataType {
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED = 0,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT = 1,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 = 2,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 = 3,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16 = 5,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 = 6,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 = 7,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 = 10,
};

enum OrtCustomOpInputOutputCharacteristic { INPUT_OUTPUT_REQUIRED = 0, INPUT_OUTPUT_OPTIONAL = 1 };
enum OrtMemType { OrtMemTypeCPUInput = -2, OrtMemTypeCPUOutput = -1, OrtMemTypeDefault = 0 };

struct OrtApiBase {
  const OrtApi* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)();
};

// Fields are read by onnxruntime according to `version`: CreateKernelV2/KernelComputeV2 from 16,
// InferOutputShapeFn and Get{Start,End}Version from 17, the in-place/alias pairs after that.
struct OrtCustomOp {
  uint32_t version;
  void* (*CreateKernel)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);
  const char* (*GetName)(const OrtCustomOp* op);
  const char* (*GetExecutionProviderType)(const OrtCustomOp* op);
  ONNXTensorElementDataType (*GetInputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetInputTypeCount)(const OrtCustomOp* op);
  ONNXTensorElementDataType (*GetOutputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetOutputTypeCount)(const OrtCustomOp* op);
  void (*KernelCompute)(void* op_kernel, OrtKernelContext* context);
  void (*KernelDestroy)(void* op_kernel);
  OrtCustomOpInputOutputCharacteristic (*GetInputCharacteristic)(const OrtCustomOp* op, size_t index);
  OrtCustomOpInputOutputCharacteristic (*GetOutputCharacteristic)(const OrtCustomOp* op, size_t index);
  OrtMemType (*GetInputMemoryType)(const OrtCustomOp* op, size_t index);
  int (*GetVariadicInputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicInputHomogeneity)(const OrtCustomOp* op);
  int (*GetVariadicOutputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicOutputHomogeneity)(const OrtCustomOp* op);
  OrtStatus* (*CreateKernelV2)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info, void** kernel);
  OrtStatus* (*KernelComputeV2)(void* op_kernel, OrtKernelContext* context);
  void* InferOutputShapeFn;  // version 17+: unused here (null)
  void* GetStartVersion;
  void* GetEndVersion;
  void* GetMayInplace;
  void* ReleaseMayInplace;
  void* GetAliasMap;
  void* ReleaseAliasMap;
};

}  // extern "C"

namespace onnxcomp::ort {

// The C API version this library asks for: 16 is the first with CreateKernelV2/KernelComputeV2
// (a kernel can fail with a status instead of throwing) and has KernelInfoGetConstantInput_tensor
// (15); onnxruntime 1.16 and later serve it.
constexpr uint32_t kApiVersion = 16;

// Typed entries of the function table, by slot.
struct Api {
  OrtStatus* (*CreateStatus)(OrtErrorCode code, const char* msg);                                  // 0
  const char* (*GetErrorMessage)(const OrtStatus* status);                                         // 2
  OrtStatus* (*CreateCustomOpDomain)(const char* domain, OrtCustomOpDomain** out);                 // 26
  OrtStatus* (*CustomOpDomain_Add)(OrtCustomOpDomain* domain, const OrtCustomOp* op);              // 27
  OrtStatus* (*AddCustomOpDomain)(OrtSessionOptions* options, OrtCustomOpDomain* domain);          // 28
  OrtStatus* (*GetTensorMutableData)(OrtValue* value, void** out);                                 // 51
  OrtStatus* (*GetTensorElementType)(const OrtTensorTypeAndShapeInfo* info, ONNXTensorElementDataType* out);  // 60
  OrtStatus* (*GetDimensionsCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out);            // 61
  OrtStatus* (*GetDimensions)(const OrtTensorTypeAndShapeInfo* info, int64_t* values, size_t n);   // 62
  OrtStatus* (*GetTensorTypeAndShape)(const OrtValue* value, OrtTensorTypeAndShapeInfo** out);     // 65
  OrtStatus* (*KernelInfoGetAttribute_int64)(const OrtKernelInfo* info, const char* name, int64_t* out);  // 86
  OrtStatus* (*KernelContext_GetInput)(const OrtKernelContext* context, size_t index, const OrtValue** out);  // 90
  OrtStatus* (*KernelContext_GetOutput)(OrtKernelContext* context, size_t index, const int64_t* dims, size_t n,
                                        OrtValue** out);                                           // 91
  void (*ReleaseStatus)(OrtStatus* status);                                                        // 93
  void (*ReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo* info);                          // 99
  OrtStatus* (*KernelInfo_GetNodeName)(const OrtKernelInfo* info, char* out, size_t* size);        // 244
  OrtStatus* (*KernelInfoGetConstantInput_tensor)(const OrtKernelInfo* info, size_t index, int* is_constant,
                                                  const OrtValue** out);                           // 249

  // Reads the entries from a table of at least kApiVersion.
  void load(const OrtApi* api) {
    void* const* slot = reinterpret_cast<void* const*>(api);
    auto get = [slot](size_t index, auto& entry) { entry = reinterpret_cast<std::remove_reference_t<decltype(entry)>>(slot[index]); };
    get(0, CreateStatus);
    get(2, GetErrorMessage);
    get(26, CreateCustomOpDomain);
    get(27, CustomOpDomain_Add);
    get(28, AddCustomOpDomain);
    get(51, GetTensorMutableData);
    get(60, GetTensorElementType);
    get(61, GetDimensionsCount);
    get(62, GetDimensions);
    get(65, GetTensorTypeAndShape);
    get(86, KernelInfoGetAttribute_int64);
    get(90, KernelContext_GetInput);
    get(91, KernelContext_GetOutput);
    get(93, ReleaseStatus);
    get(99, ReleaseTensorTypeAndShapeInfo);
    get(244, KernelInfo_GetNodeName);
    get(249, KernelInfoGetConstantInput_tensor);
  }
};

}  // namespace onnxcomp::ort
