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
  ssize_t sent = SendWithFds(fd, data, dataLength, fds, fdCount, &address, addressLength);
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
