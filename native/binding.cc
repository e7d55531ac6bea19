// N-API glue for fdpass: checks arguments, turns results into JS values and failures into
// Node-shaped errors, and runs the uv_poll_t readiness watchers. The syscalls live in fdpass.cc.
#include <napi.h>
#include <uv.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <string>

#include "fdpass.h"

namespace {

// Per-addon state: one per env, so main thread and workers never share it.
struct AddonData {
  Napi::FunctionReference pollerConstructor;
  // Key of the property that holds a poller's callback on the poller itself: the callback then
  // lives exactly as long as the JS object, and a dropped poller can be collected.
  Napi::Reference<Napi::Symbol> callbackKey;
};

// ---------------------------------------------------------------------------------------------
// Errors shaped like Node's.

Napi::Value ThrowSystemError(Napi::Env env, int err, const char* syscall, const std::string* path = nullptr) {
  Napi::Error error = Napi::Error::New(env, std::string(syscall) + ": " + fdpass::ErrnoMessage(err));
  Napi::Object object = error.Value();
  object.Set("code", Napi::String::New(env, fdpass::ErrnoName(err)));
  object.Set("errno", Napi::Number::New(env, err));
  object.Set("syscall", Napi::String::New(env, syscall));
  if (path != nullptr) object.Set("path", Napi::String::New(env, *path));
  error.ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value ThrowSystemError(Napi::Env env, const fdpass::Result& result, const std::string* path = nullptr) {
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

// ---------------------------------------------------------------------------------------------
// The calls.

Napi::Value SeqpacketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fds[2];
  fdpass::Result result = fdpass::SeqpacketPair(fds);
  if (result.err != 0) return ThrowSystemError(env, result);
  Napi::Array pair = Napi::Array::New(env, 2);
  pair.Set(0u, Napi::Number::New(env, fds[0]));
  pair.Set(1u, Napi::Number::New(env, fds[1]));
  return pair;
}

Napi::Value SeqpacketListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  int64_t backlog = 0;
  if (!GetSocketPath(env, info[0], &path)) return env.Undefined();
  if (!GetInteger(env, info[1], "backlog", 0, INT_MAX, &backlog)) return env.Undefined();
  fdpass::Result result = fdpass::SeqpacketListen(path.data(), path.size(), static_cast<int>(backlog));
  if (result.err != 0) return ThrowSystemError(env, result, &path);
  return Napi::Number::New(env, static_cast<double>(result.value));
}

Napi::Value UnixStreamListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  int64_t backlog = 0;
  if (!GetSocketPath(env, info[0], &path)) return env.Undefined();
  if (!GetInteger(env, info[1], "backlog", 0, INT_MAX, &backlog)) return env.Undefined();
  fdpass::Result result = fdpass::UnixStreamListen(path.data(), path.size(), static_cast<int>(backlog));
  if (result.err != 0) return ThrowSystemError(env, result, &path);
  return Napi::Number::New(env, static_cast<double>(result.value));
}

Napi::Value UnixStreamConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  if (!GetSocketPath(env, info[0], &path)) return env.Undefined();
  fdpass::Result result = fdpass::UnixStreamConnect(path.data(), path.size());
  if (result.err != 0) return ThrowSystemError(env, result, &path);
  return Napi::Number::New(env, static_cast<double>(result.value));
}

Napi::Value SeqpacketConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  if (!GetSocketPath(env, info[0], &path)) return env.Undefined();
  fdpass::Result result = fdpass::SeqpacketConnect(path.data(), path.size());
  if (result.err != 0) return ThrowSystemError(env, result, &path);
  return Napi::Number::New(env, static_cast<double>(result.value));
}

Napi::Value Accept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = 0;
  if (!GetFd(env, info[0], "fd", &fd)) return env.Undefined();
  fdpass::Result result = fdpass::Accept(fd);
  if (result.err != 0) return ThrowSystemError(env, result);
  return Napi::Number::New(env, static_cast<double>(result.value));
}

