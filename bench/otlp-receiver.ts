/**
 * A local OTLP/HTTP trace receiver for the benchmark's traces row (docs/benchmarks.md): accepts
 * POST /v1/traces (http/json, optionally gzip), counts requests and spans, answers 200 with an
 * empty ExportTraceServiceResponse. GET /stats returns the counts. Nothing is stored.
 *
 * It shares the machine's two cores with the process it measures, so it counts spans with a byte
 * scan for `"spanId":` (a span's own id; its parent's is `"parentSpanId":`) instead of parsing
 * every body: a full `JSON.parse` cost ≈ 15 µs of CPU per span at c=32, charged to the tm-traces
 * row although a collector normally runs elsewhere. Every 50th body is also parsed in full and
 * its two counts compared; a difference is counted in `stats.mismatched` (the bench reports it).
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

function countSpans(raw: Buffer, encoding: string | undefined): number {
  const bytes = encoding === 'gzip' ? gunzipSync(raw) : raw;
  if (bytes[0] !== 0x7b) throw new Error('not JSON'); // e.g. protobuf: counted as unparsed
  const n = scannedCount(bytes);
  if (stats.requests % CHECK_EVERY === 1) {
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
    try {
      stats.spans += countSpans(raw, req.headers['content-encoding']);
    } catch {
      stats.unparsed++; // e.g. protobuf when the protocol variable was not honoured
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{}');
  });
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: (server.address() as AddressInfo).port }) + '\n');
});
process.on('SIGTERM', () => {
  server.closeAllConnections();
  server.close(() => process.exit(0));
});
