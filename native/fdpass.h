// The syscalls of handover, with no N-API in sight: fd passing over unix sockets (SCM_RIGHTS),
// the SOCK_SEQPACKET control socket, peer credentials and socket introspection. Every call takes
// integers and byte ranges and reports failure as a negative errno plus the syscall that failed.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace fdpass {

// Linux's SCM_MAX_FD: the most fds one sendmsg(2) may carry.
constexpr int kMaxFdsPerMessage = 253;

// Result::value when a non-blocking call found nothing to do (EAGAIN / EWOULDBLOCK).
constexpr int64_t kWouldBlock = -1;

// The outcome of one call. value is an fd, a byte count, 0, or kWouldBlock; err is 0 on success
// or -errno, and then syscall names the call that failed (a string literal).
struct Result {
  int64_t value = 0;
  int err = 0;
  const char* syscall = nullptr;
};

// The fds one recvmsg(2) delivered. Owned by the caller once ReceiveMessage succeeded.
struct ReceivedFds {
  int fds[kMaxFdsPerMessage];
  int count = 0;
};

struct Credentials {
  int64_t pid = -1;  // -1 where the platform does not report it (macOS)
  uid_t uid = 0;
  gid_t gid = 0;
};

// What the kernel says about a socket. type and family are the names the binding exposes.
struct SocketDescription {
  const char* type = "unknown";    // stream | dgram | seqpacket | raw | unknown
  const char* family = "unknown";  // inet | inet6 | unix | unknown
  bool listening = false;
  bool hasAddress = false;  // inet / inet6: address and port are set
  std::string address;
  int port = 0;
  bool hasPath = false;  // unix: path is set ('' when unnamed, leading NUL when abstract)
  std::string path;
};

// socketpair(AF_UNIX, SOCK_SEQPACKET), both ends non-blocking and close-on-exec.
Result SeqpacketPair(int fds[2]);

// socket + bind + listen on a unix path (a leading NUL names an abstract socket on Linux);
// non-blocking, close-on-exec. Does not unlink an existing file. value is the fd.
Result SeqpacketListen(const char* path, size_t length, int backlog);

// socket + connect to a unix path; value is a connected, non-blocking, close-on-exec fd.
Result SeqpacketConnect(const char* path, size_t length);

// The same two for SOCK_STREAM: a unix listener bound by us (libuv unlinks paths it bound itself
// when the server closes), and a connect that tells a live socket file from a stale one.
Result UnixStreamListen(const char* path, size_t length, int backlog);
Result UnixStreamConnect(const char* path, size_t length);
Result UnixListen(int type, const char* path, size_t length, int backlog);
Result UnixConnect(int type, const char* path, size_t length);

// Fills a sockaddr_un from path bytes; 0 or -errno. A leading NUL names an abstract socket (Linux).
int FillUnixAddress(const char* path, size_t length, sockaddr_un* address, socklen_t* addressLength);

// sendmsg(2) of one datagram to the unix socket at path (a leading NUL: an abstract name) from a
// fresh, unbound SOCK_DGRAM socket, with fdCount fds attached (SCM_RIGHTS): sd_notify(3) without
// libsystemd. Blocks at most timeoutMs when the receiver's queue is full (then EAGAIN). In notify.cc.
Result NotifySend(const char* path, size_t length, const void* data, size_t dataLength, const int* fds, size_t fdCount, int timeoutMs);

// A non-blocking, close-on-exec SOCK_DGRAM socket bound at path: the receiving end of NotifySend
// (a service manager, or a test playing one). value is the fd. In notify.cc.
Result UnixDatagramBind(const char* path, size_t length);

// accept(2) with the new fd non-blocking and close-on-exec; kWouldBlock when nothing is pending.
Result Accept(int fd);

// sendmsg(2) of length bytes with fdCount fds attached (SCM_RIGHTS). value is the bytes written
// or kWouldBlock. EINTR is retried.
Result SendMessage(int fd, const void* data, size_t length, const int* fds, size_t fdCount);

// The one sendmsg(2) that builds an SCM_RIGHTS message: length bytes with fdCount (at most
// kMaxFdsPerMessage) fds attached, to address (nullptr: the connected peer), MSG_NOSIGNAL, EINTR
// retried. Returns what sendmsg returned (errno set when negative); SendMessage and NotifySend
// turn that into a Result each their own way.
ssize_t SendWithFds(int fd, const void* data, size_t length, const int* fds, size_t fdCount, const sockaddr_un* address, socklen_t addressLength);

// recvmsg(2) into buffer with room for maxFds fds. value is the bytes read (0 with no fds: the
// peer closed) or kWouldBlock. When the message or its fds did not fit, every fd that arrived is
// closed and the result is EMSGSIZE.
Result ReceiveMessage(int fd, void* buffer, size_t length, int maxFds, ReceivedFds* received);

Result PeerCredentials(int fd, Credentials* credentials);

// ENOTSOCK (from getsockopt) when fd is not a socket.
Result DescribeSocket(int fd, SocketDescription* description);

// What a received fd is, as a moved connection: kConnection for a connected (not listening) stream
// socket of family inet, inet6 or unix; otherwise why not. Three getsockopt calls, no getsockname:
// the successor checks every fd of a CONN frame before it acknowledges them.
enum ConnectionCheck : uint8_t {
  kConnection = 0,
  kNotSocket = 1,     // getsockopt failed (ENOTSOCK, EBADF)
  kNotStream = 2,     // SOCK_DGRAM, SOCK_SEQPACKET, ...
  kUnknownFamily = 3, // neither inet, inet6 nor unix
  kListening = 4,     // SO_ACCEPTCONN
};
ConnectionCheck CheckConnection(int fd);

// A set of fds watched for readability in one kernel object (Linux epoll; ENOSYS elsewhere): the
// successor parks acknowledged idle connections there instead of making a Node socket for each.
// EpollCreate: value is the epoll fd (close-on-exec). EpollAdd: EPOLLIN | EPOLLRDHUP, the fd as
// its data. EpollDelete: stop watching fd. EpollWait: never blocks; value is how many of `ready`
// (room for `max`) were filled with fds that are readable or hung up.
Result EpollCreate();
Result EpollAdd(int epollFd, int fd);
Result EpollDelete(int epollFd, int fd);
Result EpollWait(int epollFd, int* ready, int max);

// fcntl(F_DUPFD_CLOEXEC); value is the new fd.
Result Dup(int fd);

// close(2). EINTR counts as closed: the fd is gone on Linux, and a retry could close a reused one.
Result Close(int fd);

Result SetNonBlocking(int fd, bool on);

// Which open file an fd number names now (fstat's st_dev and st_ino), to notice that a number
// was closed and reused.
struct FileIdentity {
  uint64_t device = 0;
  uint64_t inode = 0;
  bool operator==(const FileIdentity& other) const { return device == other.device && inode == other.inode; }
};
Result IdentifyFile(int fd, FileIdentity* identity);

// The errno name of err (a negative errno): "ENOENT"; "UNKNOWN" when not in the table.
const char* ErrnoName(int err);

// strerror of err (a negative errno), thread-safe.
std::string ErrnoMessage(int err);

}  // namespace fdpass
