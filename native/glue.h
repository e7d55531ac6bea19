// Helpers of the N-API glue: errors shaped like Node's own, and argument getters that throw a
// Node-style error and return false when a value does not fit.
#ifndef HANDOVER_GLUE_H
#define HANDOVER_GLUE_H

#include <napi.h>

#include <cstdint>
#include <string>

#include "fdpass.h"

namespace glue {

Napi::Value ThrowSystemError(Napi::Env env, int err, const char* syscall, const std::string* path = nullptr);
Napi::Value ThrowSystemError(Napi::Env env, const fdpass::Result& result, const std::string* path = nullptr);
void ThrowCoded(Napi::Env env, Napi::Error error, const char* code);
void ThrowTypeError(Napi::Env env, const char* code, const std::string& message);
void ThrowRangeError(Napi::Env env, const std::string& message);
std::string Describe(Napi::Value value);
void ThrowArgType(Napi::Env env, const std::string& name, const char* expected, Napi::Value value);
bool GetInteger(Napi::Env env, Napi::Value value, const std::string& name, int64_t min, int64_t max, int64_t* out);
bool GetFd(Napi::Env env, Napi::Value value, const std::string& name, int* out);
bool GetBoolean(Napi::Env env, Napi::Value value, const char* name, bool* out);
bool GetBuffer(Napi::Env env, Napi::Value value, const char* name, Napi::Buffer<uint8_t>* out);
bool GetSocketPath(Napi::Env env, Napi::Value value, std::string* out);
bool GetFdList(Napi::Env env, Napi::Value value, int* fds, size_t* count);

}  // namespace glue

#endif  // HANDOVER_GLUE_H
