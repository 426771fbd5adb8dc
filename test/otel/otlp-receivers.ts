/**
 * Real OTLP receivers in the test process, on 127.0.0.1: OTLP/HTTP (protobuf and JSON, as a
 * Collector's otlphttp receiver on :4318 accepts both) and OTLP/gRPC (an HTTP/2 server speaking
 * the gRPC framing of the three collector services). Every export is kept raw (to search for
 * secrets) and decoded into one shape, whatever the protocol.
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { createServer as createHttp2Server, type Http2Session } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';
import {
  ExportLogsServiceRequest,
  ExportMetricsServiceRequest,
  ExportTraceServiceRequest,
  decodeMessage,
  type Decoded,
  type Schema,
} from './otlp-protobuf.js';

export type Signal = 'traces' | 'metrics' | 'logs';
export type AttrValue = string | number | boolean | AttrValue[] | undefined;
export type Attrs = Record<string, AttrValue>;

export interface ReceivedExport {
  signal: Signal;
  path: string;
  contentType: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
  payload: Decoded;
}

export interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  kind: number;
  attributes: Attrs;
  statusCode: number;
  resource: Attrs;
  scope: string;
}
export interface OtlpPoint {
  attributes: Attrs;
  /** AnyValue kind per attribute key, e.g. `intValue`. */
  count?: number;
  sum?: number;
  value?: number;
  bucketCounts?: number[];
  explicitBounds?: number[];
}
export interface OtlpMetric {
  name: string;
  unit: string;
  type: 'histogram' | 'sum' | 'gauge';
  isMonotonic?: boolean;
  points: OtlpPoint[];
  resource: Attrs;
  scope: string;
}
export interface OtlpLog {
  eventName: string;
  severityNumber: number;
  severityText: string;
  body: AttrValue;
  attributes: Attrs;
  /** AnyValue kind per attribute key (`intValue`, `stringValue`, …): shows exact integers stay integers. */
  kinds: Record<string, string>;
  traceId: string;
  spanId: string;
  timeUnixNano: number;
  resource: Attrs;
  scope: string;
}

export interface OtlpReceiver {
  url: string;
  exports: ReceivedExport[];
  spans(): OtlpSpan[];
  metrics(): OtlpMetric[];
  logs(): OtlpLog[];
  /** Every body received, as text: to check that a secret appears nowhere. */
  rawText(): string;
  close(): Promise<void>;
}

const SCHEMAS: Record<Signal, Schema> = {
  traces: ExportTraceServiceRequest,
  metrics: ExportMetricsServiceRequest,
  logs: ExportLogsServiceRequest,
};

type Obj = Record<string, unknown>;
const arr = (v: unknown): Obj[] => (Array.isArray(v) ? (v as Obj[]) : []);
const num = (v: unknown): number => (typeof v === 'string' ? Number(v) : typeof v === 'number' ? v : 0);

function anyValue(v: unknown): AttrValue {
  if (v === null || typeof v !== 'object') return undefined;
  const o = v as Obj;
  if ('stringValue' in o) return o.stringValue as string;
  if ('boolValue' in o) return o.boolValue as boolean;
  if ('intValue' in o) return num(o.intValue);
  if ('doubleValue' in o) return num(o.doubleValue);
  if ('arrayValue' in o) return arr((o.arrayValue as Obj).values).map(anyValue);
  return undefined;
}
function attrs(list: unknown): Attrs {
  return Object.fromEntries(arr(list).map((kv) => [kv.key as string, anyValue(kv.value)]));
}
function kinds(list: unknown): Record<string, string> {
  return Object.fromEntries(
    arr(list).map((kv) => [kv.key as string, Object.keys((kv.value as Obj) ?? {})[0] ?? '']),
  );
}

function collect<T>(
  exports: ReceivedExport[],
  signal: Signal,
  keys: [string, string, string],
  map: (item: Obj, resource: Attrs, scope: string) => T,
): T[] {
  const out: T[] = [];
  for (const e of exports) {
    if (e.signal !== signal) continue;
    for (const rs of arr(e.payload[keys[0]])) {
      const resource = attrs((rs.resource as Obj | undefined)?.attributes);
      for (const ss of arr(rs[keys[1]])) {
        const scope = ((ss.scope as Obj | undefined)?.name as string | undefined) ?? '';
        for (const item of arr(ss[keys[2]])) out.push(map(item, resource, scope));
      }
    }
  }
  return out;
}

