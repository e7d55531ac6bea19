// Test-only fault points: named steps of the exchange where a test may kill a process. A no-op
// unless a test installs a hook through the 'handover/testing' subpath; nothing else can reach it.

/**
 * The steps of the exchange, as each process sees them. A point fires in the process named in its
 * comment, right after the step; `count` numbers repeated steps (batches, late writes) from 1.
 */
export type FaultPoint =
  /** successor: connected to control.sock (before HELLO). predecessor: accepted it. */
  | 'connected'
  /** successor: HELLO is in the kernel. predecessor: HELLO received and accepted. */
  | 'hello'
  /** predecessor: LISTENERS (with their fds) is in the kernel. successor: LISTENERS received. */
  | 'listeners'
  /** successor: ready() was called (its servers are built), before READY. */
  | 'servers-built'
  /** successor: READY is in the kernel. predecessor: READY received, before it stops accepting. */
  | 'ready-sent'
  /** predecessor: stopped accepting and READY_ACK is in the kernel. successor: READY_ACK received. */
  | 'ready-acked'
  /** successor: control.sock and pid renamed over the predecessor's. */
  | 'control-taken'
  /** predecessor: CONN batch number `count` is in the kernel. */
  | 'conn-sent'
  /** predecessor: CONN_ACK number `count` handled. successor: CONN_ACK number `count` is in the kernel. */
  | 'conn-acked'
  /** predecessor: late WRITE number `count` is in the kernel. successor: late WRITE number `count` written. */
  | 'late-write'
  /** predecessor: retirement began ('retiring' emitted). */
  | 'retiring'
  /** predecessor: BYE is in the kernel, before 'retired' is emitted. successor: BYE received. */
  | 'retired';

export interface FaultContext {
  role: 'predecessor' | 'successor';
  /** The other process's pid as this process sees it (0 or undefined when unknown, e.g. another PID namespace). */
  peerPid: number | undefined;
  count: number;
}

export type FaultHook = (point: FaultPoint, context: FaultContext) => void;

let hook: FaultHook | undefined;
const counts = new Map<string, number>();

/** setFaultHook installs (or with undefined removes) the test hook. Exported only from 'handover/testing'. */
export function setFaultHook(next: FaultHook | undefined): void {
  hook = next;
  counts.clear();
}

/** fault reports that `point` was reached. Costs one comparison when no test hook is installed. */
export function fault(point: FaultPoint, role: FaultContext['role'], peerPid: number | undefined): void {
  if (hook === undefined) return;
  const key = `${role}:${point}`;
  const count = (counts.get(key) ?? 0) + 1;
  counts.set(key, count);
  hook(point, { role, peerPid, count });
}