Napi::Value SendMessage(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = 0;
  Napi::Buffer<uint8_t> data;
  int fds[fdpass::kMaxFdsPerMessage];
  size_t fdCount = 0;
  if (!GetFd(env, info[0], "fd", &fd)) return env.Undefined();
  if (!GetBuffer(env, info[1], "data", &data)) return env.Undefined();
  if (!GetFdList(env, info[2], fds, &fdCount)) return env.Undefined();
  fdpass::Result result = fdpass::SendMessage(fd, data.Data(), data.Length(), fds, fdCount);
  if (result.err != 0) return ThrowSystemError(env, result);
  return Napi::Number::New(env, static_cast<double>(result.value));
}

Napi::Value ReceiveMessage(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = 0;
  Napi::Buffer<uint8_t> buffer;
  int64_t maxFds = 0;
  if (!GetFd(env, info[0], "fd", &fd)) return env.Undefined();
  if (!GetBuffer(env, info[1], "buffer", &buffer)) return env.Undefined();
  if (!GetInteger(env, info[2], "maxFds", 0, fdpass::kMaxFdsPerMessage, &maxFds)) return env.Undefined();
  fdpass::ReceivedFds received;
  fdpass::Result result = fdpass::ReceiveMessage(fd, buffer.Data(), buffer.Length(), static_cast<int>(maxFds), &received);
  if (result.err != 0) return ThrowSystemError(env, result);
  if (result.value == fdpass::kWouldBlock) return env.Null();
  Napi::Array fds = Napi::Array::New(env, received.count);
  for (int i = 0; i < received.count; i++) fds.Set(static_cast<uint32_t>(i), Napi::Number::New(env, received.fds[i]));
  Napi::Object message = Napi::Object::New(env);
  message.Set("bytes", Napi::Number::New(env, static_cast<double>(result.value)));
  message.Set("fds", fds);
  return message;
}

Napi::Value PeerCredentials(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = 0;
  if (!GetFd(env, info[0], "fd", &fd)) return env.Undefined();
  fdpass::Credentials credentials;
  fdpass::Result result = fdpass::PeerCredentials(fd, &credentials);
  if (result.err != 0) return ThrowSystemError(env, result);
  Napi::Object object = Napi::Object::New(env);
  object.Set("pid", Napi::Number::New(env, static_cast<double>(credentials.pid)));
  object.Set("uid", Napi::Number::New(env, static_cast<double>(credentials.uid)));
  object.Set("gid", Napi::Number::New(env, static_cast<double>(credentials.gid)));
  return object;
}

Napi::Value SocketInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = 0;
  if (!GetFd(env, info[0], "fd", &fd)) return env.Undefined();
  fdpass::SocketDescription description;
  fdpass::Result result = fdpass::DescribeSocket(fd, &description);
  if (result.err != 0) return ThrowSystemError(env, result);
  Napi::Object object = Napi::Object::New(env);
  object.Set("type", Napi::String::New(env, description.type));
  object.Set("family", Napi::String::New(env, description.family));
  object.Set("listening", Napi::Boolean::New(env, description.listening));
  // Absent, not undefined, where they do not apply (exactOptionalPropertyTypes on the TS side).
  if (description.hasAddress) {
    object.Set("address", Napi::String::New(env, description.address));
    object.Set("port", Napi::Number::New(env, description.port));
  }
  if (description.hasPath) object.Set("path", Napi::String::New(env, description.path));
  return object;
}

Napi::Value Dup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = 0;
  if (!GetFd(env, info[0], "fd", &fd)) return env.Undefined();
  fdpass::Result result = fdpass::Dup(fd);
  if (result.err != 0) return ThrowSystemError(env, result);
  return Napi::Number::New(env, static_cast<double>(result.value));
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = 0;
  if (!GetFd(env, info[0], "fd", &fd)) return env.Undefined();
  fdpass::Result result = fdpass::Close(fd);
  if (result.err != 0) return ThrowSystemError(env, result);
  return env.Undefined();
}

Napi::Value SetNonBlocking(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = 0;
  bool on = false;
  if (!GetFd(env, info[0], "fd", &fd)) return env.Undefined();
  if (!GetBoolean(env, info[1], "on", &on)) return env.Undefined();
  fdpass::Result result = fdpass::SetNonBlocking(fd, on);
  if (result.err != 0) return ThrowSystemError(env, result);
  return env.Undefined();
}

