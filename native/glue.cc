// Helpers of the N-API glue (see glue.h).
#include "glue.h"

#include <cerrno>
#include <climits>
#include <cmath>

namespace glue {

// ---------------------------------------------------------------------------------------------
// Errors shaped like Node's.

Napi::Value ThrowSystemError(Napi::Env env, int err, const char* syscall, const std::string* path) {
  Napi::Error error = Napi::Error::New(env, std::string(syscall) + ": " + fdpass::ErrnoMessage(err));
  Napi::Object object = error.Value();
  object.Set("code", Napi::String::New(env, fdpass::ErrnoName(err)));
  object.Set("errno", Napi::Number::New(env, err));
  object.Set("syscall", Napi::String::New(env, syscall));
  if (path != nullptr) object.Set("path", Napi::String::New(env, *path));
  error.ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value ThrowSystemError(Napi::Env env, const fdpass::Result& result, const std::string* path) {
  return ThrowSystemError(env, result.err, result.syscall, path);
}

void ThrowCoded(Napi::Env env, Napi::Error error, const char* code) {
  error.Value().Set("code", Napi::String::New(env, code));
  error.ThrowAsJavaScriptException();
}

void ThrowTypeError(Napi::Env env, const char* code, const std::string& message) {
  ThrowCoded(env, Napi::TypeError::New(env, message), code);
}

void ThrowRangeError(Napi::Env env, const std::string& message) {
  ThrowCoded(env, Napi::RangeError::New(env, message), "ERR_OUT_OF_RANGE");
}

// "Received ..." in Node's words, roughly: the type for anything but undefined and null.
std::string Describe(Napi::Value value) {
  switch (value.Type()) {
    case napi_undefined:
      return "Received undefined";
    case napi_null:
      return "Received null";
    case napi_boolean:
      return "Received type boolean";
    case napi_number:
      return "Received type number";
    case napi_string:
      return "Received type string";
    case napi_symbol:
      return "Received type symbol";
    case napi_function:
      return "Received function";
    case napi_bigint:
      return "Received type bigint";
    default:
      return "Received an instance of " + std::string(value.IsArray() ? "Array" : "Object");
  }
}

void ThrowArgType(Napi::Env env, const std::string& name, const char* expected, Napi::Value value) {
  ThrowTypeError(env, "ERR_INVALID_ARG_TYPE", "The \"" + name + "\" argument must be " + expected + ". " + Describe(value));
}

// ---------------------------------------------------------------------------------------------
// Arguments. Each getter throws and returns false when the value does not fit.

bool GetInteger(Napi::Env env, Napi::Value value, const std::string& name, int64_t min, int64_t max, int64_t* out) {
  if (!value.IsNumber()) {
    ThrowArgType(env, name, "of type number", value);
    return false;
  }
  double number = value.As<Napi::Number>().DoubleValue();
  std::string received = value.ToString().Utf8Value();
  if (std::trunc(number) != number) {
    ThrowRangeError(env, "The value of \"" + name + "\" is out of range. It must be an integer. Received " + received);
    return false;
  }
  if (number < static_cast<double>(min) || number > static_cast<double>(max)) {
    ThrowRangeError(env, "The value of \"" + name + "\" is out of range. It must be >= " + std::to_string(min) +
                             " && <= " + std::to_string(max) + ". Received " + received);
    return false;
  }
  *out = static_cast<int64_t>(number);
  return true;
}

bool GetFd(Napi::Env env, Napi::Value value, const std::string& name, int* out) {
  int64_t fd = 0;
  if (!GetInteger(env, value, name, 0, INT_MAX, &fd)) return false;
  *out = static_cast<int>(fd);
  return true;
}

bool GetBoolean(Napi::Env env, Napi::Value value, const char* name, bool* out) {
  if (!value.IsBoolean()) {
    ThrowArgType(env, name, "of type boolean", value);
    return false;
  }
  *out = value.As<Napi::Boolean>().Value();
  return true;
}

bool GetBuffer(Napi::Env env, Napi::Value value, const char* name, Napi::Buffer<uint8_t>* out) {
  if (!value.IsBuffer()) {
    ThrowArgType(env, name, "an instance of Buffer or Uint8Array", value);
    return false;
  }
  *out = value.As<Napi::Buffer<uint8_t>>();
  return true;
}

// A unix socket path: a non-empty string; NUL bytes only as the first byte (an abstract name).
bool GetSocketPath(Napi::Env env, Napi::Value value, std::string* out) {
  if (!value.IsString()) {
    ThrowArgType(env, "path", "of type string", value);
    return false;
  }
  *out = value.As<Napi::String>().Utf8Value();
  if (out->empty()) {
    ThrowTypeError(env, "ERR_INVALID_ARG_VALUE", "The argument 'path' must not be empty");
    return false;
  }
  if ((*out)[0] != '\0' && out->find('\0') != std::string::npos) {
    ThrowTypeError(env, "ERR_INVALID_ARG_VALUE", "The argument 'path' must be a string without null bytes");
    return false;
  }
  return true;
}

bool GetFdList(Napi::Env env, Napi::Value value, int* fds, size_t* count) {
  if (!value.IsArray()) {
    ThrowArgType(env, "fds", "an instance of Array", value);
    return false;
  }
  Napi::Array array = value.As<Napi::Array>();
  uint32_t length = array.Length();
  if (length > static_cast<uint32_t>(fdpass::kMaxFdsPerMessage)) {
    ThrowRangeError(env, "The value of \"fds.length\" is out of range. It must be >= 0 && <= " +
                             std::to_string(fdpass::kMaxFdsPerMessage) + ". Received " + std::to_string(length));
    return false;
  }
  for (uint32_t i = 0; i < length; i++) {
    Napi::Value element = array.Get(i);
    if (env.IsExceptionPending()) return false;
    if (!GetFd(env, element, "fds[" + std::to_string(i) + "]", &fds[i])) return false;
  }
  *count = length;
  return true;
}

}  // namespace glue
