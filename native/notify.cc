// sd_notify(3) without libsystemd: one datagram to the service manager's NOTIFY_SOCKET, optionally
// carrying fds (the fd store), and the bound datagram socket that receives such messages. The
// message text, when to send it and what to do on failure are decided in TypeScript (src/systemd.ts).
#include "fdpass.h"
#include "result.h"

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace fdpass {

Result NotifySend(const char* path, size_t length, const void* data, size_t dataLength, const int* fds, size_t fdCount, int timeoutMs) {
  if (fdCount > static_cast<size_t>(kMaxFdsPerMessage)) return Fail("sendmsg", EINVAL);
  sockaddr_un address;
  socklen_t addressLength = 0;
  int err = FillUnixAddress(path, length, &address, &addressLength);
  if (err != 0) return Fail("sendmsg", -err);
#ifdef __linux__
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
#else
  int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
#endif
  if (fd < 0) return Fail("socket", errno);
  // Blocking, but bounded: a datagram to a full receive queue waits for room (as libsystemd's
  // sd_notify does), never longer than the caller allows.
  timeval timeout;
  timeout.tv_sec = timeoutMs / 1000;
  timeout.tv_usec = (timeoutMs % 1000) * 1000;
  if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout)) < 0) {
    Result result = Fail("setsockopt", errno);
    close(fd);
    return result;
  }
  iovec vector;
  vector.iov_base = const_cast<void*>(data);
  vector.iov_len = dataLength;
  msghdr message;
  std::memset(&message, 0, sizeof(message));
  message.msg_name = &address;
  message.msg_namelen = addressLength;
  message.msg_iov = &vector;
  message.msg_iovlen = 1;
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  if (fdCount > 0) {
    size_t controlLength = CMSG_SPACE(sizeof(int) * fdCount);
    std::memset(control, 0, controlLength);
    message.msg_control = control;
    message.msg_controllen = static_cast<decltype(message.msg_controllen)>(controlLength);
    cmsghdr* header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = static_cast<decltype(header->cmsg_len)>(CMSG_LEN(sizeof(int) * fdCount));
    std::memcpy(CMSG_DATA(header), fds, sizeof(int) * fdCount);
  }
  int flags = 0;
#ifdef MSG_NOSIGNAL
  flags |= MSG_NOSIGNAL;
#endif
  ssize_t sent;
  do {
    sent = sendmsg(fd, &message, flags);
  } while (sent < 0 && errno == EINTR);
  Result result = sent < 0 ? Fail("sendmsg", errno) : Ok(sent);
  close(fd);
  return result;
}

Result UnixDatagramBind(const char* path, size_t length) {
  sockaddr_un address;
  socklen_t addressLength = 0;
  int err = FillUnixAddress(path, length, &address, &addressLength);
  if (err != 0) return Fail("bind", -err);
#ifdef __linux__
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Fail("socket", errno);
#else
  int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
  if (fd < 0) return Fail("socket", errno);
  if (SetNonBlocking(fd, true).err != 0) {
    Result result = Fail("fcntl", errno);
    close(fd);
    return result;
  }
#endif
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), addressLength) < 0) {
    Result result = Fail("bind", errno);
    close(fd);
    return result;
  }
  return Ok(fd);
}

}  // namespace fdpass
