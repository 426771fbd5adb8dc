/**
 * A local OTLP/HTTP trace receiver for the benchmark's traces row (docs/benchmarks.md): accepts
 * POST /v1/traces (http/json, optionally gzip), counts requests and spans, answers 200 with an
 * empty ExportTraceServiceResponse. GET /stats returns the counts. Nothing is stored.
 *
 * Run as a child process: `node --import tsx bench/otlp-receiver.ts`; prints `{"port":N}`.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';

interface OtlpTraces {
  resourceSpans?: Array<{ scopeSpans?: Array<{ spans?: unknown[] }> }>;
}

const stats = { requests: 0, spans: 0, bytes: 0, unparsed: 0 };

function countSpans(raw: Buffer, encoding: string | undefined): number {
  const bytes = encoding === 'gzip' ? gunzipSync(raw) : raw;
  const body = JSON.parse(bytes.toString('utf8')) as OtlpTraces;
  let n = 0;
  for (const rs of body.resourceSpans ?? []) for (const ss of rs.scopeSpans ?? []) n += ss.spans?.length ?? 0;
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
