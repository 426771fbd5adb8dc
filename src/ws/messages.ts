/**
 * WebSocket messages from one direction's byte copy: the frame parser (./frames.ts) plus
 * permessage-deflate (RFC 7692) and a cap on message size. Provider-neutral, like `src/sse/`.
 *
 * permessage-deflate: the extension the upstream accepted in its 101 `Sec-WebSocket-Extensions`
 * says whether RSV1 marks compressed messages and whether the server keeps its LZ77 window across
 * messages ("context takeover", the default) or not (`server_no_context_takeover`). A compressed
 * message is the payload of its frames + 0x00 0x00 0xff 0xff (§7.2.2), inflated raw.
 * - Context takeover: one zlib InflateRaw stream per connection, so its window carries over from
 *   message to message exactly as the server's did; each message ends with a SYNC flush. Frames
 *   stream into it as they arrive, so a large compressed message never sits in memory whole.
 * - `server_no_context_takeover`: a fresh inflater per message (the server started a fresh
 *   window; a stream it ended with a final block cannot poison the next message).
 * - `server_max_window_bits` sizes the inflater's window (zlib's inflater accepts any stream made
 *   with a window up to its own; 8 is raised to 9, which zlib's raw deflate uses for 8).
 * Every compressed message is inflated, even one over the cap (its output is dropped, not kept):
 * skipping it would lose the window the next message refers to. An inflate error breaks the
 * context for good; later compressed messages are not read and `problem` says so.
 *
 * Messages are delivered in the order they were sent, whole, after inflation; `end(done)` calls
 * back once every message that was complete has been delivered.
 */
import zlib from 'node:zlib';
import {
  OPCODE,
  parseClosePayload,
  WsFrameParser,
  type ControlOpcode,
  type DataOpcode,
  type WsFrameSink,
} from './frames.js';

export interface DeflateParams {
  serverNoContextTakeover: boolean;
  /** The window the server compresses with (8–15); 15 unless negotiated lower. */
  serverMaxWindowBits: number;
}

/**
 * The permessage-deflate parameters from a 101's `Sec-WebSocket-Extensions`, undefined when the
 * server accepted no compression. `unsupported` when it accepted an extension we cannot read
 * (RSV1 could then mean something else).
 */
export function parseDeflateExtension(
  header: string | string[] | undefined,
): DeflateParams | 'unsupported' | undefined {
  const value = Array.isArray(header) ? header.join(',') : (header ?? '');
  let found: DeflateParams | undefined;
  for (const ext of value.split(',')) {
    const [name, ...params] = ext.split(';').map((s) => s.trim());
    if (!name) continue;
    if (name.toLowerCase() !== 'permessage-deflate') return 'unsupported';
    const p: DeflateParams = { serverNoContextTakeover: false, serverMaxWindowBits: 15 };
    for (const param of params) {
      const [k, v] = param.split('=').map((s) => s.trim().replace(/^"|"$/g, ''));
      if (k?.toLowerCase() === 'server_no_context_takeover') p.serverNoContextTakeover = true;
      else if (k?.toLowerCase() === 'server_max_window_bits') {
        const bits = Number(v);
        if (!Number.isInteger(bits) || bits < 8 || bits > 15) return 'unsupported';
        p.serverMaxWindowBits = bits;
      }
    }
    found = p;
  }
  return found;
}

export interface WsMessageReaderOptions {
  /** Negotiated permessage-deflate, if any. */
  deflate?: DeflateParams;
  /** Largest message kept (after inflation); a larger one is skipped and `onOversize` called. */
  maxMessageBytes: number;
  onMessage(opcode: DataOpcode, data: Buffer): void;
  onClose?(code: number | undefined, reason: string): void;
  onOversize?(): void;
  /** Something could not be read (protocol error, inflate failure); a short machine-readable note. */
  onProblem(note: string): void;
}

/** RFC 7692 §7.2.2: the tail the sender removed from each compressed message. */
const DEFLATE_TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);

interface Pending {
  opcode: DataOpcode;
  compressed: boolean;
  parts: Buffer[];
  bytes: number;
  over: boolean;
  /** Inflation done (or not needed): may be delivered once every earlier message was. */
  ready: boolean;
  /** Nothing to deliver (skipped, cut, unreadable). */
  dropped: boolean;
}

export class WsMessageReader implements WsFrameSink {
  private readonly parser = new WsFrameParser(this);
  /** Messages in send order, waiting for their own inflation or an earlier message's. */
  private readonly queue: Pending[] = [];
  private current: Pending | undefined;
  /** The inflater of the current compressed message: the shared one, or its own. */
  private inflater: zlib.InflateRaw | undefined;
  private shared: zlib.InflateRaw | undefined;
  /** Compressed messages whose output the shared inflater is still producing, oldest first. */
  private readonly inflating: Pending[] = [];
  private inflateBroken = false;
  private ended = false;
  private onDrained: (() => void) | undefined;

