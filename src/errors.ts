// HandoverError: the one error class of the package, with stable string codes (docs/errors.md).

/** Every code a HandoverError can carry. Match on `err.code`, never on the message. */
export type HandoverErrorCode =
  /** A frame on the control socket is malformed, too large, carries unexpected fds, or breaks the exchange. */
  | 'ERR_HANDOVER_PROTOCOL'
  /** The control channel was closed (by either end) before the operation completed. */
  | 'ERR_HANDOVER_CHANNEL_CLOSED'
  /** The peer speaks another version of the handover protocol. */
  | 'ERR_HANDOVER_VERSION'
  /** The control directory is unsafe (a symlink, not a directory, writable by others, owned by another user). */
  | 'ERR_HANDOVER_DIR_UNSAFE'
  /** An option or argument is invalid; the message names it. */
  | 'ERR_HANDOVER_INVALID_ARG'
  /** The call is not allowed in the upgrader's current state (e.g. listen() after ready()). */
  | 'ERR_HANDOVER_INVALID_STATE'
  /** This Node.js version changed an internal the package relies on, or lacks a feature an option needs (reusePort before 22.12). */
  | 'ERR_HANDOVER_UNSUPPORTED_RUNTIME'
  /** The socket cannot be moved (not a TCP socket, already destroyed, no handle). */
  | 'ERR_HANDOVER_NOT_MOVABLE'
  /** upgrade() was called while another upgrade is running. */
  | 'ERR_UPGRADE_IN_PROGRESS'
  /** The predecessor refused this successor (another uid, or a refusal with a reason). */
  | 'ERR_UPGRADE_REFUSED'
  /** The successor exited or crashed before it was ready. */
  | 'ERR_UPGRADE_SUCCESSOR_EXITED'
  /** The successor did not become ready within readyTimeout. */
  | 'ERR_UPGRADE_READY_TIMEOUT'
  /** The successor could not be started (spawn failed). */
  | 'ERR_UPGRADE_SPAWN_FAILED'
  /** The upgrader was stopped while the operation was pending. */
  | 'ERR_HANDOVER_STOPPED'
  /** systemd could not be notified, or its LISTEN_FDS were not for this process or malformed. */
  | 'ERR_HANDOVER_SYSTEMD'
  /** The successor was lost after it was ready; the predecessor rolled back and serves again (a control client's result). */
  | 'ERR_UPGRADE_ROLLED_BACK'
  /** No generation runs in the control directory (no control.sock, or nobody listens on it). */
  | 'ERR_HANDOVER_NOT_RUNNING'
  /** A control client's --timeout passed before the answer (an upgrade may still finish). */
  | 'ERR_HANDOVER_TIMEOUT';

/** HandoverError is the single error class thrown or emitted by handover, so callers can switch on `code`. */
export class HandoverError extends Error {
  readonly code: HandoverErrorCode;

  constructor(code: HandoverErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'HandoverError';
    this.code = code;
  }
}

/** isHandoverError narrows an unknown error, optionally to one code. */
export function isHandoverError(err: unknown, code?: HandoverErrorCode): err is HandoverError {
  return err instanceof HandoverError && (code === undefined || err.code === code);
}
