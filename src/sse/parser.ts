/**
 * The one SSE parser (DESIGN.md §3.2), framing only: it knows no provider.
 *
 * Why our own and not `eventsource-parser` (v3.1, installed): that library meets most framing
 * rules, but not two we need —
 * - its `maxBufferSize` *terminates* the parser on an oversize line/event and needs `reset()`,
 *   which forgets where the next event starts; §3.2 wants the oversize event skipped, counted,
 *   and parsing to resume at the next event, without holding the oversize bytes in memory;
 * - at end of stream `reset({consume: true})` parses the pending line but never dispatches the
 *   pending event, while we must flush an event whose final blank line is missing (streams cut
 *   by gateways routinely end that way and the last event often carries the usage).
 * It also takes strings, so every TCP chunk would first go through a streaming TextDecoder; we
 * work on bytes and decode one complete line at a time, which makes a UTF-8 sequence split
 * across chunks a non-issue and lets skipped events never be decoded at all.
 *
 * Framing follows https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
 * (line ends CRLF, LF or CR; leading BOM dropped; `:` comments; field without colon; one leading
 * space stripped from values; an event with no `data:` line is not dispatched). Deviation: `id`
 * is per event (not a sticky "last event id"), which is what metering needs.
 */
import type { SseByteObserver, SseEvent } from './types.js';

export interface SseParserOptions {
  onEvent: (event: SseEvent) => void;
  /** Called once per skipped oversize event with the bytes that event occupied. */
  onOversize?: (bytes: number) => void;
  /** Cap on one event's size in bytes (its lines and line ends). Default 8 MiB (§3.2). */
  maxEventBytes?: number;
  /**
   * Where each line and event ends in the raw bytes (see SseByteObserver), for the usage-chunk
   * stripper. Left unset on the metering path, which then pays one `undefined` check per line.
   */
  byteObserver?: SseByteObserver;
}

const LF = 0x0a;
const CR = 0x0d;
const COLON = 0x3a;
const SPACE = 0x20;
const DEFAULT_MAX_EVENT_BYTES = 8 * 1024 * 1024;
const INITIAL_LINE_BUFFER = 4096;
const EMPTY_LINE_BUFFER = Buffer.alloc(0);
/** A line buffer grown past this for one huge line is released once that line is done. */
const KEEP_LINE_BUFFER = 64 * 1024;
const EMPTY = Buffer.alloc(0);

export class SseParser {
  private readonly onEvent: (event: SseEvent) => void;
  private readonly onOversize: ((bytes: number) => void) | undefined;
  private readonly maxEventBytes: number;
  private readonly observer: SseByteObserver | undefined;

  /**
   * Bytes of the current, not yet terminated line carried over from earlier chunks, in one
   * growable buffer (tiny chunks would otherwise mean one allocation per byte).
   */
  // Allocated on the first line that crosses a chunk boundary: most events arrive whole, and a
  // parser per stream should not cost 4 KiB up front.
  private lineBuf: Buffer = EMPTY_LINE_BUFFER;
  private pendingLength = 0;
  /** The previous chunk ended with CR: a LF starting the next chunk belongs to that line end. */
  private lastWasCR = false;
  /** Nothing decoded yet: the first line may start with a UTF-8 BOM. */
  private atStreamStart = true;

  private data: string | undefined;
  private eventType: string | undefined;
  private eventId: string | undefined;
  /** Bytes the current event has used so far (complete lines plus their line ends). */
  private eventBytes = 0;
  /** The current event went over the cap: ignore lines until the blank line that ends it. */
  private skipping = false;
  private ended = false;
  /** Offset in the current chunk just past the line end of the line being completed (for the observer). */
  private lineNext = 0;

  constructor(opts: SseParserOptions) {
    this.onEvent = opts.onEvent;
    this.onOversize = opts.onOversize;
    this.maxEventBytes = opts.maxEventBytes ?? DEFAULT_MAX_EVENT_BYTES;
    this.observer = opts.byteObserver;
  }

  feed(chunk: Uint8Array): void {
    if (this.ended || chunk.length === 0) return;
    const buf = Buffer.isBuffer(chunk)
      ? chunk
      : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    let pos = 0;
    if (this.lastWasCR) {
      this.lastWasCR = false;
      if (buf[0] === LF) {
        pos = 1;
        if (this.observer !== undefined) this.observer.onLineEndContinued();
      }
    }
    // indexOf(CR) is cached: most streams have no CR at all, and rescanning per line would be quadratic.
    let nextCR = buf.indexOf(CR, pos);
    let nextLF = buf.indexOf(LF, pos);
    while (pos < buf.length) {
      if (nextCR !== -1 && nextCR < pos) nextCR = buf.indexOf(CR, pos);
      if (nextLF !== -1 && nextLF < pos) nextLF = buf.indexOf(LF, pos);
      let lineEnd: number;
      if (nextCR === -1) lineEnd = nextLF;
      else if (nextLF === -1) lineEnd = nextCR;
      else lineEnd = nextCR < nextLF ? nextCR : nextLF;
      if (lineEnd === -1) {
        this.carry(buf, pos, buf.length);
        return;
      }
      let next = lineEnd + 1;
      if (buf[lineEnd] === CR) {
        if (next === buf.length) this.lastWasCR = true;
        else if (buf[next] === LF) next += 1;
      }
      this.lineNext = next;
      this.completeLine(buf, pos, lineEnd);
      pos = next;
    }
  }