function views(exports: ReceivedExport[]): Pick<OtlpReceiver, 'spans' | 'metrics' | 'logs' | 'rawText'> {
  return {
    spans: () =>
      collect(exports, 'traces', ['resourceSpans', 'scopeSpans', 'spans'], (s, resource, scope) => ({
        traceId: String(s.traceId ?? ''),
        spanId: String(s.spanId ?? ''),
        parentSpanId: String(s.parentSpanId ?? ''),
        name: String(s.name),
        kind: num(s.kind),
        attributes: attrs(s.attributes),
        statusCode: num((s.status as Obj | undefined)?.code),
        resource,
        scope,
      })),
    metrics: () =>
      collect(exports, 'metrics', ['resourceMetrics', 'scopeMetrics', 'metrics'], (m, resource, scope) => {
        const type = m.histogram ? 'histogram' : m.sum ? 'sum' : 'gauge';
        const data = (m[type] ?? {}) as Obj;
        return {
          name: String(m.name),
          unit: String(m.unit ?? ''),
          type,
          isMonotonic: data.isMonotonic as boolean | undefined,
          resource,
          scope,
          points: arr(data.dataPoints).map((p) => ({
            attributes: attrs(p.attributes),
            count: p.count === undefined ? undefined : num(p.count),
            sum: p.sum === undefined ? undefined : num(p.sum),
            value:
              p.asDouble !== undefined ? num(p.asDouble) : p.asInt !== undefined ? num(p.asInt) : undefined,
            bucketCounts: Array.isArray(p.bucketCounts) ? p.bucketCounts.map(num) : undefined,
            explicitBounds: Array.isArray(p.explicitBounds) ? p.explicitBounds.map(num) : undefined,
          })),
        };
      }),
    logs: () =>
      collect(exports, 'logs', ['resourceLogs', 'scopeLogs', 'logRecords'], (l, resource, scope) => ({
        eventName: String(l.eventName ?? ''),
        severityNumber: num(l.severityNumber),
        severityText: String(l.severityText ?? ''),
        body: anyValue(l.body),
        attributes: attrs(l.attributes),
        kinds: kinds(l.attributes),
        traceId: String(l.traceId ?? ''),
        spanId: String(l.spanId ?? ''),
        timeUnixNano: num(l.timeUnixNano),
        resource,
        scope,
      })),
    rawText: () => exports.map((e) => e.body.toString('latin1')).join('\n'),
  };
}

function signalOfPath(path: string): Signal | undefined {
  if (path.endsWith('/v1/traces') || path.endsWith('TraceService/Export')) return 'traces';
  if (path.endsWith('/v1/metrics') || path.endsWith('MetricsService/Export')) return 'metrics';
  if (path.endsWith('/v1/logs') || path.endsWith('LogsService/Export')) return 'logs';
  return undefined;
}

/** OTLP/HTTP on 127.0.0.1: POST /v1/{traces,metrics,logs}, protobuf or JSON, optionally gzip. */
export async function startOtlpHttpReceiver(): Promise<OtlpReceiver> {
  const exports: ReceivedExport[] = [];
  const server: Server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      const path = req.url ?? '';
      const signal = signalOfPath(path);
      const contentType = req.headers['content-type'] ?? '';
      if (req.method !== 'POST' || !signal) {
        res.writeHead(404).end();
        return;
      }
      const raw = Buffer.concat(parts);
      const body = req.headers['content-encoding'] === 'gzip' ? gunzipSync(raw) : raw;
      const json = contentType.includes('json');
      const payload = json
        ? (JSON.parse(body.toString('utf8')) as Decoded)
        : decodeMessage(body, SCHEMAS[signal]);
      exports.push({ signal, path, contentType, headers: req.headers, body, payload });
      // An empty Export*ServiceResponse: full success.
      res.writeHead(200, { 'content-type': json ? 'application/json' : 'application/x-protobuf' });
      res.end(json ? '{}' : '');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    exports,
    ...views(exports),
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

/** OTLP/gRPC on 127.0.0.1 (plaintext HTTP/2): the Export method of the three collector services. */
export async function startOtlpGrpcReceiver(): Promise<OtlpReceiver> {
  const exports: ReceivedExport[] = [];
  const sessions = new Set<Http2Session>();
  const server = createHttp2Server();
  server.on('session', (s) => {
    sessions.add(s);
    s.on('close', () => sessions.delete(s));
  });
  server.on('stream', (stream, headers) => {
    const path = String(headers[':path'] ?? '');
    const parts: Buffer[] = [];
    stream.on('data', (c: Buffer) => parts.push(c));
    stream.on('end', () => {
      const signal = signalOfPath(path);
      const frame = Buffer.concat(parts);
      // gRPC message framing: 1 byte compressed flag, 4 bytes big-endian length, the message.
      const compressed = frame[0] === 1;
      const message = frame.subarray(5, 5 + frame.readUInt32BE(1));
      const body = compressed ? gunzipSync(message) : message;
      if (signal) {
        exports.push({
          signal,
          path,
          contentType: String(headers['content-type']),
          headers: headers as IncomingHttpHeaders,
          body,
          payload: decodeMessage(body, SCHEMAS[signal]),
        });
      }
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () =>
        stream.sendTrailers(
          signal ? { 'grpc-status': '0' } : { 'grpc-status': '12', 'grpc-message': 'unimplemented' },
        ),
      );
      stream.end(Buffer.from([0, 0, 0, 0, 0])); // an empty Export*ServiceResponse
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    exports,
    ...views(exports),
    close: () =>
      new Promise<void>((r) => {
        for (const s of sessions) s.destroy();
        server.close(() => r());
      }),
  };
}
