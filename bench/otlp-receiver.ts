/**
 * A local OTLP/HTTP trace receiver for the benchmark's traces row (docs/benchmarks.md): accepts
 * POST /v1/traces in either OTLP/HTTP encoding (http/protobuf, the default a user gets, or
 * http/json; optionally gzip), counts requests and spans, answers 200 with an empty
 * ExportTraceServiceResponse in the request's encoding. GET /stats returns the counts. Nothing is
 * stored.
 *
 * It shares the machine's two cores with the process it measures, so it counts spans cheaply
 * instead of decoding every body (a full `JSON.parse` cost ≈ 15 µs of CPU per span at c=32,
 * charged to the tm-traces row although a collector normally runs elsewhere):
 * - protobuf: walks the message lengths down to ScopeSpans and counts its `spans` fields without
 *   looking inside them;
 * - JSON: a byte scan for `"spanId":` (a span's own id; its parent's is `"parentSpanId":`).
 * Every 50th body is also decoded in full (protobuf: every span's trace and span id read and
 * checked for length; JSON: `JSON.parse`) and the two counts compared; a difference is counted in
 * `stats.mismatched` (the bench reports it).
 *
 * Run as a child process: `node --import tsx bench/otlp-receiver.ts`; prints `{"port":N}`.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';

interface OtlpTraces {
  resourceSpans?: Array<{ scopeSpans?: Array<{ spans?: unknown[] }> }>;
}

const stats = { requests: 0, spans: 0, bytes: 0, unparsed: 0, checked: 0, mismatched: 0 };
const CHECK_EVERY = 50;
const SPAN_ID = Buffer.from('"spanId":');

function parsedCount(bytes: Buffer): number {
  const body = JSON.parse(bytes.toString('utf8')) as OtlpTraces;
  let n = 0;
  for (const rs of body.resourceSpans ?? []) for (const ss of rs.scopeSpans ?? []) n += ss.spans?.length ?? 0;
  return n;
}

function scannedCount(bytes: Buffer): number {
  let n = 0;
  for (let at = bytes.indexOf(SPAN_ID); at !== -1; at = bytes.indexOf(SPAN_ID, at + SPAN_ID.length)) n++;
  return n;
}

/** One protobuf field: its number, and for a length-delimited one where its bytes are. */
interface Field {
  no: number;
  wire: number;
  start: number;
  end: number;
}

function varint(b: Buffer, at: number): [value: number, next: number] {
  let v = 0;
  let mul = 1;
  for (let i = at; i < b.length && i < at + 10; i++) {
    v += (b[i]! & 0x7f) * mul;
    if (b[i]! < 0x80) return [v, i + 1];
    mul *= 128;
  }
  throw new Error('bad varint');
}

/** The fields of the message in b[start, end), each once; throws on a malformed message. */
function* fields(b: Buffer, start: number, end: number): Generator<Field> {
  let at = start;
  while (at < end) {
    const [key, next] = varint(b, at);
    const no = Math.floor(key / 8);
    const wire = key % 8;
    at = next;
    let fieldStart = at;
    if (wire === 0) at = varint(b, at)[1];
    else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else if (wire === 2) {
      const [len, body] = varint(b, at);
      fieldStart = body;
      at = body + len;
    } else throw new Error(`wire type ${wire}`);
    if (at > end) throw new Error('field past the end');
    yield { no, wire, start: fieldStart, end: at };
  }
}

/** Ref: opentelemetry-proto trace.proto: ExportTraceServiceRequest.resource_spans = 1,
 * ResourceSpans.scope_spans = 2, ScopeSpans.spans = 2, Span.trace_id = 1, Span.span_id = 2. */
function protobufCount(b: Buffer, full: boolean): number {
  let n = 0;
  for (const rs of fields(b, 0, b.length)) {
    if (rs.no !== 1 || rs.wire !== 2) continue;
    for (const ss of fields(b, rs.start, rs.end)) {
      if (ss.no !== 2 || ss.wire !== 2) continue;
      for (const span of fields(b, ss.start, ss.end)) {
        if (span.no !== 2 || span.wire !== 2) continue;
        if (!full) {
          n++;
          continue;
        }
        let ids = 0;
        for (const f of fields(b, span.start, span.end)) {
          if (
            f.wire === 2 &&
            ((f.no === 1 && f.end - f.start === 16) || (f.no === 2 && f.end - f.start === 8))
          )
            ids++;
        }
        if (ids === 2) n++;
      }
    }
  }
  return n;
}

function countSpans(raw: Buffer, encoding: string | undefined, json: boolean): number {
  const bytes = encoding === 'gzip' ? gunzipSync(raw) : raw;
  const check = stats.requests % CHECK_EVERY === 1;
  if (!json) {
    const n = protobufCount(bytes, false);
    if (check) {
      stats.checked++;
      if (protobufCount(bytes, true) !== n) stats.mismatched++;
    }
    return n;
  }
  if (bytes[0] !== 0x7b) throw new Error('not JSON');
  const n = scannedCount(bytes);
  if (check) {
    stats.checked++;
    if (parsedCount(bytes) !== n) stats.mismatched++;
  }
  return n;
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/stats') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(stats));
    return;
  }
  const parts: Buffer[] = [];
  req.on('data', (c: Buffer) => parts.push(c));
  req.on('end', () => {
    if (req.method !== 'POST' || req.url !== '/v1/traces') {
      res.writeHead(404).end();
      return;
    }
    const raw = Buffer.concat(parts);
    stats.requests++;
    stats.bytes += raw.length;
    const json = (req.headers['content-type'] ?? '').includes('json');
    try {
      stats.spans += countSpans(raw, req.headers['content-encoding'], json);
    } catch {
      stats.unparsed++;
    }
    // An empty ExportTraceServiceResponse: `{}` in JSON, zero bytes in protobuf.
    res.writeHead(200, { 'content-type': json ? 'application/json' : 'application/x-protobuf' });
    res.end(json ? '{}' : '');
  });
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: (server.address() as AddressInfo).port }) + '\n');
});
process.on('SIGTERM', () => {
  server.closeAllConnections();
  server.close(() => process.exit(0));
});
