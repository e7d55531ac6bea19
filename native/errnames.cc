// errno names and messages as Node reports them (see fdpass.h).
#include "fdpass.h"

#include <cerrno>
#include <cstring>
#include <string>

namespace fdpass {
namespace {

// GNU strerror_r returns the message; XSI strerror_r fills the buffer. Overloads pick the right one.
[[maybe_unused]] const char* PickMessage(int, const char* buffer) {
  return buffer;
}
[[maybe_unused]] const char* PickMessage(const char* message, const char*) {
  return message;
}

struct ErrnoEntry {
  int number;
  const char* name;
};

// Names as Node reports them (util.getSystemErrorName): first match wins where two are equal.
const ErrnoEntry kErrnoNames[] = {
    {E2BIG, "E2BIG"},
    {EACCES, "EACCES"},
    {EADDRINUSE, "EADDRINUSE"},
    {EADDRNOTAVAIL, "EADDRNOTAVAIL"},
    {EAFNOSUPPORT, "EAFNOSUPPORT"},
    {EAGAIN, "EAGAIN"},
    {EALREADY, "EALREADY"},
    {EBADF, "EBADF"},
    {EBUSY, "EBUSY"},
    {ECANCELED, "ECANCELED"},
    {ECONNABORTED, "ECONNABORTED"},
    {ECONNREFUSED, "ECONNREFUSED"},
    {ECONNRESET, "ECONNRESET"},
    {EDESTADDRREQ, "EDESTADDRREQ"},
    {EEXIST, "EEXIST"},
    {EFAULT, "EFAULT"},
    {EFBIG, "EFBIG"},
    {EHOSTUNREACH, "EHOSTUNREACH"},
    {EINPROGRESS, "EINPROGRESS"},
    {EINTR, "EINTR"},
    {EINVAL, "EINVAL"},
    {EIO, "EIO"},
    {EISCONN, "EISCONN"},
    {EISDIR, "EISDIR"},
    {ELOOP, "ELOOP"},
    {EMFILE, "EMFILE"},
    {EMSGSIZE, "EMSGSIZE"},
    {ENAMETOOLONG, "ENAMETOOLONG"},
    {ENETDOWN, "ENETDOWN"},
    {ENETUNREACH, "ENETUNREACH"},
    {ENFILE, "ENFILE"},
    {ENOBUFS, "ENOBUFS"},
    {ENODEV, "ENODEV"},
    {ENOENT, "ENOENT"},
    {ENOMEM, "ENOMEM"},
    {ENOPROTOOPT, "ENOPROTOOPT"},
    {ENOSPC, "ENOSPC"},
    {ENOSYS, "ENOSYS"},
    {ENOTCONN, "ENOTCONN"},
    {ENOTDIR, "ENOTDIR"},
    {ENOTEMPTY, "ENOTEMPTY"},
    {ENOTSOCK, "ENOTSOCK"},
    {ENOTSUP, "ENOTSUP"},
    {EOPNOTSUPP, "EOPNOTSUPP"},
    {EOVERFLOW, "EOVERFLOW"},
    {EPERM, "EPERM"},
    {EPIPE, "EPIPE"},
    {EPROTO, "EPROTO"},
    {EPROTONOSUPPORT, "EPROTONOSUPPORT"},
    {EPROTOTYPE, "EPROTOTYPE"},
    {ERANGE, "ERANGE"},
    {EROFS, "EROFS"},
    {ESHUTDOWN, "ESHUTDOWN"},
    {ESPIPE, "ESPIPE"},
    {ESRCH, "ESRCH"},
    {ETIMEDOUT, "ETIMEDOUT"},
    {ETOOMANYREFS, "ETOOMANYREFS"},
    {ETXTBSY, "ETXTBSY"},
    {EXDEV, "EXDEV"},
};

}  // namespace

const char* ErrnoName(int err) {
  for (const ErrnoEntry& entry : kErrnoNames) {
    if (entry.number == -err) return entry.name;
  }
  return "UNKNOWN";
}

std::string ErrnoMessage(int err) {
  char buffer[256];
  buffer[0] = '\0';
  return PickMessage(strerror_r(-err, buffer, sizeof(buffer)), buffer);
}

}  // namespace fdpass