  /** End of stream: a last line without line end is a line; a last event without blank line is dispatched. */
  end(): void {
    if (this.ended) return;
    this.lineNext = 0;
    if (this.pendingLength > 0) {
      this.completeLine(EMPTY, 0, 0);
    }
    // Only a span with bytes is dispatched (and reported): a stream that ended on a blank line has none.
    if (this.eventBytes > 0 || this.skipping) this.dispatch();
    this.ended = true;
  }

  private carry(buf: Buffer, start: number, end: number): void {
    const length = end - start;
    if (this.skipping) {
      this.pendingLength += length;
      return;
    }
    if (this.eventBytes + this.pendingLength + length > this.maxEventBytes) {
      this.startSkipping();
      this.pendingLength += length;
      return;
    }
    // Copy: the caller may reuse its chunk buffer once feed() returns.
    this.appendPending(buf, start, end);
  }

  private appendPending(buf: Buffer, start: number, end: number): void {
    const needed = this.pendingLength + (end - start);
    if (needed > this.lineBuf.length) {
      const grown = Buffer.allocUnsafe(Math.max(needed, INITIAL_LINE_BUFFER, this.lineBuf.length * 2));
      this.lineBuf.copy(grown, 0, 0, this.pendingLength);
      this.lineBuf = grown;
    }
    buf.copy(this.lineBuf, this.pendingLength, start, end);
    this.pendingLength = needed;
  }

  private startSkipping(): void {
    this.skipping = true;
    this.eventBytes += this.pendingLength;
    this.pendingLength = 0;
    this.releaseLineBuffer();
    this.data = undefined;
    this.eventType = undefined;
    this.eventId = undefined;
  }

  private completeLine(buf: Buffer, start: number, end: number): void {
    const lineLength = this.pendingLength + (end - start);
    const firstLine = this.atStreamStart;
    this.atStreamStart = false;
    if (this.skipping) {
      this.pendingLength = 0;
      if (lineLength === 0) {
        this.dispatch();
      } else {
        this.eventBytes += lineLength + 1;
        if (this.observer !== undefined) this.observer.onLine('oversize', this.lineNext, EMPTY, 0, 0);
      }
      return;
    }
    if (lineLength === 0) {
      this.dispatch();
      return;
    }
    if (this.eventBytes + lineLength + 1 > this.maxEventBytes) {
      this.startSkipping();
      this.eventBytes += end - start + 1;
      if (this.observer !== undefined) this.observer.onLine('oversize', this.lineNext, EMPTY, 0, 0);
      return;
    }
    this.eventBytes += lineLength + 1;
    let line: Buffer;
    let lineStart: number;
    let lineEnd: number;
    if (this.pendingLength > 0) {
      this.appendPending(buf, start, end);
      line = this.lineBuf;
      lineStart = 0;
      lineEnd = lineLength;
    } else {
      line = buf;
      lineStart = start;
      lineEnd = end;
    }
    this.pendingLength = 0;
    if (firstLine) {
      if (line[lineStart] === 0xef && line[lineStart + 1] === 0xbb && line[lineStart + 2] === 0xbf) {
        lineStart += 3;
        if (lineStart === lineEnd) {
          this.dispatch();
          return;
        }
      }
    }
    this.processField(line, lineStart, lineEnd);
    if (line === this.lineBuf) this.releaseLineBuffer();
  }

  private releaseLineBuffer(): void {
    if (this.lineBuf.length > KEEP_LINE_BUFFER) this.lineBuf = Buffer.allocUnsafe(INITIAL_LINE_BUFFER);
  }

  private processField(line: Buffer, start: number, end: number): void {
    if (line[start] === COLON) {
      // comment / keep-alive (": ping")
      if (this.observer !== undefined) this.observer.onLine('comment', this.lineNext, line, end, end);
      return;
    }
    const colon = line.indexOf(COLON, start);
    let field: string;
    let value: string;
    let valueStart = end;
    if (colon === -1 || colon >= end) {
      field = line.toString('utf8', start, end);
      value = '';
    } else {
      field = line.toString('latin1', start, colon);
      valueStart = line[colon + 1] === SPACE ? colon + 2 : colon + 1;
      value = line.toString('utf8', valueStart, end);
    }
    if (this.observer !== undefined) {
      if (field === 'data') this.observer.onLine('data', this.lineNext, line, valueStart, end);
      else this.observer.onLine('field', this.lineNext, line, end, end);
    }
    switch (field) {
      case 'data':
        this.data = this.data === undefined ? value : `${this.data}\n${value}`;
        break;
      case 'event':
        this.eventType = value;
        break;
      case 'id':
        if (!value.includes('\0')) this.eventId = value;
        break;
      default:
        // `retry` and unknown fields are ignored, as the spec says.
        break;
    }
  }

  private finishSkipping(): void {
    const bytes = this.eventBytes + 1; // the blank line that ended it
    this.skipping = false;
    this.eventBytes = 0;
    this.onOversize?.(bytes);
  }

  /** The blank line (or the end of the stream) that ends the current span. */
  private dispatch(): void {
    if (this.skipping) this.finishSkipping();
    else this.dispatchEvent();
    if (this.observer !== undefined) this.observer.onEventEnd(this.lineNext);
  }

  private dispatchEvent(): void {
    const data = this.data;
    const eventType = this.eventType;
    const id = this.eventId;
    this.data = undefined;
    this.eventType = undefined;
    this.eventId = undefined;
    this.eventBytes = 0;
    if (data === undefined) return;
    const event: SseEvent = { data };
    if (eventType !== undefined && eventType !== '') event.event = eventType;
    if (id !== undefined) event.id = id;
    this.onEvent(event);
  }
}