// ---------------------------------------------------------------------------------------------
// Poller: a uv_poll_t on the env's loop.
//
// The uv handle outlives the JS object when needed: libuv frees nothing until its close callback,
// so the handle lives in its own allocation, deleted only in OnClosed. Three ways lead there:
// close() from JS, the finalizer of a dropped poller, and the env's async cleanup hook when the
// env (main thread or worker) shuts down with the poller still open.

class Poller;

struct PollHandle {
  uv_poll_t poll;
  int fd = -1;
  fdpass::FileIdentity identity;  // the file fd named when the poller was created
  Poller* owner = nullptr;        // null once the JS object is finalized
  napi_async_cleanup_hook_handle cleanupHook = nullptr;
  bool closing = false;    // uv_close was called
  bool abandoned = false;  // fd was closed and its number reused: left alone until the env exits
};

// Stopping or closing a uv_poll_t removes its fd NUMBER from epoll. When the fd was closed behind
// the poller and the number reused (by a socket libuv itself watches, say), that would silently
// deafen the new owner, so such a handle is abandoned instead: unreferenced, never touched again,
// closed by the env cleanup hook.
bool FdReused(const PollHandle* handle) {
  fdpass::FileIdentity now;
  if (fdpass::IdentifyFile(handle->fd, &now).err != 0) return false;  // closed: nothing to deafen
  return !(now == handle->identity);
}

void Abandon(PollHandle* handle) {
  if (handle->abandoned || handle->closing) return;
  handle->abandoned = true;
  uv_unref(reinterpret_cast<uv_handle_t*>(&handle->poll));
}

class Poller : public Napi::ObjectWrap<Poller> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Poller",
                       {
                           InstanceMethod<&Poller::Start>("start"),
                           InstanceMethod<&Poller::Stop>("stop"),
                           InstanceMethod<&Poller::Close>("close"),
                       });
  }

  explicit Poller(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<Poller>(info), asyncContext_(info.Env(), "HandoverPoller") {
    Napi::Env env = info.Env();
    int fd = 0;
    if (!GetFd(env, info[0], "fd", &fd)) return;
    if (!info[1].IsFunction()) {
      ThrowArgType(env, "callback", "of type function", info[1]);
      return;
    }
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      Napi::Error::New(env, "no event loop for this env").ThrowAsJavaScriptException();
      return;
    }
    PollHandle* handle = new PollHandle();
    int err = uv_poll_init(loop, &handle->poll, fd);
    if (err != 0) {
      delete handle;  // uv_poll_init registers nothing when it fails
      ThrowSystemError(env, err, "uv_poll_init");
      return;
    }
    handle->poll.data = handle;
    handle->fd = fd;
    fdpass::IdentifyFile(fd, &handle->identity);  // cannot fail: uv_poll_init just used fd
    handle->owner = this;
    if (napi_add_async_cleanup_hook(env, OnEnvCleanup, handle, &handle->cleanupHook) != napi_ok) {
      handle->cleanupHook = nullptr;
    }
    handle_ = handle;
    AddonData* data = env.GetInstanceData<AddonData>();
    info.This().As<Napi::Object>().DefineProperty(
        Napi::PropertyDescriptor::Value(data->callbackKey.Value(), info[1], napi_default));
  }

  ~Poller() override {
    if (handle_ == nullptr) return;
    handle_->owner = nullptr;
    CloseOrAbandon(handle_);
  }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    bool readable = false;
    bool writable = false;
    if (!GetBoolean(env, info[0], "readable", &readable)) return env.Undefined();
    if (!GetBoolean(env, info[1], "writable", &writable)) return env.Undefined();
    if (closed_ || handle_ == nullptr || handle_->closing) {
      ThrowCoded(env, Napi::Error::New(env, "Invalid state: the poller is closed"), "ERR_INVALID_STATE");
      return env.Undefined();
    }
    int events = (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0);
    if (events == 0) return Stop(info);
