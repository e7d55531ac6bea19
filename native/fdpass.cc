// The syscalls behind the binding (see fdpass.h): unix sockets, sendmsg/recvmsg with SCM_RIGHTS,
// dup/close. Linux first; macOS compiles, using fcntl where Linux sets flags atomically.
// Socket introspection is in introspect.cc, errno names in errnames.cc.
#include "fdpass.h"
#include "result.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/epoll.h>
#endif

#include <cerrno>
#include <cstring>

namespace fdpass {
namespace {


bool IsWouldBlock(int errnum) {
  return errnum == EAGAIN || errnum == EWOULDBLOCK;
}

// close(2) on a cleanup path (macOS), keeping the errno of the failure being reported.
[[maybe_unused]] void CloseQuietly(int fd) {
  int saved = errno;
  close(fd);
  errno = saved;
}

[[maybe_unused]] int SetCloseOnExec(int fd) {
  return fcntl(fd, F_SETFD, FD_CLOEXEC);
}

int SetStatusFlag(int fd, int flag, bool on) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) return -1;
  int wanted = on ? (flags | flag) : (flags & ~flag);
  if (wanted == flags) return 0;
  return fcntl(fd, F_SETFL, wanted);
}

#ifndef __linux__
// Where accept4 / SOCK_CLOEXEC are missing: set the flags right after the fd appears.
int SetNewFdFlags(int fd, bool nonBlocking) {
  if (SetCloseOnExec(fd) < 0) return -1;
  if (nonBlocking && SetStatusFlag(fd, O_NONBLOCK, true) < 0) return -1;
  return 0;
}
#endif

// socket(AF_UNIX, type), close-on-exec, and non-blocking when asked; -1 with errno on failure.
int OpenUnixSocket(int type, bool nonBlocking) {
#ifdef __linux__
  return socket(AF_UNIX, type | SOCK_CLOEXEC | (nonBlocking ? SOCK_NONBLOCK : 0), 0);
#else
  int fd = socket(AF_UNIX, type, 0);
  if (fd < 0) return -1;
  if (SetNewFdFlags(fd, nonBlocking) < 0) {
    CloseQuietly(fd);
    return -1;
  }
  return fd;
#endif
}

// Room for the most fds any message may carry; the kernel is told less when the caller wants less.
constexpr size_t kControlBytes = CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage);

}  // namespace

// Fills a sockaddr_un from path bytes; 0 or -errno. A leading NUL is an abstract name (Linux):
// its length is the address length, with no terminator.
int FillUnixAddress(const char* path, size_t length, sockaddr_un* address, socklen_t* addressLength) {
  std::memset(address, 0, sizeof(*address));
  address->sun_family = AF_UNIX;
  if (length == 0) return -EINVAL;
  bool abstract = path[0] == '\0';
#ifndef __linux__
  if (abstract) return -EINVAL;
#endif
  size_t room = sizeof(address->sun_path);
  if (abstract ? length > room : length >= room) return -ENAMETOOLONG;
  std::memcpy(address->sun_path, path, length);
  *addressLength = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + length + (abstract ? 0 : 1));
  return 0;
}

Result SeqpacketPair(int fds[2]) {
#ifdef __linux__
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) < 0) {
    return Fail("socketpair", errno);
  }
#else
  if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, fds) < 0) return Fail("socketpair", errno);
  if (SetNewFdFlags(fds[0], true) < 0 || SetNewFdFlags(fds[1], true) < 0) {
    Result result = Fail("fcntl", errno);
    close(fds[0]);
    close(fds[1]);
    return result;
  }
#endif
  return Ok(0);
}

Result SeqpacketListen(const char* path, size_t length, int backlog) {
  return UnixListen(SOCK_SEQPACKET, path, length, backlog);
}

Result UnixStreamListen(const char* path, size_t length, int backlog) {
  return UnixListen(SOCK_STREAM, path, length, backlog);
}

Result SeqpacketConnect(const char* path, size_t length) {
  return UnixConnect(SOCK_SEQPACKET, path, length);
}

