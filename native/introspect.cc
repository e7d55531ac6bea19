// Socket introspection behind the binding (see fdpass.h): peer credentials (SO_PEERCRED, or
// getpeereid on macOS), a socket's type, family, listening state and local address, a file's identity.
#include "fdpass.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "result.h"

namespace fdpass {
namespace {

const char* TypeName(int type) {
  switch (type) {
    case SOCK_STREAM:
      return "stream";
    case SOCK_DGRAM:
      return "dgram";
    case SOCK_SEQPACKET:
      return "seqpacket";
    case SOCK_RAW:
      return "raw";
    default:
      return "unknown";
  }
}

const char* FamilyName(int family) {
  switch (family) {
    case AF_INET:
      return "inet";
    case AF_INET6:
      return "inet6";
    case AF_UNIX:
      return "unix";
    default:
      return "unknown";
  }
}

}  // namespace

Result PeerCredentials(int fd, Credentials* credentials) {
#ifdef __linux__
  ucred peer;
  socklen_t length = sizeof(peer);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &length) < 0) return Fail("getsockopt", errno);
  credentials->pid = peer.pid;
  credentials->uid = peer.uid;
  credentials->gid = peer.gid;
#else
  uid_t uid;
  gid_t gid;
  if (getpeereid(fd, &uid, &gid) < 0) return Fail("getpeereid", errno);
  credentials->pid = -1;
  credentials->uid = uid;
  credentials->gid = gid;
#endif
  return Ok(0);
}

Result DescribeSocket(int fd, SocketDescription* description) {
  int type = 0;
  socklen_t length = sizeof(type);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) < 0) return Fail("getsockopt", errno);
  int accepting = 0;
  length = sizeof(accepting);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &length) < 0) return Fail("getsockopt", errno);

  sockaddr_storage address;
  std::memset(&address, 0, sizeof(address));
  socklen_t addressLength = sizeof(address);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &addressLength) < 0) {
    return Fail("getsockname", errno);
  }
  int family = address.ss_family;
#ifdef SO_DOMAIN
  int domain = 0;
  length = sizeof(domain);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &length) == 0) family = domain;
#endif

  description->type = TypeName(type);
  description->family = FamilyName(family);
  description->listening = accepting != 0;
  char text[INET6_ADDRSTRLEN];
  if (family == AF_INET && address.ss_family == AF_INET) {
    const sockaddr_in* inet = reinterpret_cast<const sockaddr_in*>(&address);
    if (inet_ntop(AF_INET, &inet->sin_addr, text, sizeof(text)) == nullptr) return Fail("inet_ntop", errno);
    description->hasAddress = true;
    description->address = text;
    description->port = ntohs(inet->sin_port);
  } else if (family == AF_INET6 && address.ss_family == AF_INET6) {
    const sockaddr_in6* inet6 = reinterpret_cast<const sockaddr_in6*>(&address);
    if (inet_ntop(AF_INET6, &inet6->sin6_addr, text, sizeof(text)) == nullptr) return Fail("inet_ntop", errno);
    description->hasAddress = true;
    description->address = text;
    description->port = ntohs(inet6->sin6_port);
  } else if (family == AF_UNIX) {
    const sockaddr_un* local = reinterpret_cast<const sockaddr_un*>(&address);
    size_t offset = offsetof(sockaddr_un, sun_path);
    size_t pathLength = addressLength > offset ? addressLength - offset : 0;
    if (pathLength > sizeof(local->sun_path)) pathLength = sizeof(local->sun_path);
    description->hasPath = true;
#ifdef __linux__
    // An abstract name is every byte the address length covers, its leading NUL included.
    if (pathLength > 0 && local->sun_path[0] == '\0') {
      description->path.assign(local->sun_path, pathLength);
      return Ok(0);
    }
#endif
    description->path.assign(local->sun_path, strnlen(local->sun_path, pathLength));
  }
  return Ok(0);
}

ConnectionCheck CheckConnection(int fd) {
  int type = 0;
  socklen_t length = sizeof(type);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) < 0) return kNotSocket;
  if (type != SOCK_STREAM) return kNotStream;
  int family = AF_UNSPEC;
#ifdef SO_DOMAIN
  length = sizeof(family);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &length) < 0) return kNotSocket;
#else
  sockaddr_storage address;
  socklen_t addressLength = sizeof(address);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &addressLength) < 0) return kNotSocket;
  family = address.ss_family;
#endif
  if (family != AF_INET && family != AF_INET6 && family != AF_UNIX) return kUnknownFamily;
  int accepting = 0;
  length = sizeof(accepting);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &length) < 0) return kNotSocket;
  return accepting != 0 ? kListening : kConnection;
}

Result IdentifyFile(int fd, FileIdentity* identity) {
  struct stat status;
  if (fstat(fd, &status) < 0) return Fail("fstat", errno);
  identity->device = static_cast<uint64_t>(status.st_dev);
  identity->inode = static_cast<uint64_t>(status.st_ino);
  return Ok(0);
}

}  // namespace fdpass
