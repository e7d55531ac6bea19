// The messages of the handover exchange: encode, decode, validate. A message is one channel frame:
// type (u8), header length (u32), a JSON header, then an optional binary body. fds ride on the frame.
import { HandoverError } from './errors';
import type { Frame } from './channel';

/** Version of the exchange; a successor with another version is refused with a clear reason. */
export const PROTOCOL_VERSION = 1;

export const MessageType = {
  HELLO: 1,
  LISTENERS: 2,
  REFUSED: 3,
  READY: 4,
  READY_ACK: 5,
  CONN: 6,
  CONN_ACK: 7,
  WRITE: 8,
  WRITE_ACK: 9,
  BYE: 10,
  ABORT: 11,
  PING: 12,
  PONG: 13,
  COMMIT: 14,
  STATUS: 15,
  STATUS_REPLY: 16,
  UPGRADE: 17,
  PROGRESS: 18,
  RESULT: 19,
} as const;
export type MessageTypeName = keyof typeof MessageType;

/** What kind of listener a key names: tcp (inet/inet6), udp (a dgram socket), a unix socket path, or a user name. */
export type ListenerKind = 'tcp' | 'udp' | 'unix' | 'named';

export interface ListenerEntry {
  key: string;
  kind: ListenerKind;
}

export interface ConnEntry {
  /** Unique per control channel, chosen by the predecessor. */
  id: number;
  /** The listener key of the server the connection belongs to. */
  key: string;
  /** Bytes of `pending` in the body for this connection (bodies are concatenated in order). */
  pendingLength: number;
  /** Bytes the predecessor's application wrote that were not yet flushed: the successor writes them first. Follows `pending` in the body. */
  writeLength: number;
  /** Small, JSON: protocol state handed to the successor's adapter. */
  state?: unknown;
}

/** The result of the last upgrade a generation knows of: the one that started it, or a later one that failed. */
export interface UpgradeRecord {
  result: 'succeeded' | 'failed' | 'rolled-back';
  /** When it ended (ms since the epoch). */
  at: number;
  /** The generation that handed over (for 'succeeded': this one's predecessor). */
  predecessorPid?: number;
  /** The successor involved, where one was known. */
  successorPid?: number;
  /** The error code of a failure ('failed', 'rolled-back'). */
  code?: string;
  reason?: string;
}

/** What a running generation says about itself (STATUS_REPLY), as `handover status` shows it. */
export interface GenerationStatus {
  pid: number;
  /** 1 for a fresh start, one more at each upgrade (passed on in LISTENERS). */
  generation: number;
  /** The upgrader's state: serving, upgrading, retiring, ... */
  state: string;
  /** When this process started serving... or started, before it serves (ms since the epoch). */
  startedAt: number;
  /** ms since startedAt, by the generation's own clock. */
  uptime: number;
  /** address: where it listens now ('127.0.0.1:8080', '[::]:443', a unix path), when the server listens. */
  listeners: { key: string; kind: ListenerKind; address?: string }[];
  /** Connections: open now; since start, closed here and moved to a successor. */
  connections: { open: number; closed: number; moved: number };
  /** Its own predecessor, while that still retires. */
  predecessorPid?: number;
  lastUpgrade?: UpgradeRecord;
}

/** The steps of an upgrade asked for over the control socket, in order. */
export type UpgradeStep = 'spawned' | 'connected' | 'ready' | 'moving' | 'retired';

