// Building a Result (fdpass.h) inside the syscall files.
#ifndef HANDOVER_RESULT_H
#define HANDOVER_RESULT_H

#include "fdpass.h"

namespace fdpass {

inline Result Ok(int64_t value) {
  Result result;
  result.value = value;
  return result;
}

inline Result Fail(const char* syscall, int errnum) {
  Result result;
  result.value = -1;
  result.err = -errnum;
  result.syscall = syscall;
  return result;
}

}  // namespace fdpass

#endif  // HANDOVER_RESULT_H