#ifdef __linux__
    // EPOLLRDHUP only while reading: unrequested, a hang-up cannot spin a paused reader.
    if (readable) events |= UV_DISCONNECT;
#endif
    // libuv aborts the process when epoll_ctl fails on a closed fd, and would watch the wrong file
    // on a reused one: make both an exception.
    fdpass::FileIdentity now;
    fdpass::Result identified = fdpass::IdentifyFile(handle_->fd, &now);
    if (identified.err != 0) return ThrowSystemError(env, identified);
    if (handle_->abandoned || !(now == handle_->identity)) {
      Abandon(handle_);
      Release();
      return ThrowSystemError(env, -EBADF, "uv_poll_start");
    }
    int err = uv_poll_start(&handle_->poll, events, OnPoll);
    if (err != 0) return ThrowSystemError(env, err, "uv_poll_start");
    // An armed watcher must reach its callback even when JS holds no reference to it.
    if (!referenced_) {
      Ref();
      referenced_ = true;
    }
    return env.Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (!closed_ && handle_ != nullptr && !handle_->closing && !handle_->abandoned) {
      if (FdReused(handle_)) {
        Abandon(handle_);
      } else {
        uv_poll_stop(&handle_->poll);
      }
    }
    Release();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!closed_ && handle_ != nullptr) CloseOrAbandon(handle_);
    closed_ = true;
    Release();
    return info.Env().Undefined();
  }

  void Release() {
    if (!referenced_) return;
    referenced_ = false;
    Unref();
  }

  static void CloseOrAbandon(PollHandle* handle) {
    if (handle->closing) return;
    if (handle->abandoned || FdReused(handle)) {
      Abandon(handle);
    } else {
      BeginClose(handle);
    }
  }

  static void BeginClose(PollHandle* handle) {
    if (handle->closing) return;
    handle->closing = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&handle->poll), OnClosed);
  }

  // Runs with no JS on the stack, possibly while the env is being torn down: no N-API here.
  static void OnClosed(uv_handle_t* raw) {
    PollHandle* handle = static_cast<PollHandle*>(raw->data);
    if (handle->owner != nullptr) handle->owner->handle_ = nullptr;
    if (handle->cleanupHook != nullptr) napi_remove_async_cleanup_hook(handle->cleanupHook);
    delete handle;
  }

  // The env is shutting down with this handle open: close it; OnClosed then releases the hook,
  // which tells Node the cleanup is done so a worker's loop can close with no handle left.
  static void OnEnvCleanup(napi_async_cleanup_hook_handle, void* arg) {
    BeginClose(static_cast<PollHandle*>(arg));
  }

  static void OnPoll(uv_poll_t* raw, int status, int events) {
    PollHandle* handle = static_cast<PollHandle*>(raw->data);
    Poller* self = handle->owner;
    if (self == nullptr || handle->closing || handle->abandoned) return;
    // libuv has stopped a handle that reports an error: the poller no longer holds itself alive.
    if (status < 0) self->Release();
    napi_env env = self->Env();
    napi_handle_scope scope;
    if (napi_open_handle_scope(env, &scope) != napi_ok) return;
    bool delivered = self->Deliver(env, status, events);
    napi_close_handle_scope(env, scope);
    // The env can no longer run JS (a worker being torn down runs its loop a last time): stop
    // asking until the cleanup hook closes the handle.
    if (!delivered && !handle->closing) uv_poll_stop(&handle->poll);
  }

  // Calls the JS callback. Plain N-API calls, no node-addon-api wrappers: those turn a failed call
  // into a JS throw, which is fatal while the env is shutting down. False when JS could not run.
  bool Deliver(napi_env env, int status, int events) {
    AddonData* data = nullptr;
    napi_value object = nullptr;
    napi_value key = nullptr;
    napi_value callback = nullptr;
    napi_valuetype type = napi_undefined;
    if (napi_get_instance_data(env, reinterpret_cast<void**>(&data)) != napi_ok || data == nullptr) return false;
    if (napi_get_reference_value(env, static_cast<napi_ref>(*this), &object) != napi_ok || object == nullptr) return false;
    if (napi_get_reference_value(env, static_cast<napi_ref>(data->callbackKey), &key) != napi_ok || key == nullptr) return false;
    if (napi_get_property(env, object, key, &callback) != napi_ok) return Report(env);
    if (napi_typeof(env, callback, &type) != napi_ok || type != napi_function) return false;
    bool failed = status < 0;
    napi_value argv[4];
    if (napi_create_int32(env, status, &argv[0]) != napi_ok ||
        napi_get_boolean(env, !failed && (events & UV_READABLE) != 0, &argv[1]) != napi_ok ||
        napi_get_boolean(env, !failed && (events & UV_WRITABLE) != 0, &argv[2]) != napi_ok ||
        napi_get_boolean(env, !failed && (events & UV_DISCONNECT) != 0, &argv[3]) != napi_ok) {
      return false;
    }
    napi_value result = nullptr;
    if (napi_make_callback(env, asyncContext_, object, callback, 4, argv, &result) != napi_ok) return Report(env);
    return true;
  }

  // After a failed call: a JS exception goes where Node sends any uncaught exception (nobody up
  // the stack can catch it); no exception means JS cannot run at all.
  static bool Report(napi_env env) {
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) != napi_ok || !pending) return false;
    napi_value exception = nullptr;
    if (napi_get_and_clear_last_exception(env, &exception) != napi_ok) return false;
    napi_fatal_exception(env, exception);
    return true;
  }

  PollHandle* handle_ = nullptr;
  bool referenced_ = false;
  bool closed_ = false;
  Napi::AsyncContext asyncContext_;
};

