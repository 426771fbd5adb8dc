/**
 * §3.3, the only change tokenmeter ever makes to traffic. Streamed OpenAI chat/completions requests
 * that do not ask for usage get `stream_options.include_usage: true`, so the upstream reports usage;
 * the extra usage-only chunk (`choices: []` + `usage`) is then removed from what the client receives,
 * because clients written as `chunk.choices[0].delta.content` crash on it (seeds/000_*, the OpenAI
 * streaming docs: "an additional chunk ... choices field will always be an empty array").
 */
import zlib from 'node:zlib';
import type { UpstreamSettings } from '../config/types.js';
import type { RequestInfo } from '../meter/types.js';

const INJECTED_FIELD = '"stream_options":{"include_usage":true}';

export function shouldInjectUsage(info: RequestInfo, upstream: UpstreamSettings): boolean {
  return (
    upstream.injectUsage &&
    info.stream &&
    !info.asksForUsage &&
    !info.tooLargeToMeter &&
    (info.operation === 'chat' || info.operation === 'text_completion') &&
    typeof info.body === 'object' &&
    info.body !== null
  );
}

/**
 * Returns the request body with include_usage set. When the body has no `stream_options` the field
 * is inserted textually right after the opening brace, so every other byte (key order, spacing,
 * number formatting) stays as the app wrote it; otherwise the parsed body is re-serialized with
 * `stream_options.include_usage` set (the only way to change a nested field without a JSON editor).
 */
export function injectUsageOption(raw: Buffer, parsed: Record<string, unknown>): Buffer {
  if (!Object.prototype.hasOwnProperty.call(parsed, 'stream_options')) {
    const text = raw.toString('utf8');
    const open = text.indexOf('{');
    if (open !== -1) {
      const rest = text.slice(open + 1);
      const emptyObject = /^\s*\}/.test(rest);
      return Buffer.from(text.slice(0, open + 1) + INJECTED_FIELD + (emptyObject ? '' : ',') + rest, 'utf8');
    }
  }
  const so = parsed.stream_options;
  const streamOptions = typeof so === 'object' && so !== null && !Array.isArray(so) ? so : {};
  return Buffer.from(
    JSON.stringify({ ...parsed, stream_options: { ...streamOptions, include_usage: true } }),
    'utf8',
  );
}

const LF = 0x0a;
const CR = 0x0d;

/** Usage-only chunk: `data: {"choices": [], "usage": {...}}` — the chunk include_usage adds. */
export function isUsageOnlyEvent(event: Buffer): boolean {
  // Cheap pre-check: almost every event is a content delta without "usage".
  if (event.indexOf('"usage"') === -1) return false;
  const lines = event.toString('utf8').split(/\r\n|\r|\n/);
  const data: string[] = [];
  for (const line of lines) {
    if (line.startsWith('data:')) data.push(line.slice(line[5] === ' ' ? 6 : 5));
  }
  if (data.length === 0) return false;
  try {
    const json: unknown = JSON.parse(data.join('\n'));
    if (typeof json !== 'object' || json === null) return false;
    const o = json as { choices?: unknown; usage?: unknown };
    return (
      Array.isArray(o.choices) && o.choices.length === 0 && typeof o.usage === 'object' && o.usage !== null
    );
  } catch {
    return false;
  }
}

/**
 * Byte-level SSE event splitter that forwards every event's original bytes as soon as the event is
 * complete (its terminating blank line seen), except usage-only events. Line ends may be `\n`,
 * `\r\n` or `\r` (SSE spec), split across chunks at any byte. Nothing is re-encoded.
 */
export class UsageChunkStripper {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Bytes in the current line so far (0 = at the start of a line). */
  private lineLen = 0;
  /** The previous byte was a CR, so a following LF belongs to the same line end. */
  private afterCR = false;
  /** The last event ended on a CR at a chunk boundary; its LF (if any) arrives first in the next chunk. */
  private lfBelongsToDropped: boolean | undefined;
  /** Usage-only events removed so far. */
  removed = 0;