Result UnixStreamConnect(const char* path, size_t length) {
  return UnixConnect(SOCK_STREAM, path, length);
}

Result UnixListen(int type, const char* path, size_t length, int backlog) {
  sockaddr_un address;
  socklen_t addressLength = 0;
  int err = FillUnixAddress(path, length, &address, &addressLength);
  if (err != 0) return Fail("bind", -err);
  int fd = OpenUnixSocket(type, true);
  if (fd < 0) return Fail("socket", errno);
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), addressLength) < 0) {
    Result result = Fail("bind", errno);
    close(fd);
    return result;
  }
  if (listen(fd, backlog) < 0) {
    Result result = Fail("listen", errno);
    close(fd);
    // bind created the file: do not leave a socket file nobody listens on.
    if (path[0] != '\0') unlink(address.sun_path);
    return result;
  }
  return Ok(fd);
}

Result UnixConnect(int type, const char* path, size_t length) {
  sockaddr_un address;
  socklen_t addressLength = 0;
  int err = FillUnixAddress(path, length, &address, &addressLength);
  if (err != 0) return Fail("connect", -err);
  // Non-blocking: a unix connect completes at once or, when the listener's backlog is full, fails
  // with EAGAIN (never EINPROGRESS); the caller retries on a timer instead of blocking its loop.
  int fd = OpenUnixSocket(type, true);
  if (fd < 0) return Fail("socket", errno);
  bool interrupted = false;
  for (;;) {
    if (connect(fd, reinterpret_cast<sockaddr*>(&address), addressLength) == 0) break;
    if (errno == EINTR) {
      interrupted = true;
      continue;
    }
    // A retried connect that had completed before the signal reports EISCONN.
    if (interrupted && errno == EISCONN) break;
    Result result = Fail("connect", errno);
    close(fd);
    return result;
  }
  return Ok(fd);
}

Result Accept(int fd) {
  for (;;) {
#ifdef __linux__
    int connection = accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
#else
    int connection = accept(fd, nullptr, nullptr);
#endif
    if (connection >= 0) {
#ifndef __linux__
      if (SetNewFdFlags(connection, true) < 0) {
        Result result = Fail("fcntl", errno);
        close(connection);
        return result;
      }
#endif
      return Ok(connection);
    }
    // A connection reset before it was accepted is not the listener's failure (libuv does the same).
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (IsWouldBlock(errno)) return Ok(kWouldBlock);
    return Fail("accept", errno);
  }
}

ssize_t SendWithFds(int fd, const void* data, size_t length, const int* fds, size_t fdCount, const sockaddr_un* address, socklen_t addressLength) {
  iovec vector;
  vector.iov_base = const_cast<void*>(data);
  vector.iov_len = length;
  msghdr message;
  std::memset(&message, 0, sizeof(message));
  message.msg_name = const_cast<sockaddr_un*>(address);
  message.msg_namelen = address == nullptr ? 0 : addressLength;
  message.msg_iov = &vector;
  message.msg_iovlen = 1;
  alignas(cmsghdr) unsigned char control[kControlBytes];
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
  return sent;
}

Result SendMessage(int fd, const void* data, size_t length, const int* fds, size_t fdCount) {
  if (fdCount > static_cast<size_t>(kMaxFdsPerMessage)) return Fail("sendmsg", EINVAL);
  ssize_t sent = SendWithFds(fd, data, length, fds, fdCount, nullptr, 0);
  if (sent >= 0) return Ok(sent);
  if (IsWouldBlock(errno)) return Ok(kWouldBlock);
  return Fail("sendmsg", errno);
}

