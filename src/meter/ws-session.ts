/**
 * The metering copy of a WebSocket session (after a `101`): the server→client bytes read as
 * messages (src/ws/, permessage-deflate as negotiated in the 101's `Sec-WebSocket-Extensions`),
 * each text message handed to the session's decoder as one event. The client always gets the
 * original bytes; nothing here is on their path.
 *
 * It also says how the session ended as seen on the wire: the proxy only knows which socket
 * closed first, the server's close frame says whether that was a clean end (docs/proxy.md,
 * "WebSocket (Realtime)").
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { UsageDecoder } from '../decoders/types.js';
import type { ErrorType } from '../record.js';
import { OPCODE } from '../ws/frames.js';
import { parseDeflateExtension, WsMessageReader } from '../ws/messages.js';
import type { MeterOutcome } from './types.js';

/** Close codes that end a session normally (RFC 6455 §7.4.1): 1000 normal, 1001 going away, 1005 no code given. */
const CLEAN_CLOSE_CODES: ReadonlySet<number> = new Set([1000, 1001, 1005]);
const REASON_CAP = 200;

export interface SessionCopyOptions {
  headers: IncomingHttpHeaders;
  decoder: UsageDecoder;
  maxMessageBytes: number;
  /** Runs a decoder step so that a throw is counted, never thrown (the meter's guard). */
  guard: (fn: () => void) => void;
  onOversize: () => void;
}

export class SessionCopy {
  /** Machine-readable notes for the record. */
  readonly notes: string[] = [];
  /** Some message could not be read (inflate failure, protocol error): the usage sum is unknowable. */
  unreadable = false;
  private close: { code: number | undefined; reason: string } | undefined;
  private readonly reader: WsMessageReader | undefined;

  constructor(opts: SessionCopyOptions) {
    const deflate = parseDeflateExtension(opts.headers['sec-websocket-extensions']);
    if (deflate === 'unsupported') {
      this.notes.push('ws_extension_unsupported');
      this.unreadable = true;
      return;
    }
    const { decoder, guard } = opts;
    this.reader = new WsMessageReader({
      deflate,
      maxMessageBytes: opts.maxMessageBytes,
      onMessage: (opcode, data) => {
        if (opcode === OPCODE.text) guard(() => decoder.onEvent({ data: data.toString('utf8') }));
      },
      onClose: (code, reason) => {
        this.close ??= { code, reason };
      },
      onOversize: () => {
        opts.onOversize();
        if (!this.notes.includes('ws_message_over_cap')) this.notes.push('ws_message_over_cap');
      },
      onProblem: (note) => {
        this.unreadable = true;
        if (this.notes.length < 8) this.notes.push(note.slice(0, REASON_CAP));
      },
    });
  }

  write(chunk: Buffer): void {
    this.reader?.write(chunk);
  }

  /** Calls back once every complete message has reached the decoder (inflation is asynchronous). */
  end(done: () => void): void {
    if (this.reader) this.reader.end(done);
    else done();
  }

  /**
   * The outcome as the wire tells it, and the session's error if the server ended it with one.
   * - The client leaving after the server's close frame is the end of the closing handshake, not
   *   an abort.
   * - The upstream ending the connection: clean with a close frame of code 1000/1001/1005 (or
   *   none); any other code is `upstream_error` naming it; no close frame at all is a reset.
   */
  refine(outcome: MeterOutcome): { outcome: MeterOutcome; error?: { type: ErrorType; message: string } } {
    if (outcome.kind === 'client_abort' && this.close) outcome = { kind: 'complete' };
    if (outcome.kind !== 'complete') return { outcome };
    if (!this.close) {
      return {
        outcome: { kind: 'upstream_reset', message: 'upstream closed the WebSocket without a close frame' },
      };
    }
    const { code, reason } = this.close;
    if (code === undefined || CLEAN_CLOSE_CODES.has(code)) return { outcome };
    const message = `WebSocket closed by upstream with code ${code}${reason ? `: ${reason}` : ''}`;
    return { outcome, error: { type: 'upstream_error', message: message.slice(0, REASON_CAP) } };
  }
}