  /** Returns the bytes to send to the client now (possibly empty). */
  push(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let start = 0;
    let i = 0;
    if (this.lfBelongsToDropped !== undefined) {
      const dropped = this.lfBelongsToDropped;
      this.lfBelongsToDropped = undefined;
      if (chunk.length > 0 && chunk[0] === LF) {
        // The LF completing the previous event's CRLF goes where that event went.
        if (!dropped) out.push(chunk.subarray(0, 1));
        i = 1;
        start = 1;
      }
    }
    for (; i < chunk.length; i++) {
      const b = chunk[i];
      if (b === LF && this.afterCR) {
        this.afterCR = false;
        continue;
      }
      this.afterCR = false;
      if (b !== LF && b !== CR) {
        this.lineLen++;
        continue;
      }
      if (b === CR) this.afterCR = true;
      if (this.lineLen > 0) {
        this.lineLen = 0;
        continue;
      }
      // An empty line: the event ends here (include the LF of a CRLF pair when it is in this chunk).
      let end = i + 1;
      let crAtEdge = false;
      if (b === CR) {
        if (end < chunk.length && chunk[end] === LF) {
          end++;
          i++;
          this.afterCR = false;
        } else if (end === chunk.length) crAtEdge = true;
      }
      const piece = chunk.subarray(start, end);
      const event = this.pendingBytes > 0 ? Buffer.concat([...this.pending, piece]) : piece;
      this.pending = [];
      this.pendingBytes = 0;
      const drop = isUsageOnlyEvent(event);
      if (drop) this.removed++;
      else out.push(event);
      if (crAtEdge) this.lfBelongsToDropped = drop;
      start = end;
    }
    if (start < chunk.length) {
      const tail = chunk.subarray(start);
      this.pending.push(tail);
      this.pendingBytes += tail.length;
    }
    return out;
  }

  /** End of stream: an unterminated last event (no final blank line) is still judged whole. */
  flush(): Buffer[] {
    if (this.pendingBytes === 0) return [];
    const rest = Buffer.concat(this.pending);
    this.pending = [];
    this.pendingBytes = 0;
    if (isUsageOnlyEvent(rest)) {
      this.removed++;
      return [];
    }
    return [rest];
  }
}

/** Decoder/encoder pairs for the Content-Encodings an upstream may apply despite `identity`. */
const RECODERS: Record<
  string,
  () => {
    decoder: zlib.Gunzip | zlib.Inflate | zlib.BrotliDecompress;
    encoder: zlib.Gzip | zlib.Deflate | zlib.BrotliCompress;
  }
> = {
  gzip: () => ({ decoder: zlib.createGunzip(), encoder: zlib.createGzip() }),
  'x-gzip': () => ({ decoder: zlib.createGunzip(), encoder: zlib.createGzip() }),
  deflate: () => ({ decoder: zlib.createInflate(), encoder: zlib.createDeflate() }),
  br: () => ({ decoder: zlib.createBrotliDecompress(), encoder: zlib.createBrotliCompress() }),
};

export function canRecode(contentEncoding: string): boolean {
  return Object.prototype.hasOwnProperty.call(RECODERS, contentEncoding);
}

/**
 * For an upstream that compresses the stream although the injected request asked for `identity`:
 * decode, strip the usage-only event, re-encode with the same encoding, flushing after every
 * decoded batch so events still reach the client one by one. The only path where tokenmeter
 * re-encodes bytes; without it a client that did not ask for usage would get the extra chunk.
 */
export class EncodedUsageChunkStripper {
  private readonly stripper = new UsageChunkStripper();
  private readonly decoder;
  private readonly encoder;
  private failed = false;

  constructor(
    contentEncoding: string,
    onOutput: (bytes: Buffer) => void,
    private readonly onError: (err: Error) => void,
  ) {
    const pair = RECODERS[contentEncoding]!();
    this.decoder = pair.decoder;
    this.encoder = pair.encoder;
    this.decoder.on('data', (d: Buffer) => {
      for (const part of this.stripper.push(d)) this.encoder.write(part);
      this.encoder.flush();
    });
    this.decoder.on('end', () => {
      for (const part of this.stripper.flush()) this.encoder.write(part);
      this.encoder.end();
    });
    this.encoder.on('data', onOutput);
    const fail = (err: Error) => {
      if (this.failed) return;
      this.failed = true;
      this.onError(err);
    };
    this.decoder.on('error', fail);
    this.encoder.on('error', fail);
  }

  get removed(): number {
    return this.stripper.removed;
  }

  push(chunk: Buffer): void {
    if (!this.failed) this.decoder.write(chunk);
  }

  /** Upstream ended: `done` runs once the last re-encoded byte was handed to onOutput. */
  end(done: () => void): void {
    if (this.failed) return;
    this.encoder.once('end', done);
    this.decoder.end();
  }

  destroy(): void {
    this.decoder.destroy();
    this.encoder.destroy();
  }
}