  constructor(private readonly opts: WsMessageReaderOptions) {}

  write(chunk: Buffer): void {
    if (!this.ended) this.parser.feed(chunk);
  }

  /** Calls back once every complete message was delivered; a message cut mid-way is dropped. */
  end(done: () => void): void {
    if (this.ended) return done();
    this.ended = true;
    if (this.current) {
      if (this.current.compressed && this.inflater !== this.shared) this.inflater?.destroy();
      this.drop(this.current);
    }
    this.current = undefined;
    this.onDrained = () => {
      this.shared?.destroy();
      done();
    };
    this.deliver();
  }

  messageStart(opcode: DataOpcode, compressed: boolean): void {
    const m: Pending = { opcode, compressed, parts: [], bytes: 0, over: false, ready: false, dropped: false };
    this.current = m;
    this.queue.push(m);
    if (!compressed) return;
    if (!this.opts.deflate) {
      this.opts.onProblem('ws_compressed_without_extension');
      m.dropped = true;
    } else if (this.inflateBroken) m.dropped = true;
    else if (this.opts.deflate.serverNoContextTakeover) this.inflater = this.newInflater(m);
    else {
      this.shared ??= this.newInflater(undefined);
      this.inflater = this.shared;
      this.inflating.push(m);
    }
  }

  messageData(chunk: Buffer): void {
    const m = this.current;
    if (!m || m.dropped) return;
    if (m.compressed) this.inflater!.write(Buffer.from(chunk));
    else this.keep(m, chunk);
  }

  messageEnd(): void {
    const m = this.current;
    this.current = undefined;
    if (!m) return;
    if (!m.compressed || m.dropped) {
      m.ready = true;
      this.deliver();
      return;
    }
    const inflater = this.inflater!;
    inflater.write(DEFLATE_TAIL);
    // A SYNC flush, never end(): the message's deflate data has no final block, and Z_FINISH
    // on it would report "unexpected end of file".
    inflater.flush(zlib.constants.Z_SYNC_FLUSH, () => {
      if (this.inflating[0] === m) this.inflating.shift();
      if (inflater !== this.shared) inflater.close();
      m.ready = true;
      this.deliver();
    });
  }

  control(opcode: ControlOpcode, payload: Buffer): void {
    if (opcode !== OPCODE.close) return;
    const { code, reason } = parseClosePayload(payload);
    this.opts.onClose?.(code, reason);
  }

  protocolError(reason: string): void {
    this.opts.onProblem(`ws_protocol_error: ${reason}`);
    if (this.current) this.drop(this.current);
    this.current = undefined;
    this.deliver();
  }

  /** `owner`: the one message a per-message inflater serves; undefined for the shared one. */
  private newInflater(owner: Pending | undefined): zlib.InflateRaw {
    const inflater = zlib.createInflateRaw({
      windowBits: Math.max(9, this.opts.deflate!.serverMaxWindowBits),
    });
    inflater.on('data', (out: Buffer) => {
      const m = owner ?? this.inflating[0];
      if (m && !m.dropped) this.keep(m, out);
    });
    inflater.on('error', (err: Error) => this.inflateFailed(err, inflater));
    return inflater;
  }

  private inflateFailed(err: Error, inflater: zlib.InflateRaw): void {
    this.opts.onProblem(`ws_inflate_failed: ${err.message}`);
    inflater.destroy();
    // The window is lost: no later compressed message can be read. With per-message inflaters only
    // this message is, but a server whose data does not inflate is not trusted for the rest either.
    this.inflateBroken = true;
    this.inflating.length = 0;
    for (const m of this.queue) if (m.compressed && !m.ready) this.drop(m);
    this.deliver();
  }

  private drop(m: Pending): void {
    m.dropped = true;
    m.ready = true;
    m.parts = [];
  }

  private keep(m: Pending, data: Buffer): void {
    if (m.over) return;
    if (m.bytes + data.length > this.opts.maxMessageBytes) {
      m.over = true;
      m.parts = [];
      this.opts.onOversize?.();
      return;
    }
    m.parts.push(Buffer.from(data));
    m.bytes += data.length;
  }

  private deliver(): void {
    while (this.queue.length > 0 && this.queue[0]!.ready) {
      const m = this.queue.shift()!;
      if (m.dropped || m.over) continue;
      this.opts.onMessage(m.opcode, m.parts.length === 1 ? m.parts[0]! : Buffer.concat(m.parts));
    }
    if (this.onDrained && this.queue.every((m) => m.ready)) {
      const done = this.onDrained;
      this.onDrained = undefined;
      this.queue.length = 0;
      done();
    }
  }
}