export type Message =
  | { type: 'HELLO'; version: number; pid: number }
  /** generation: the predecessor's generation number (the successor's is one more); optional for older peers. */
  | { type: 'LISTENERS'; pid: number; listeners: ListenerEntry[]; fds: number[]; generation?: number }
  | { type: 'REFUSED'; code: string; reason: string }
  /** credit (optional): how many more fds the successor can receive now (fd flow control). */
  | { type: 'READY'; pid: number; credit?: number }
  | { type: 'READY_ACK' }
  | { type: 'CONN'; conns: ConnEntry[]; body: Buffer; fds: number[] }
  /** Answers the oldest unanswered CONN; with no ids, only updates the credit. */
  | { type: 'CONN_ACK'; acked: number[]; refused: { id: number; reason: string }[]; credit?: number }
  | { type: 'WRITE'; id: number; seq: number; data: Buffer }
  | { type: 'WRITE_ACK'; id: number; seq: number }
  /** Either end leaves the exchange in an orderly way: the predecessor has retired; a successor that stopped its upgrader still serves. */
  | { type: 'BYE'; reason: string }
  /** The successor gives up: it closed its listeners and will not serve (the predecessor rolls back). */
  | { type: 'ABORT'; reason: string }
  /** The successor took over control.sock and pid: the predecessor may finish retiring. */
  | { type: 'COMMIT' }
  /** Is a generation alive behind this control socket? The first message of a link, answered with PONG, changing nothing. */
  | { type: 'PING' }
  | { type: 'PONG'; pid: number }
  /** A control client (not a successor) asks what the generation is doing; answered with STATUS_REPLY, then closed. */
  | { type: 'STATUS'; version: number }
  | { type: 'STATUS_REPLY'; status: GenerationStatus }
  /** A control client asks the generation to upgrade; answered with PROGRESS messages, then RESULT, then closed. */
  | { type: 'UPGRADE'; version: number }
  | { type: 'PROGRESS'; step: UpgradeStep; pid?: number; connections?: number }
  /** How an UPGRADE ended: ok with the successor's pid and generation, or the error code and reason. */
  | { type: 'RESULT'; ok: boolean; code?: string; reason?: string; pid?: number; generation?: number; report?: { closed: number; moved: number; remaining: number; timedOut: boolean } };

export type MessageOf<T extends Message['type']> = Extract<Message, { type: T }>;

const typeNames = new Map<number, MessageTypeName>(Object.entries(MessageType).map(([name, value]) => [value, name as MessageTypeName]));

function protocolError(reason: string): HandoverError {
  return new HandoverError('ERR_HANDOVER_PROTOCOL', reason);
}

