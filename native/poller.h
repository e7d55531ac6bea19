// Poller: a uv_poll_t readiness watcher on the env's loop, exposed to JS as createPoller().
#ifndef HANDOVER_POLLER_H
#define HANDOVER_POLLER_H

#include <napi.h>

namespace poller {

// Per-addon state: one per env, so main thread and workers never share it.
struct AddonData {
  Napi::FunctionReference pollerConstructor;
  // Key of the property that holds a poller's callback on the poller itself: the callback then
  // lives exactly as long as the JS object, and a dropped poller can be collected.
  Napi::Reference<Napi::Symbol> callbackKey;
};

// Sets up the env's AddonData (the Poller class and the callback key).
void Init(Napi::Env env);

// createPoller(fd, callback).
Napi::Value CreatePoller(const Napi::CallbackInfo& info);

}  // namespace poller

#endif  // HANDOVER_POLLER_H
