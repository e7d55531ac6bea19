// handover/testing: hooks for tests of handover itself and of applications built on it. Nothing
// here runs unless a test imports it and installs a hook.
export { setFaultHook } from './faults';
export type { FaultHook, FaultPoint, FaultContext } from './faults';
export { injectBinding } from './native';
export type { Binding } from './native';
