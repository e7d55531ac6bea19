// The two syscalls of a supervisor (`handover run`): reaping any child, adopted orphans included,
// and becoming the reaper of orphaned descendants. Integers in, integers out; no N-API here.
#pragma once

#include <cstdint>

#include "fdpass.h"

namespace supervise {

// How one child ended: exited with code (signal 0), or was killed by signal (code -1).
struct ChildExit {
  int64_t pid = 0;
  int code = -1;
  int signal = 0;
};

// waitpid(-1, WNOHANG): value is the pid reaped (exit filled in), or 0 when no child has ended
// yet or there is no child at all (ECHILD). EINTR is retried.
fdpass::Result ReapChild(ChildExit* exit);

// prctl(PR_SET_CHILD_SUBREAPER, 1): orphaned descendants are reparented to this process rather
// than to PID 1 of its namespace. ENOSYS where the platform has no such thing.
fdpass::Result SetChildSubreaper();

}  // namespace supervise
