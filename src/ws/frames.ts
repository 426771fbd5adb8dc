/**
 * The one WebSocket frame parser (RFC 6455 §5), framing only: like `src/sse/`, it knows no
 * provider and no extension. It reads a *copy* of the bytes one direction of a connection carries
 * (the proxy forwards the original bytes untouched) and reports what they are: data messages as
 * a start, payload chunks and an end (so a message of any size streams through in bounded memory),
 * and control frames (close, ping, pong) whole.
 *
 * Handles: 7-, 16- and 64-bit payload lengths; masked frames (client → server), unmasked on the
 * fly; fragmented messages (continuation frames) with control frames interleaved between their
 * fragments (§5.4); a header or payload split across chunks at any byte. RSV1 on a message's first
 * frame is reported as `compressed` (permessage-deflate, RFC 7692 §6); RSV2/RSV3 belong to no
 * extension we read and are ignored. A protocol violation (a continuation without a message, a new
 * data frame inside a fragmented message, an over-long or fragmented control frame, an unknown
 * opcode, a length beyond 2^53) stops parsing for good: the bytes still flow, metering says why.
 */

export const OPCODE = {
  continuation: 0x0,
  text: 0x1,
  binary: 0x2,
  close: 0x8,
  ping: 0x9,
  pong: 0xa,
} as const;

export type DataOpcode = typeof OPCODE.text | typeof OPCODE.binary;
export type ControlOpcode = typeof OPCODE.close | typeof OPCODE.ping | typeof OPCODE.pong;

/** Where the parser reports what it read. Callbacks run synchronously inside `feed()`. */
export interface WsFrameSink {
  /** A data message begins (its first frame's header was read). */
  messageStart(opcode: DataOpcode, compressed: boolean): void;
  /** Unmasked payload bytes of the current message, in order. Valid only during the call. */
  messageData(chunk: Buffer): void;
  /** The current message's final fragment ended. */
  messageEnd(): void;
  /** A whole control frame (payload ≤ 125 bytes, unmasked). */
  control(opcode: ControlOpcode, payload: Buffer): void;
  /** The stream broke the framing rules; nothing more is reported. */
  protocolError(reason: string): void;
}

const MAX_CONTROL_PAYLOAD = 125;
/** 2^53 − 1: a 64-bit length above this cannot be counted exactly (and no peer sends it). */
const MAX_SAFE_HIGH_WORD = 0x1fffff;

interface FrameHeader {
  fin: boolean;
  rsv1: boolean;
  opcode: number;
  mask: Buffer | undefined;
  length: number;
}

export class WsFrameParser {
  /** Bytes of a header not complete yet (at most 14). */
  private head: Buffer = Buffer.alloc(0);
  private frame: FrameHeader | undefined;
  /** Payload bytes of the current frame still to come. */
  private remaining = 0;
  /** Payload bytes of the current frame read so far (mask offset). */
  private offset = 0;
  /** Control frame payload being collected. */
  private controlParts: Buffer[] = [];
  private inMessage = false;
  private failed = false;

  constructor(private readonly sink: WsFrameSink) {}

  /** True once a protocol violation stopped the parser. */
  get broken(): boolean {
    return this.failed;
  }

  /** True between a message's first frame and its final fragment. */
  get midMessage(): boolean {
    return this.inMessage;
  }

  feed(chunk: Buffer): void {
    let pos = 0;
    while (pos < chunk.length && !this.failed) {
      if (!this.frame) {
        pos = this.readHeader(chunk, pos);
        continue;
      }
      const take = Math.min(this.remaining, chunk.length - pos);
      if (take > 0) {
        this.payload(chunk.subarray(pos, pos + take));
        pos += take;
      }
      if (this.remaining === 0) this.endFrame();
    }
  }

