// fd flow control: the successor announces how many more fds it can take (credit), and the
// predecessor never has more fds in flight than that, so no fd is ever dropped by the kernel.
import * as fs from 'node:fs';

/** The successor's own headroom (accepting new connections, files): never offered as credit. */
function reserveFor(limit: number): number {
  return Math.min(64, Math.max(8, Math.floor(limit / 32)));
}

/** The soft RLIMIT_NOFILE of this process, where the platform tells (Linux /proc), else undefined. */
function openFileLimit(): number | undefined {
  try {
    const limits = fs.readFileSync('/proc/self/limits', 'utf8');
    const match = /^Max open files\s+(\d+|unlimited)/m.exec(limits);
    if (!match || match[1] === 'unlimited') return undefined;
    return Number(match[1]);
  } catch {
    return undefined;
  }
}

/**
 * fdCredit: how many more fds this process can receive now, keeping its reserve; undefined where it
 * cannot tell (then the predecessor falls back to its fixed window). A new fd gets the lowest free
 * number below the limit, so what counts is the open fds numbered below it.
 */
export function fdCredit(): number | undefined {
  const limit = openFileLimit();
  if (limit === undefined) return undefined;
  let open: number;
  try {
    // readdir holds one fd of its own while it lists; it is closed again by the time this returns.
    open = fs.readdirSync('/proc/self/fd').filter((name) => Number(name) < limit).length - 1;
  } catch {
    return undefined;
  }
  return Math.max(0, limit - open - reserveFor(limit));
}

/** Below this estimate the successor counts its fds again before announcing. */
const LOW_ESTIMATE = 2048;
/** An estimate older than this is counted again (other code may have opened fds meanwhile). */
const ESTIMATE_MAX_AGE_MS = 200;

/**
 * CreditMeter is the successor's fdCredit() for every CONN_ACK without listing /proc/self/fd each
 * time (a listing of 10,000 fds costs milliseconds, 40 times per 10,000 connections): the last
 * count minus the fds received since, counted again when that estimate runs low or gets old. The
 * estimate errs low only (fds closed since are not credited back), except for fds other code opened
 * since the count: the reserve and the age limit cover those.
 */
export class CreditMeter {
  private measured: number | undefined;
  private at = -Infinity;
  private spent = 0;

  /** received: fds of a CONN frame are open here now. */
  received(fds: number): void {
    this.spent += fds;
  }

  /** current: the credit to announce now (undefined where the platform cannot tell). */
  current(): number | undefined {
    const now = performance.now();
    if (this.measured === undefined || now - this.at > ESTIMATE_MAX_AGE_MS || this.measured - this.spent < LOW_ESTIMATE) {
      this.measured = fdCredit();
      this.at = now;
      this.spent = 0;
    }
    return this.measured === undefined ? undefined : Math.max(0, this.measured - this.spent);
  }
}

/**
 * CreditWindow is the predecessor's account of the successor's credit: the last credit it
 * announced, minus the fds of every batch sent after that announcement.
 */
export class CreditWindow {
  /** fds of each batch sent and not yet answered, oldest first (answers come in order). */
  private readonly unanswered: number[] = [];
  private credit: number | undefined;

  constructor(initial: number | undefined) {
    this.credit = initial;
  }

  /** available: fds that may be sent now (Infinity when the successor does not announce credit). */
  get available(): number {
    if (this.credit === undefined) return Infinity;
    // Batches the successor had not received when it counted are still in flight.
    let inFlight = 0;
    for (const fds of this.unanswered) inFlight += fds;
    return Math.max(0, this.credit - inFlight);
  }

  get batchesInFlight(): number {
    return this.unanswered.length;
  }

  sent(fds: number): void {
    this.unanswered.push(fds);
  }

  /** A batch was refused by the channel itself: its fds never left. */
  unsent(fds: number): void {
    const index = this.unanswered.lastIndexOf(fds);
    if (index >= 0) this.unanswered.splice(index, 1);
  }

  /**
   * answered: a CONN_ACK (answering the oldest batch, or none for a plain credit update) with the
   * successor's credit at the time it sent it: every batch it had received is counted in it.
   */
  answered(answersBatch: boolean, credit: number | undefined): void {
    if (answersBatch) this.unanswered.shift();
    if (credit !== undefined) this.credit = credit;
  }
}