Result ReceiveMessage(int fd, void* buffer, size_t length, int maxFds, ReceivedFds* received) {
  received->count = 0;
  if (maxFds < 0 || maxFds > kMaxFdsPerMessage) return Fail("recvmsg", EINVAL);
  iovec vector;
  vector.iov_base = buffer;
  vector.iov_len = length;
  msghdr message;
  std::memset(&message, 0, sizeof(message));
  message.msg_iov = &vector;
  message.msg_iovlen = 1;
  alignas(cmsghdr) unsigned char control[kControlBytes];
  if (maxFds > 0) {
    message.msg_control = control;
    message.msg_controllen = static_cast<decltype(message.msg_controllen)>(CMSG_SPACE(sizeof(int) * maxFds));
  }
  int flags = 0;
#ifdef MSG_CMSG_CLOEXEC
  flags |= MSG_CMSG_CLOEXEC;
#endif
  ssize_t bytes;
  for (;;) {
    bytes = recvmsg(fd, &message, flags);
    if (bytes >= 0) break;
    if (errno == EINTR) continue;
    if (IsWouldBlock(errno)) return Ok(kWouldBlock);
    return Fail("recvmsg", errno);
  }

  // CMSG_SPACE pads odd counts, so the kernel may deliver one fd more than maxFds: collect
  // everything that arrived (it all fits in control), then judge.
  int arrived[kControlBytes / sizeof(int)];
  int arrivedCount = 0;
  if (message.msg_controllen > 0) {
    for (cmsghdr* header = CMSG_FIRSTHDR(&message); header != nullptr; header = CMSG_NXTHDR(&message, header)) {
      if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const unsigned char* data = CMSG_DATA(header);
      for (size_t i = 0; i < count && arrivedCount < static_cast<int>(sizeof(arrived) / sizeof(int)); i++) {
        std::memcpy(&arrived[arrivedCount++], data + i * sizeof(int), sizeof(int));
      }
    }
  }

  bool truncated = (message.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) != 0 || arrivedCount > maxFds;
  if (truncated) {
    for (int i = 0; i < arrivedCount; i++) close(arrived[i]);
    return Fail("recvmsg", EMSGSIZE);
  }
  for (int i = 0; i < arrivedCount; i++) {
#ifndef MSG_CMSG_CLOEXEC
    SetCloseOnExec(arrived[i]);
#endif
    received->fds[i] = arrived[i];
  }
  received->count = arrivedCount;
  return Ok(bytes);
}

#ifdef __linux__
Result EpollCreate() {
  int fd = epoll_create1(EPOLL_CLOEXEC);
  if (fd < 0) return Fail("epoll_create1", errno);
  return Ok(fd);
}

Result EpollAdd(int epollFd, int fd) {
  epoll_event event;
  std::memset(&event, 0, sizeof(event));
  event.events = EPOLLIN | EPOLLRDHUP;
  event.data.fd = fd;
  if (epoll_ctl(epollFd, EPOLL_CTL_ADD, fd, &event) < 0) return Fail("epoll_ctl", errno);
  return Ok(0);
}

Result EpollDelete(int epollFd, int fd) {
  epoll_event event;
  std::memset(&event, 0, sizeof(event));
  if (epoll_ctl(epollFd, EPOLL_CTL_DEL, fd, &event) < 0) return Fail("epoll_ctl", errno);
  return Ok(0);
}

Result EpollWait(int epollFd, int* ready, int max) {
  epoll_event events[256];
  if (max > 256) max = 256;
  int count;
  do {
    count = epoll_wait(epollFd, events, max, 0);
  } while (count < 0 && errno == EINTR);
  if (count < 0) return Fail("epoll_wait", errno);
  for (int i = 0; i < count; i++) ready[i] = events[i].data.fd;
  return Ok(count);
}
#else
Result EpollCreate() { return Fail("epoll_create1", ENOSYS); }
Result EpollAdd(int, int) { return Fail("epoll_ctl", ENOSYS); }
Result EpollDelete(int, int) { return Fail("epoll_ctl", ENOSYS); }
Result EpollWait(int, int*, int) { return Fail("epoll_wait", ENOSYS); }
#endif

Result Dup(int fd) {
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) return Fail("fcntl", errno);
  return Ok(copy);
}

Result Close(int fd) {
  if (close(fd) == 0 || errno == EINTR) return Ok(0);
  return Fail("close", errno);
}

Result SetNonBlocking(int fd, bool on) {
  if (SetStatusFlag(fd, O_NONBLOCK, on) < 0) return Fail("fcntl", errno);
  return Ok(0);
}

}  // namespace fdpass
