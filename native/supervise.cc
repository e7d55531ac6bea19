// Syscalls of the supervisor: reap any child, become a child subreaper (see supervise.h).
#include "supervise.h"

#include <errno.h>
#include <sys/types.h>
#include <sys/wait.h>

#ifdef __linux__
#include <sys/prctl.h>
#endif

namespace supervise {

fdpass::Result ReapChild(ChildExit* exit) {
  fdpass::Result result;
  int status = 0;
  pid_t pid;
  do {
    pid = waitpid(-1, &status, WNOHANG);
  } while (pid == -1 && errno == EINTR);
  if (pid == -1) {
    if (errno == ECHILD) return result;  // no child at all: nothing to reap
    result.err = -errno;
    result.syscall = "waitpid";
    return result;
  }
  result.value = pid;
  if (pid == 0) return result;
  exit->pid = pid;
  if (WIFEXITED(status)) {
    exit->code = WEXITSTATUS(status);
    exit->signal = 0;
  } else if (WIFSIGNALED(status)) {
    exit->code = -1;
    exit->signal = WTERMSIG(status);
  }
  return result;
}

fdpass::Result SetChildSubreaper() {
  fdpass::Result result;
#ifdef PR_SET_CHILD_SUBREAPER
  if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == -1) {
    result.err = -errno;
    result.syscall = "prctl";
  }
#else
  result.err = -ENOSYS;
  result.syscall = "prctl";
#endif
  return result;
}

}  // namespace supervise
