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
import { SseParser } from '../sse/parser.js';
import type { SseLineKind } from '../sse/types.js';

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

/**
 * How many bytes of one event the stripper may hold while it can still be a usage-only chunk.
 * That chunk is tiny (OpenAI's is ~0.3 KiB: id, object, created, model, system_fingerprint,
 * `choices: []`, usage with its details; gateways add a few fields), so 64 KiB leaves a 100×
 * margin while bounding what one stream can hold (plus the parser's line buffer, capped alike).
 * An event past it is not what include_usage adds: it is released and passes through.
 */
export const USAGE_CHUNK_HOLD_CAP = 64 * 1024;

/** Usage-only chunk: `{"choices": [], "usage": {...}}`, the chunk include_usage adds. */
function isUsageOnlyData(data: string): boolean {
  // Cheap pre-check: almost every event is a content delta without a usage object.
  if (!data.includes('"usage"')) return false;
  let json: unknown;
  try {
    json = JSON.parse(data);
  } catch {
    return false;
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return false;
  const o = json as { choices?: unknown; usage?: unknown };
  return (
    Array.isArray(o.choices) &&
    o.choices.length === 0 &&
    typeof o.usage === 'object' &&
    o.usage !== null &&
    !Array.isArray(o.usage)
  );
}

/** Whether one complete SSE event (its raw bytes) is a usage-only chunk; framed by the shared parser. */
export function isUsageOnlyEvent(event: Buffer): boolean {
  let found = 0;
  let usageOnly = false;
  const parser = new SseParser({
    onEvent: (e) => {
      found++;
      usageOnly = isUsageOnlyData(e.data);
    },
  });
  parser.feed(event);
  parser.end();
  return found === 1 && usageOnly;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/**
 * After a top-level key, what must come next for the chunk to stay usage-only: `[` after
 * "choices":, then `]` right after it (choices is empty); `{` after "usage":.
 */
type Expect = 'nothing' | 'choices-array' | 'choices-end' | 'usage-object';

/**
 * Answers, as an event's data bytes arrive, one question: can this still be a usage-only chunk?
 * It only says "no" on positive evidence (the data does not start a JSON object; the top-level
 * object closed and more follows; a top-level `choices` that is not `[]`; a `usage` that is not an
 * object; the object closed without both). A held event's final verdict is JSON.parse on the whole
 * event. Byte-level on UTF-8 is safe: every structural JSON byte is ASCII, and a multi-byte
 * sequence never contains one. Known limit: with duplicate keys (JSON.parse keeps the last) an
 * early "no" may pass a chunk a full parse would call usage-only; no upstream sends those.
 */
class UsageOnlyShape {
  private started = false;
  private closed = false;
  private depth = 0;
  private inString = false;
  private escaped = false;
  /** At depth 1, the next string is a key. */
  private keyNext = false;
  private inKey = false;
  /** Where the key being read starts in the line buffer (a key never spans lines: see feedLine). */
  private keyStart = 0;
  /** The key had an escape: it may spell choices/usage, so no conclusion is drawn from it. */
  private keyUnknown = false;
  private lastKey: 'choices' | 'usage' | 'other' | 'unknown' = 'other';
  private expect: Expect = 'nothing';
  private emptyChoices = false;
  private usageObject = false;
  private unknownKeys = false;
  private dataLines = 0;

  reset(): void {
    this.started = false;
    this.closed = false;
    this.depth = 0;
    this.inString = false;
    this.escaped = false;
    this.keyNext = false;
    this.inKey = false;
    this.keyStart = 0;
    this.keyUnknown = false;
    this.lastKey = 'other';
    this.expect = 'nothing';
    this.emptyChoices = false;
    this.usageObject = false;
    this.unknownKeys = false;
    this.dataLines = 0;
  }

  /** One `data:` line's value; lines are joined with LF, as the client's parser joins them. */
  feedLine(buf: Buffer, start: number, end: number): boolean {
    // The LF joining two data lines: whitespace between tokens, invalid inside a string.
    if (this.dataLines++ > 0 && this.inString) return false;
    for (let i = start; i < end; i++) {
      if (!this.byte(buf, i)) return false;
    }
    return true;
  }

  private byte(buf: Buffer, i: number): boolean {
    const b = buf[i]!;
    if (this.inString) return this.stringByte(buf, i, b);
    if (b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09) return true; // JSON whitespace
    if (!this.started) {
      if (b !== 0x7b) return false; // not `{`
      this.started = true;
      this.depth = 1;
      this.keyNext = true;
      return true;
    }
    if (this.closed) return false; // something after the top-level object
    if (this.expect !== 'nothing') {
      const expected = this.expect;
      this.expect = 'nothing';
      if (expected === 'choices-array') {
        if (b !== 0x5b) return false; // choices is not an array
        this.expect = 'choices-end';
        this.depth++;
        return true;
      }
      if (expected === 'choices-end') {
        if (b !== 0x5d) return false; // choices has an element
        this.emptyChoices = true;
        this.depth--;
        return true;
      }
      if (b !== 0x7b) return false; // usage is not an object (e.g. `"usage": null` on content chunks)
      this.usageObject = true;
    }
    switch (b) {
      case QUOTE:
        this.inString = true;
        if (this.depth === 1 && this.keyNext) {
          this.keyNext = false;
          this.inKey = true;
          this.keyStart = i + 1;
          this.keyUnknown = false;
        }
        return true;
      case 0x7b: // {
      case 0x5b: // [
        this.depth++;
        return true;
      case 0x7d: // }
      case 0x5d: // ]
        this.depth--;
        if (this.depth === 0) {
          this.closed = true;
          // Closed without an empty choices and a usage object, and no key could have hidden one.
          if (!this.unknownKeys && !(this.emptyChoices && this.usageObject)) return false;
        }
        return true;
      case 0x3a: // :
        if (this.depth === 1) {
          if (this.lastKey === 'choices') this.expect = 'choices-array';
          else if (this.lastKey === 'usage') this.expect = 'usage-object';
          this.lastKey = 'other';
        }
        return true;
      case 0x2c: // ,
        if (this.depth === 1) this.keyNext = true;
        return true;
      default:
        return true; // numbers, literals: only JSON.parse judges them
    }
  }

  private stringByte(buf: Buffer, i: number, b: number): boolean {
    if (this.escaped) {
      this.escaped = false;
      return true;
    }
    if (b === BACKSLASH) {
      this.escaped = true;
      if (this.inKey) this.keyUnknown = true;
      return true;
    }
    if (b === QUOTE) {
      this.inString = false;
      if (this.inKey) {
        this.inKey = false;
        if (this.keyUnknown) {
          this.lastKey = 'unknown';
          this.unknownKeys = true;
        } else if (isAscii(buf, this.keyStart, i, 'choices')) this.lastKey = 'choices';
        else if (isAscii(buf, this.keyStart, i, 'usage')) this.lastKey = 'usage';
        else this.lastKey = 'other';
      }
      return true;
    }
    return b >= 0x20; // a raw control character never parses inside a JSON string
  }
}

/** buf[start, end) spells `word` (ASCII), compared without allocating a string. */
function isAscii(buf: Buffer, start: number, end: number, word: string): boolean {
  if (end - start !== word.length) return false;
  for (let k = 0; k < word.length; k++) if (buf[start + k] !== word.charCodeAt(k)) return false;
  return true;
}

/**
 * What happened to the bytes up to the last boundary the parser reported: sent, dropped, or
 * `open` (still part of the current region: held, or passing and sent with what follows).
 */
type Fate = 'sent' | 'dropped' | 'open';

const EMPTY = Buffer.alloc(0);

/** Joins slices into one buffer; slices that are contiguous in one ArrayBuffer are joined as a view. */
function coalesce(parts: Buffer[]): Buffer {
  const first = parts[0]!;
  let end = first.byteOffset + first.length;
  let contiguous = true;
  for (let i = 1; i < parts.length && contiguous; i++) {
    const p = parts[i]!;
    contiguous = p.buffer === first.buffer && p.byteOffset === end;
    end = p.byteOffset + p.length;
  }
  if (contiguous) return Buffer.from(first.buffer, first.byteOffset, end - first.byteOffset);
  return Buffer.concat(parts);
}

/**
 * Removes usage-only events from an SSE byte stream and forwards every other byte unchanged, in
 * order, as it arrives. Framing is the shared, capped SSE parser's (src/sse/parser.ts), which
 * reports where each line and event ends in the raw bytes; this class only decides, per event:
 * - judging: the event may still be a usage-only chunk; its bytes are held (up to the cap);
 * - passing: it cannot be one (its data ruled it out, or it went over the cap); what was held is
 *   sent and the rest of the event flows through as it arrives.
 * Comment lines before an event's first field are sent at once: they are inert for every SSE
 * client and are what keep-alives are made of, which must not be held. A held event is removed
 * when the parser, at its blank line (or the end of the stream), dispatches it and it is
 * usage-only. Memory per stream: held bytes ≤ cap, plus the parser's line buffer ≤ cap.
 */
export class UsageChunkStripper {
  /** Usage-only events removed so far. */
  removed = 0;

  private readonly parser: SseParser;
  private readonly cap: number;
  private readonly shape = new UsageOnlyShape();
  private held: Buffer[] = [];
  private heldLength = 0;
  private passing = false;
  private ended = false;
  /** No line but comments in the current event yet: everything held so far is inert. */
  private onlyComments = true;
  /** The event the parser just dispatched is usage-only (set in onEvent, read at its span end). */
  private usageOnly = false;
  private lastFate: Fate = 'open';
  /** The chunk being pushed, where its unsent/unheld bytes start, and what to send now. */
  private chunk: Buffer = EMPTY;
  private pos = 0;
  private out: Buffer[] = [];

  constructor(cap: number = USAGE_CHUNK_HOLD_CAP) {
    this.cap = cap;
    this.parser = new SseParser({
      // The same cap: an event over it cannot be removed, so the parser need not buffer it either.
      maxEventBytes: cap,
      onEvent: (e) => {
        if (!this.passing) this.usageOnly = isUsageOnlyData(e.data);
      },
      byteObserver: {
        onLine: (kind, end, value, valueStart, valueEnd) =>
          this.onLine(kind, end, value, valueStart, valueEnd),
        onEventEnd: (end) => this.onEventEnd(end),
        onLineEndContinued: () => this.onLineEndContinued(),
      },
    });
  }

  /** Bytes held back right now (at most the cap). */
  get heldBytes(): number {
    return this.heldLength;
  }

  /** Returns the bytes to send to the client now (possibly empty). */
  push(chunk: Buffer): Buffer[] {
    if (this.ended) return [chunk]; // nothing is judged after flush(); never hold bytes nobody flushes
    this.chunk = chunk;
    this.pos = 0;
    this.parser.feed(chunk);
    if (this.pos < chunk.length) {
      const rest = chunk.subarray(this.pos);
      if (this.passing) this.out.push(rest);
      else if (this.heldLength + rest.length > this.cap) {
        // Over the cap: not a usage-only chunk, whatever else it is; the rest passes through.
        this.release(rest);
        this.passing = true;
      } else {
        // Copy: a subarray would keep the upstream's whole (larger) chunk alive while held.
        this.held.push(Buffer.from(rest));
        this.heldLength += rest.length;
      }
    }
    return this.take();
  }

  /** End of stream: an unterminated last event (no final blank line) is still judged whole. */
  flush(): Buffer[] {
    if (this.ended) return [];
    this.ended = true;
    this.chunk = EMPTY;
    this.pos = 0;
    this.parser.end();
    // The parser reported the last span's end; anything still held would be a bug, so never lose it.
    if (this.heldLength > 0) this.release(EMPTY);
    return this.take();
  }

  /**
   * What to send now, as one buffer: every piece of one upstream chunk leaves in one write, so an
   * event and its terminating blank line never reach the client as two packets (a client cannot
   * act on an event before its blank line). Pieces that are adjacent slices of the same chunk are
   * joined without a copy.
   */
  private take(): Buffer[] {
    const out = this.out;
    this.out = [];
    this.chunk = EMPTY;
    return out.length <= 1 ? out : [coalesce(out)];
  }

  private onLine(kind: SseLineKind, end: number, value: Buffer, valueStart: number, valueEnd: number): void {
    this.lastFate = 'open';
    if (this.passing) return;
    if (kind === 'comment') {
      if (this.onlyComments) this.sendUpTo(end);
      return;
    }
    this.onlyComments = false;
    if (kind === 'oversize' || (kind === 'data' && !this.shape.feedLine(value, valueStart, valueEnd))) {
      this.sendUpTo(end);
      this.passing = true;
    }
  }

  private onEventEnd(end: number): void {
    if (!this.passing && this.usageOnly) {
      this.held = [];
      this.heldLength = 0;
      this.pos = end;
      this.lastFate = 'dropped';
      this.removed++;
    } else this.sendUpTo(end);
    this.passing = false;
    this.onlyComments = true;
    this.usageOnly = false;
    this.shape.reset();
  }

  /** Byte 0 of this chunk ends the line/event reported last: it goes where that one went. */
  private onLineEndContinued(): void {
    if (this.lastFate === 'sent') this.out.push(this.chunk.subarray(0, 1));
    if (this.lastFate !== 'open') this.pos = 1;
  }

  /** Sends what is held and the current chunk's bytes up to `end`. */
  private sendUpTo(end: number): void {
    this.release(this.chunk.subarray(this.pos, end));
    this.pos = end;
    this.lastFate = 'sent';
  }

  private release(more: Buffer): void {
    if (this.heldLength > 0) {
      for (const b of this.held) this.out.push(b);
      this.held = [];
      this.heldLength = 0;
    }
    if (more.length > 0) this.out.push(more);
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
