// N-API glue for fdpass: checks arguments and turns results into JS values and failures into
// Node-shaped errors (helpers in glue.cc). The syscalls live in fdpass.cc (sd_notify's datagram in
// notify.cc), the uv_poll_t readiness watchers in poller.cc.
#include <napi.h>

#include <climits>
#include <string>

#include "fdpass.h"
#include "glue.h"
#include "poller.h"
#include "supervise.h"

namespace {

using glue::GetBoolean;
using glue::GetBuffer;
using glue::GetFd;
using glue::GetFdList;
using glue::GetInteger;
using glue::GetSocketPath;
using glue::ThrowSystemError;

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

Napi::Value ReapChild(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  supervise::ChildExit exit;
  fdpass::Result result = supervise::ReapChild(&exit);
  if (result.err != 0) return ThrowSystemError(env, result);
  if (result.value == 0) return env.Null();
  Napi::Object object = Napi::Object::New(env);
  object.Set("pid", Napi::Number::New(env, static_cast<double>(exit.pid)));
  object.Set("code", Napi::Number::New(env, exit.code));
  object.Set("signal", Napi::Number::New(env, exit.signal));
  return object;
}

Napi::Value SetChildSubreaper(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  fdpass::Result result = supervise::SetChildSubreaper();
  if (result.err != 0) return ThrowSystemError(env, result);
  return env.Undefined();
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

// One check per fd of a CONN frame, in one call: a Uint8Array of fdpass::ConnectionCheck codes.
Napi::Value CheckConnections(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) {
    Napi::TypeError error = Napi::TypeError::New(env, "fds must be an array of fds");
    error.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_TYPE"));
    error.ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array list = info[0].As<Napi::Array>();
  uint32_t count = list.Length();
  Napi::Uint8Array checks = Napi::Uint8Array::New(env, count);
  for (uint32_t i = 0; i < count; i++) {
    int fd = 0;
    if (!GetFd(env, list.Get(i), "fd", &fd)) return env.Undefined();
    checks[i] = fdpass::CheckConnection(fd);
  }
  return checks;
}

Napi::Value EpollCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  fdpass::Result result = fdpass::EpollCreate();
  if (result.err != 0) return ThrowSystemError(env, result);
  return Napi::Number::New(env, static_cast<double>(result.value));
}

// epollAdd(epollFd, fds): every fd of the list, in one call; throws at the first failure (the
// fds before it are watched).
Napi::Value EpollAdd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int epollFd = 0;
  if (!GetFd(env, info[0], "epollFd", &epollFd)) return env.Undefined();
  if (!info[1].IsArray()) {
    Napi::TypeError error = Napi::TypeError::New(env, "fds must be an array of fds");
    error.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_TYPE"));
    error.ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array list = info[1].As<Napi::Array>();
  uint32_t count = list.Length();
  for (uint32_t i = 0; i < count; i++) {
    int fd = 0;
    if (!GetFd(env, list.Get(i), "fd", &fd)) return env.Undefined();
    fdpass::Result result = fdpass::EpollAdd(epollFd, fd);
    if (result.err != 0) return ThrowSystemError(env, result);
  }
  return env.Undefined();
}

Napi::Value EpollDelete(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int epollFd = 0;
  int fd = 0;
  if (!GetFd(env, info[0], "epollFd", &epollFd) || !GetFd(env, info[1], "fd", &fd)) return env.Undefined();
  fdpass::Result result = fdpass::EpollDelete(epollFd, fd);
  if (result.err != 0) return ThrowSystemError(env, result);
  return env.Undefined();
}

// epollWait(epollFd): the fds ready now (at most 256), never blocking.
Napi::Value EpollWait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int epollFd = 0;
  if (!GetFd(env, info[0], "epollFd", &epollFd)) return env.Undefined();
  int ready[256];
  fdpass::Result result = fdpass::EpollWait(epollFd, ready, 256);
  if (result.err != 0) return ThrowSystemError(env, result);
  Napi::Array list = Napi::Array::New(env, static_cast<size_t>(result.value));
  for (int64_t i = 0; i < result.value; i++) list.Set(static_cast<uint32_t>(i), Napi::Number::New(env, ready[i]));
  return list;
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

Napi::Value Notify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  Napi::Buffer<uint8_t> data;
  int fds[fdpass::kMaxFdsPerMessage];
  size_t fdCount = 0;
  int64_t timeoutMs = 0;
  if (!GetSocketPath(env, info[0], &path)) return env.Undefined();
  if (!GetBuffer(env, info[1], "data", &data)) return env.Undefined();
  if (!GetFdList(env, info[2], fds, &fdCount)) return env.Undefined();
  if (!GetInteger(env, info[3], "timeoutMs", 1, 60000, &timeoutMs)) return env.Undefined();
  fdpass::Result result = fdpass::NotifySend(path.data(), path.size(), data.Data(), data.Length(), fds, fdCount, static_cast<int>(timeoutMs));
  if (result.err != 0) return ThrowSystemError(env, result, &path);
  return Napi::Number::New(env, static_cast<double>(result.value));
}

Napi::Value UnixDatagramBind(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  if (!GetSocketPath(env, info[0], &path)) return env.Undefined();
  fdpass::Result result = fdpass::UnixDatagramBind(path.data(), path.size());
  if (result.err != 0) return ThrowSystemError(env, result, &path);
  return Napi::Number::New(env, static_cast<double>(result.value));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  poller::Init(env);

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
  exports.Set("checkConnections", Napi::Function::New<CheckConnections>(env, "checkConnections"));
  exports.Set("epollCreate", Napi::Function::New<EpollCreate>(env, "epollCreate"));
  exports.Set("epollAdd", Napi::Function::New<EpollAdd>(env, "epollAdd"));
  exports.Set("epollDelete", Napi::Function::New<EpollDelete>(env, "epollDelete"));
  exports.Set("epollWait", Napi::Function::New<EpollWait>(env, "epollWait"));
  exports.Set("dup", Napi::Function::New<Dup>(env, "dup"));
  exports.Set("close", Napi::Function::New<Close>(env, "close"));
  exports.Set("setNonBlocking", Napi::Function::New<SetNonBlocking>(env, "setNonBlocking"));
  exports.Set("notify", Napi::Function::New<Notify>(env, "notify"));
  exports.Set("unixDatagramBind", Napi::Function::New<UnixDatagramBind>(env, "unixDatagramBind"));
  exports.Set("reapChild", Napi::Function::New<ReapChild>(env, "reapChild"));
  exports.Set("setChildSubreaper", Napi::Function::New<SetChildSubreaper>(env, "setChildSubreaper"));
  exports.Set("createPoller", Napi::Function::New<poller::CreatePoller>(env, "createPoller"));
  return exports;
}

}  // namespace

NODE_API_MODULE(handover, Init)