Napi::Value CreatePoller(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = 0;
  if (!GetFd(env, info[0], "fd", &fd)) return env.Undefined();
  if (!info[1].IsFunction()) {
    ThrowArgType(env, "callback", "of type function", info[1]);
    return env.Undefined();
  }
  AddonData* data = env.GetInstanceData<AddonData>();
  Napi::Object poller = data->pollerConstructor.New({info[0], info[1]});
  if (env.IsExceptionPending() || poller.IsEmpty()) return env.Undefined();
  return poller;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  AddonData* data = new AddonData();
  data->pollerConstructor = Napi::Persistent(Poller::Define(env));
  data->callbackKey = Napi::Persistent(Napi::Symbol::New(env, "handover.pollerCallback"));
  env.SetInstanceData<AddonData>(data);

  exports.Set("MAX_FDS_PER_MESSAGE", Napi::Number::New(env, fdpass::kMaxFdsPerMessage));
  exports.Set("seqpacketPair", Napi::Function::New<SeqpacketPair>(env, "seqpacketPair"));
  exports.Set("seqpacketListen", Napi::Function::New<SeqpacketListen>(env, "seqpacketListen"));
  exports.Set("seqpacketConnect", Napi::Function::New<SeqpacketConnect>(env, "seqpacketConnect"));
  exports.Set("unixStreamListen", Napi::Function::New<UnixStreamListen>(env, "unixStreamListen"));
  exports.Set("unixStreamConnect", Napi::Function::New<UnixStreamConnect>(env, "unixStreamConnect"));
  exports.Set("accept", Napi::Function::New<Accept>(env, "accept"));
  exports.Set("sendmsg", Napi::Function::New<SendMessage>(env, "sendmsg"));
  exports.Set("recvmsg", Napi::Function::New<ReceiveMessage>(env, "recvmsg"));
  exports.Set("peerCredentials", Napi::Function::New<PeerCredentials>(env, "peerCredentials"));
  exports.Set("socketInfo", Napi::Function::New<SocketInfo>(env, "socketInfo"));
  exports.Set("dup", Napi::Function::New<Dup>(env, "dup"));
  exports.Set("close", Napi::Function::New<Close>(env, "close"));
  exports.Set("setNonBlocking", Napi::Function::New<SetNonBlocking>(env, "setNonBlocking"));
  exports.Set("createPoller", Napi::Function::New<CreatePoller>(env, "createPoller"));
  return exports;
}

}  // namespace

NODE_API_MODULE(handover, Init)