/** encode turns a message into the payload and fds of one frame. */
export function encode(message: Message): { payload: Buffer; fds: number[] } {
  let header: Record<string, unknown>;
  let body: Buffer | undefined;
  let fds: number[] = [];
  switch (message.type) {
    case 'LISTENERS':
      header = { pid: message.pid, listeners: message.listeners, ...(message.generation === undefined ? {} : { generation: message.generation }) };
      fds = message.fds;
      break;
    case 'CONN':
      header = { conns: message.conns };
      body = message.body;
      fds = message.fds;
      break;
    case 'WRITE':
      header = { id: message.id, seq: message.seq };
      body = message.data;
      break;
    default: {
      const { type: _type, ...rest } = message;
      header = rest;
    }
  }
  const json = Buffer.from(JSON.stringify(header));
  const payload = Buffer.allocUnsafe(5 + json.length + (body?.length ?? 0));
  payload.writeUInt8(MessageType[message.type], 0);
  payload.writeUInt32BE(json.length, 1);
  json.copy(payload, 5);
  if (body) body.copy(payload, 5 + json.length);
  return { payload, fds };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function isString(value: unknown, max = 4096): value is string {
  return typeof value === 'string' && value.length <= max;
}

/**
 * decode validates a frame and returns its message. On any error it throws ERR_HANDOVER_PROTOCOL
 * and leaves the frame's fds to the caller (who must close them).
 */
export function decode(frame: Frame): Message {
  const { payload, fds } = frame;
  if (payload.length < 5) throw protocolError(`message of ${payload.length} bytes is too short`);
  const name = typeNames.get(payload.readUInt8(0));
  if (name === undefined) throw protocolError(`unknown message type ${payload.readUInt8(0)}`);
  const jsonLength = payload.readUInt32BE(1);
  if (jsonLength > payload.length - 5) throw protocolError(`${name}: header length ${jsonLength} exceeds the message`);
  let header: unknown;
  try {
    header = JSON.parse(payload.toString('utf8', 5, 5 + jsonLength));
  } catch {
    throw protocolError(`${name}: header is not valid JSON`);
  }
  if (!isObject(header)) throw protocolError(`${name}: header is not an object`);
  const body = payload.subarray(5 + jsonLength);
  const expectNoFds = (): void => {
    if (fds.length !== 0) throw protocolError(`${name} must not carry fds (got ${fds.length})`);
  };
  const expectNoBody = (): void => {
    if (body.length !== 0) throw protocolError(`${name} must not carry a body`);
  };
  switch (name) {
    case 'HELLO': {
      expectNoFds();
      expectNoBody();
      if (!isCount(header.version) || !isCount(header.pid)) throw protocolError('HELLO needs version and pid');
      return { type: 'HELLO', version: header.version, pid: header.pid };
    }
    case 'LISTENERS': {
      expectNoBody();
      const listeners = header.listeners;
      if (!isCount(header.pid) || !Array.isArray(listeners)) throw protocolError('LISTENERS needs pid and listeners');
      const entries: ListenerEntry[] = [];
      for (const entry of listeners) {
        if (!isObject(entry) || !isString(entry.key) || entry.key.length === 0) throw protocolError('LISTENERS: a listener has no key');
        if (entry.kind !== 'tcp' && entry.kind !== 'udp' && entry.kind !== 'unix' && entry.kind !== 'named') throw protocolError(`LISTENERS: unknown kind ${String(entry.kind)}`);
        entries.push({ key: entry.key, kind: entry.kind });
      }
      if (new Set(entries.map((e) => e.key)).size !== entries.length) throw protocolError('LISTENERS: duplicate keys');
      if (fds.length !== entries.length) throw protocolError(`LISTENERS: ${entries.length} listeners but ${fds.length} fds`);
      if (header.generation !== undefined && !isCount(header.generation)) throw protocolError('LISTENERS: generation must be a count');
      return { type: 'LISTENERS', pid: header.pid, listeners: entries, fds, ...(header.generation === undefined ? {} : { generation: header.generation }) };
    }
    case 'REFUSED': {
      expectNoFds();
      expectNoBody();
      if (!isString(header.code) || !isString(header.reason)) throw protocolError('REFUSED needs code and reason');
      return { type: 'REFUSED', code: header.code, reason: header.reason };
    }
    case 'READY': {
      expectNoFds();
      expectNoBody();
      if (!isCount(header.pid)) throw protocolError('READY needs pid');
      if (header.credit !== undefined && !isCount(header.credit)) throw protocolError('READY: credit must be a count');
      return { type: 'READY', pid: header.pid, ...(header.credit === undefined ? {} : { credit: header.credit }) };
    }
    case 'READY_ACK':
      expectNoFds();
      expectNoBody();
      return { type: 'READY_ACK' };
    case 'CONN': {
      const conns = header.conns;
      if (!Array.isArray(conns) || conns.length === 0) throw protocolError('CONN needs conns');
      const entries: ConnEntry[] = [];
      let total = 0;
      for (const conn of conns) {
        if (!isObject(conn) || !isCount(conn.id) || !isString(conn.key) || !isCount(conn.pendingLength) || !isCount(conn.writeLength)) {
          throw protocolError('CONN: malformed connection entry');
        }
        total += conn.pendingLength + conn.writeLength;
        const entry: ConnEntry = { id: conn.id, key: conn.key, pendingLength: conn.pendingLength, writeLength: conn.writeLength };
        if (conn.state !== undefined) entry.state = conn.state;
        entries.push(entry);
      }
      if (total !== body.length) throw protocolError(`CONN: pending and write lengths add up to ${total} but the body has ${body.length} bytes`);
      if (fds.length !== entries.length) throw protocolError(`CONN: ${entries.length} connections but ${fds.length} fds`);
      return { type: 'CONN', conns: entries, body, fds };
    }
    case 'CONN_ACK': {
      expectNoFds();
      expectNoBody();
      const { acked, refused } = header;
      if (!Array.isArray(acked) || !acked.every(isCount) || !Array.isArray(refused)) throw protocolError('CONN_ACK needs acked and refused');
      const refusals: { id: number; reason: string }[] = [];
      for (const entry of refused) {
        if (!isObject(entry) || !isCount(entry.id) || !isString(entry.reason)) throw protocolError('CONN_ACK: malformed refusal');
        refusals.push({ id: entry.id, reason: entry.reason });
      }
      if (header.credit !== undefined && !isCount(header.credit)) throw protocolError('CONN_ACK: credit must be a count');
      return { type: 'CONN_ACK', acked: acked as number[], refused: refusals, ...(header.credit === undefined ? {} : { credit: header.credit }) };
    }
    case 'WRITE': {
      expectNoFds();
      if (!isCount(header.id) || !isCount(header.seq)) throw protocolError('WRITE needs id and seq');
      return { type: 'WRITE', id: header.id, seq: header.seq, data: body };
    }
    case 'WRITE_ACK': {
      expectNoFds();
      expectNoBody();
      if (!isCount(header.id) || !isCount(header.seq)) throw protocolError('WRITE_ACK needs id and seq');
      return { type: 'WRITE_ACK', id: header.id, seq: header.seq };
    }
    case 'BYE':
    case 'ABORT': {
      expectNoFds();
      expectNoBody();
      if (!isString(header.reason)) throw protocolError(`${name} needs a reason`);
      return { type: name, reason: header.reason };
    }
    case 'PING':
    case 'COMMIT':
      expectNoFds();
      expectNoBody();
      return { type: name };
    case 'PONG': {
      expectNoFds();
      expectNoBody();
      if (!isCount(header.pid)) throw protocolError('PONG needs pid');
      return { type: 'PONG', pid: header.pid };
    }
    case 'STATUS':
    case 'UPGRADE': {
      expectNoFds();
      expectNoBody();
      if (!isCount(header.version)) throw protocolError(`${name} needs version`);
      return { type: name, version: header.version };
    }
    case 'STATUS_REPLY': {
      expectNoFds();
      expectNoBody();
      return { type: 'STATUS_REPLY', status: decodeStatus(header.status) };
    }
    case 'PROGRESS': {
      expectNoFds();
      expectNoBody();
      if (!UPGRADE_STEPS.has(header.step as UpgradeStep)) throw protocolError(`PROGRESS: unknown step ${String(header.step)}`);
      if (header.pid !== undefined && !isCount(header.pid)) throw protocolError('PROGRESS: pid must be a count');
      if (header.connections !== undefined && !isCount(header.connections)) throw protocolError('PROGRESS: connections must be a count');
      return {
        type: 'PROGRESS',
        step: header.step as UpgradeStep,
        ...(header.pid === undefined ? {} : { pid: header.pid }),
        ...(header.connections === undefined ? {} : { connections: header.connections }),
      };
    }
    case 'RESULT': {
      expectNoFds();
      expectNoBody();
      if (typeof header.ok !== 'boolean') throw protocolError('RESULT needs ok');
      const result: MessageOf<'RESULT'> = { type: 'RESULT', ok: header.ok };
      if (header.code !== undefined) result.code = expectString(header.code, 'RESULT: code');
      if (header.reason !== undefined) result.reason = expectString(header.reason, 'RESULT: reason');
      if (header.pid !== undefined) result.pid = expectCount(header.pid, 'RESULT: pid');
      if (header.generation !== undefined) result.generation = expectCount(header.generation, 'RESULT: generation');
      if (header.report !== undefined) {
        const report = header.report;
        if (!isObject(report) || !isCount(report.closed) || !isCount(report.moved) || !isCount(report.remaining) || typeof report.timedOut !== 'boolean') throw protocolError('RESULT: malformed report');
        result.report = { closed: report.closed, moved: report.moved, remaining: report.remaining, timedOut: report.timedOut };
      }
      if (!result.ok && result.code === undefined) throw protocolError('RESULT: a failure needs a code');
      return result;
    }
  }
}

const UPGRADE_STEPS: ReadonlySet<UpgradeStep> = new Set(['spawned', 'connected', 'ready', 'moving', 'retired']);
const UPGRADE_RESULTS: ReadonlySet<string> = new Set(['succeeded', 'failed', 'rolled-back']);

function expectCount(value: unknown, what: string): number {
  if (!isCount(value)) throw protocolError(`${what} must be a count`);
  return value;
}

function expectString(value: unknown, what: string): string {
  if (!isString(value)) throw protocolError(`${what} must be a string`);
  return value;
}

/** decodeStatus checks a GenerationStatus field by field (it is shown to an operator and parsed by scripts). */
function decodeStatus(value: unknown): GenerationStatus {
  if (!isObject(value)) throw protocolError('STATUS_REPLY needs status');
  const { connections, listeners, lastUpgrade } = value;
  if (!isObject(connections) || !Array.isArray(listeners)) throw protocolError('STATUS_REPLY: status needs connections and listeners');
  const status: GenerationStatus = {
    pid: expectCount(value.pid, 'STATUS_REPLY: pid'),
    generation: expectCount(value.generation, 'STATUS_REPLY: generation'),
    state: expectString(value.state, 'STATUS_REPLY: state'),
    startedAt: expectCount(value.startedAt, 'STATUS_REPLY: startedAt'),
    uptime: expectCount(value.uptime, 'STATUS_REPLY: uptime'),
    listeners: listeners.map((entry) => {
      if (!isObject(entry) || !isString(entry.key) || (entry.kind !== 'tcp' && entry.kind !== 'unix' && entry.kind !== 'named')) throw protocolError('STATUS_REPLY: malformed listener');
      return { key: entry.key, kind: entry.kind, ...(entry.address === undefined ? {} : { address: expectString(entry.address, 'STATUS_REPLY: listener address') }) };
    }),
    connections: {
      open: expectCount(connections.open, 'STATUS_REPLY: connections.open'),
      closed: expectCount(connections.closed, 'STATUS_REPLY: connections.closed'),
      moved: expectCount(connections.moved, 'STATUS_REPLY: connections.moved'),
    },
  };
  if (value.predecessorPid !== undefined) status.predecessorPid = expectCount(value.predecessorPid, 'STATUS_REPLY: predecessorPid');
  if (lastUpgrade !== undefined) {
    if (!isObject(lastUpgrade) || !UPGRADE_RESULTS.has(lastUpgrade.result as string)) throw protocolError('STATUS_REPLY: malformed lastUpgrade');
    const record: UpgradeRecord = { result: lastUpgrade.result as UpgradeRecord['result'], at: expectCount(lastUpgrade.at, 'STATUS_REPLY: lastUpgrade.at') };
    if (lastUpgrade.predecessorPid !== undefined) record.predecessorPid = expectCount(lastUpgrade.predecessorPid, 'STATUS_REPLY: lastUpgrade.predecessorPid');
    if (lastUpgrade.successorPid !== undefined) record.successorPid = expectCount(lastUpgrade.successorPid, 'STATUS_REPLY: lastUpgrade.successorPid');
    if (lastUpgrade.code !== undefined) record.code = expectString(lastUpgrade.code, 'STATUS_REPLY: lastUpgrade.code');
    if (lastUpgrade.reason !== undefined) record.reason = expectString(lastUpgrade.reason, 'STATUS_REPLY: lastUpgrade.reason');
    status.lastUpgrade = record;
  }
  return status;
}