  /** Consumes header bytes from `chunk` at `pos`; returns the new position. */
  private readHeader(chunk: Buffer, pos: number): number {
    // The common case (whole header inside this chunk) reads in place; only a split header copies.
    const buf =
      this.head.length === 0 ? chunk.subarray(pos) : Buffer.concat([this.head, chunk.subarray(pos)]);
    const need = headerLength(buf);
    if (need === undefined || buf.length < need) {
      this.head = Buffer.from(buf.subarray(0, Math.min(buf.length, 14)));
      return chunk.length;
    }
    const consumedFromChunk = need - this.head.length;
    this.head = Buffer.alloc(0);
    const b0 = buf[0]!;
    const b1 = buf[1]!;
    let length = b1 & 0x7f;
    let at = 2;
    if (length === 126) {
      length = buf.readUInt16BE(2);
      at = 4;
    } else if (length === 127) {
      const high = buf.readUInt32BE(2);
      if (high > MAX_SAFE_HIGH_WORD) {
        this.fail('frame length beyond 2^53');
        return chunk.length;
      }
      length = high * 0x1_0000_0000 + buf.readUInt32BE(6);
      at = 10;
    }
    const masked = (b1 & 0x80) !== 0;
    const header: FrameHeader = {
      fin: (b0 & 0x80) !== 0,
      rsv1: (b0 & 0x40) !== 0,
      opcode: b0 & 0x0f,
      mask: masked ? Buffer.from(buf.subarray(at, at + 4)) : undefined,
      length,
    };
    if (!this.startFrame(header)) return chunk.length;
    return pos + consumedFromChunk;
  }

  /** Checks a frame header against the framing rules and begins it; false when it broke them. */
  private startFrame(h: FrameHeader): boolean {
    const isControl = (h.opcode & 0x08) !== 0;
    if (isControl) {
      if (h.opcode !== OPCODE.close && h.opcode !== OPCODE.ping && h.opcode !== OPCODE.pong)
        return this.fail(`unknown control opcode ${h.opcode}`);
      if (!h.fin || h.length > MAX_CONTROL_PAYLOAD) return this.fail('fragmented or over-long control frame');
    } else if (h.opcode === OPCODE.continuation) {
      if (!this.inMessage) return this.fail('continuation frame without a message');
    } else if (h.opcode === OPCODE.text || h.opcode === OPCODE.binary) {
      if (this.inMessage) return this.fail('new data frame inside a fragmented message');
      this.inMessage = true;
      this.sink.messageStart(h.opcode, h.rsv1);
    } else return this.fail(`unknown data opcode ${h.opcode}`);
    this.frame = h;
    this.remaining = h.length;
    this.offset = 0;
    if (h.length === 0) this.endFrame();
    return true;
  }

  private payload(part: Buffer): void {
    const f = this.frame!;
    let data = part;
    if (f.mask) {
      // Unmask a copy: the chunk is the forwarded bytes' buffer and must stay as it was.
      data = Buffer.allocUnsafe(part.length);
      const m = f.mask;
      for (let i = 0; i < part.length; i++) data[i] = part[i]! ^ m[(this.offset + i) & 3]!;
    }
    this.offset += part.length;
    this.remaining -= part.length;
    if ((f.opcode & 0x08) !== 0) this.controlParts.push(f.mask ? data : Buffer.from(data));
    else this.sink.messageData(data);
  }

  private endFrame(): void {
    const f = this.frame!;
    this.frame = undefined;
    if ((f.opcode & 0x08) !== 0) {
      const payload = Buffer.concat(this.controlParts);
      this.controlParts = [];
      this.sink.control(f.opcode as ControlOpcode, payload);
    } else if (f.fin) {
      this.inMessage = false;
      this.sink.messageEnd();
    }
  }

  private fail(reason: string): false {
    this.failed = true;
    this.frame = undefined;
    this.head = Buffer.alloc(0);
    this.controlParts = [];
    this.sink.protocolError(reason);
    return false;
  }
}

/** The length of the header starting at buf[0] (2–14 bytes), or undefined if not enough is known. */
function headerLength(buf: Buffer): number | undefined {
  if (buf.length < 2) return undefined;
  const b1 = buf[1]!;
  const len7 = b1 & 0x7f;
  const ext = len7 === 126 ? 2 : len7 === 127 ? 8 : 0;
  return 2 + ext + ((b1 & 0x80) !== 0 ? 4 : 0);
}

/** A close frame's status code and reason (RFC 6455 §5.5.1); no code when the payload is empty. */
export function parseClosePayload(payload: Buffer): { code?: number; reason: string } {
  if (payload.length < 2) return { reason: '' };
  return { code: payload.readUInt16BE(0), reason: payload.subarray(2).toString('utf8') };
}
