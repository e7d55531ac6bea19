// The chunk format of the control channel: a frame (payload and fds) travels as one or more
// SOCK_SEQPACKET messages, each a 12-byte header (magic u16, version u8, flags u8, frame length
// u32, frame fd count u32) and a slice of the payload with at most one message's worth of fds.

export const CHUNK_HEADER = 12;
const MAGIC = 0x484f; // 'HO'
const CHUNK_VERSION = 1;
const FLAG_FIRST = 1;
const FLAG_LAST = 2;
/** Payload bytes per message: well under the default unix send buffer (~208 KiB), so sendmsg never fails with EMSGSIZE. */
export const CHUNK_PAYLOAD = 64 * 1024 - CHUNK_HEADER;

/** One message of a frame, ready for sendmsg. */
export interface Chunk {
  data: Buffer;
  fds: number[];
  last: boolean;
}

/** splitFrame cuts a frame into chunks: the payload in slices, the fds at most `maxFdsPerMessage` a chunk. */
export function splitFrame(payload: Buffer, fds: readonly number[], maxFdsPerMessage: number): Chunk[] {
  const chunks: Chunk[] = [];
  let offset = 0;
  let fdOffset = 0;
  do {
    const bytes = Math.min(CHUNK_PAYLOAD, payload.length - offset);
    const fdCount = Math.min(maxFdsPerMessage, fds.length - fdOffset);
    const last = offset + bytes === payload.length && fdOffset + fdCount === fds.length;
    const data = Buffer.allocUnsafe(CHUNK_HEADER + bytes);
    data.writeUInt16BE(MAGIC, 0);
    data.writeUInt8(CHUNK_VERSION, 2);
    data.writeUInt8((chunks.length === 0 ? FLAG_FIRST : 0) | (last ? FLAG_LAST : 0), 3);
    data.writeUInt32BE(payload.length, 4);
    data.writeUInt32BE(fds.length, 8);
    payload.copy(data, CHUNK_HEADER, offset, offset + bytes);
    chunks.push({ data, fds: fds.slice(fdOffset, fdOffset + fdCount), last });
    offset += bytes;
    fdOffset += fdCount;
  } while (offset < payload.length || fdOffset < fds.length);
  return chunks;
}

/** What one received chunk gave: nothing yet, a whole frame, or a broken rule. */
export type Assembled =
  | undefined
  | { frame: { payload: Buffer; fds: number[] } }
  /** `untaken`: the chunk's fds the assembler did not take (the caller closes them). */
  | { error: string; untaken: number[] };

/**
 * FrameAssembler puts frames together from received chunks, checking every header against the
 * frame it belongs to. The fds of a frame in progress are its own until the frame is complete or
 * abandon() hands them back.
 */
export class FrameAssembler {
  private current: { length: number; fdCount: number; parts: Buffer[]; received: number; fds: number[] } | undefined;

  constructor(
    private readonly maxFrameSize: number,
    private readonly maxFdsPerFrame: number,
  ) {}

  /** Whether a frame is in progress (a peer that ends now ends in the middle of a frame). */
  get inFrame(): boolean {
    return this.current !== undefined;
  }

  /** abandon drops the frame in progress and returns its fds, for the caller to close. */
  abandon(): number[] {
    const fds = this.current?.fds ?? [];
    this.current = undefined;
    return fds;
  }

  /** push takes one received message (`data` is copied out where kept: the receive buffer is reused). */
  push(data: Buffer, fds: number[]): Assembled {
    const reject = (error: string): Assembled => ({ error, untaken: fds });
    if (data.length < CHUNK_HEADER) return reject(`message of ${data.length} bytes is shorter than a chunk header`);
    if (data.readUInt16BE(0) !== MAGIC) return reject('message does not start with the handover magic');
    if (data.readUInt8(2) !== CHUNK_VERSION) return reject(`unknown chunk version ${data.readUInt8(2)}`);
    const flags = data.readUInt8(3);
    if ((flags & ~(FLAG_FIRST | FLAG_LAST)) !== 0) return reject(`unknown chunk flags ${flags}`);
    const length = data.readUInt32BE(4);
    const fdCount = data.readUInt32BE(8);
    const body = data.subarray(CHUNK_HEADER);
    if (flags & FLAG_FIRST) {
      if (this.current) return reject('a new frame started before the previous one ended');
      if (length > this.maxFrameSize) return reject(`frame of ${length} bytes exceeds maxFrameSize ${this.maxFrameSize}`);
      if (fdCount > this.maxFdsPerFrame) return reject(`frame with ${fdCount} fds exceeds maxFdsPerFrame ${this.maxFdsPerFrame}`);
      this.current = { length, fdCount, parts: [], received: 0, fds: [] };
    } else if (!this.current) {
      return reject('a continuation chunk arrived outside a frame');
    }
    const frame = this.current;
    if (length !== frame.length || fdCount !== frame.fdCount) return reject('chunk header disagrees with its frame');
    if (frame.received + body.length > frame.length) return reject('frame is longer than announced');
    if (frame.fds.length + fds.length > frame.fdCount) return reject('frame carries more fds than announced');
    // Ownership of the chunk's fds passes to the frame before anything else can fail.
    frame.fds.push(...fds);
    if (body.length > 0) {
      frame.parts.push(Buffer.from(body));
      frame.received += body.length;
    }
    if (!(flags & FLAG_LAST)) return undefined;
    if (frame.received !== frame.length || frame.fds.length !== frame.fdCount) {
      return { error: `frame ended with ${frame.received}/${frame.length} bytes and ${frame.fds.length}/${frame.fdCount} fds`, untaken: [] };
    }
    this.current = undefined;
    return { frame: { payload: frame.parts.length === 1 ? frame.parts[0]! : Buffer.concat(frame.parts, frame.received), fds: frame.fds } };
  }
}
