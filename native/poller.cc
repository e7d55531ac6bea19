// The uv_poll_t readiness watchers of the binding (see poller.h).
#include "poller.h"

#include <uv.h>

#include <cerrno>

#include "fdpass.h"
#include "glue.h"

namespace poller {
namespace {

using glue::GetBoolean;
using glue::GetFd;
using glue::ThrowArgType;
using glue::ThrowCoded;
using glue::ThrowSystemError;

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


}  // namespace

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

void Init(Napi::Env env) {
  AddonData* data = new AddonData();
  data->pollerConstructor = Napi::Persistent(Poller::Define(env));
  data->callbackKey = Napi::Persistent(Napi::Symbol::New(env, "handover.pollerCallback"));
  env.SetInstanceData<AddonData>(data);
}

}  // namespace poller
