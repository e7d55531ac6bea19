// The upgrader's state machine, pure: states, the transition table, the phases of one link and
// the messages each phase accepts, and the queue that runs one change at a time. No I/O here.
import { HandoverError } from './errors';
import type { Message } from './protocol';

/** The states of one generation. `stopped` is final. */
export type UpgraderState = 'starting' | 'serving' | 'upgrading' | 'retiring' | 'retired' | 'stopped';

/** What moves a generation from one state to the next. */
export type LifecycleEvent =
  /** ready() completed: this process accepts and owns the control socket. */
  | 'ready'
  /** A successor connected and was accepted (uid checked, no other upgrade running). */
  | 'successor-connected'
  /** The successor said READY; this process stopped accepting. */
  | 'successor-ready'
  /** The successor went away, was refused or timed out before READY. */
  | 'successor-failed'
  /** The successor is gone (or aborted) after READY: accept again. */
  | 'rollback'
  /** Every connection moved or closed (or the graceful timeout passed): exit now. */
  | 'retired'
  /** stop(): this generation ends without a successor. */
  | 'stop';

/** The transition table: for each state, the events it accepts and where they lead. */
export const TRANSITIONS: Readonly<Record<UpgraderState, Readonly<Partial<Record<LifecycleEvent, UpgraderState>>>>> = {
  starting: { ready: 'serving', stop: 'stopped' },
  serving: { 'successor-connected': 'upgrading', stop: 'stopped' },
  upgrading: { 'successor-ready': 'retiring', 'successor-failed': 'serving', stop: 'stopped' },
  retiring: { rollback: 'serving', retired: 'retired', stop: 'stopped' },
  retired: { stop: 'stopped' },
  stopped: {},
};

/** nextState is the state `event` leads to from `state`, or undefined when the table forbids it. */
export function nextState(state: UpgraderState, event: LifecycleEvent): UpgraderState | undefined {
  return TRANSITIONS[state][event];
}

/** Lifecycle holds the one state value of a generation and changes it only through the table. */
export class Lifecycle {
  private current: UpgraderState = 'starting';

  constructor(private readonly onChange: (from: UpgraderState, to: UpgraderState, event: LifecycleEvent) => void = () => undefined) {}

  get state(): UpgraderState {
    return this.current;
  }

  can(event: LifecycleEvent): boolean {
    return nextState(this.current, event) !== undefined;
  }

  /** apply makes the transition or throws ERR_HANDOVER_INVALID_STATE naming both. */
  apply(event: LifecycleEvent): UpgraderState {
    const next = nextState(this.current, event);
    if (next === undefined) {
      throw new HandoverError('ERR_HANDOVER_INVALID_STATE', `${event} is not possible while ${this.current}`);
    }
    const from = this.current;
    this.current = next;
    this.onChange(from, next, event);
    return next;
  }
}

/**
 * The phases of one control link, the same on both ends: connected (before the listeners were
 * offered), offered (listeners sent/received, before READY was acknowledged), ready (connections
 * may move), released (the link is over: closed, refused, aborted or said BYE).
 */
export type LinkPhase = 'connected' | 'offered' | 'ready' | 'released';

type MessageType = Message['type'];

/**
 * What a predecessor accepts from its successor in each phase; anything else is a protocol error.
 * A control client (`handover status`, `handover upgrade`) is a peer whose first message is
 * STATUS or UPGRADE: its link is released at once (nothing more is accepted from it) and answered.
 */
export const FROM_SUCCESSOR: Readonly<Record<LinkPhase, readonly MessageType[]>> = {
  connected: ['HELLO', 'PING', 'STATUS', 'UPGRADE'],
  offered: ['READY', 'ABORT'],
  ready: ['COMMIT', 'CONN_ACK', 'WRITE_ACK', 'ABORT', 'BYE'],
  released: [],
};

/** What a successor accepts from its predecessor in each phase. */
export const FROM_PREDECESSOR: Readonly<Record<LinkPhase, readonly MessageType[]>> = {
  connected: ['LISTENERS', 'REFUSED'],
  offered: ['READY_ACK', 'REFUSED'],
  ready: ['CONN', 'WRITE', 'BYE'],
  released: [],
};

/** What a control client accepts from the generation it asked (the link has no phases: one request, its answers). */
export const FROM_GENERATION: readonly MessageType[] = ['STATUS_REPLY', 'PROGRESS', 'RESULT', 'REFUSED'];

/** accepts tells whether `message` is allowed in `phase` by `table`. */
export function accepts(table: Readonly<Record<LinkPhase, readonly MessageType[]>>, phase: LinkPhase, message: Message): boolean {
  return table[phase].includes(message.type);
}

/**
 * ChangeQueue runs one change at a time: a change requested while another runs (a close, a timer,
 * a message handled synchronously inside it) waits until the running one has finished.
 */
export class ChangeQueue {
  private readonly waiting: (() => void)[] = [];
  private running = false;

  run(change: () => void): void {
    this.waiting.push(change);
    if (this.running) return;
    this.running = true;
    let failure: { error: unknown } | undefined;
    while (this.waiting.length > 0) {
      try {
        this.waiting.shift()!();
      } catch (error) {
        // A throwing listener of an event emitted inside a change: the changes after it still run.
        failure ??= { error };
      }
    }
    this.running = false;
    if (failure) throw failure.error;
  }
}
