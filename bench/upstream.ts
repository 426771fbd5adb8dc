/**
 * A minimal, fast OpenAI-shaped upstream for the benchmark (DESIGN.md §11): answers as quickly as
 * node:http can, so what is measured is the proxy's cost, not the upstream's.
 *   POST /v1/chat/completions            → fixed JSON completion with usage
 *   POST /v1/chat/completions stream     → SSE: N content chunks `x-bench-gap-ms` apart (default 0),
 *                                        plus the usage-only chunk when include_usage is asked
 *   same with header x-bench-long-mb: N → N MiB of content chunks as fast as the reader takes them
 *   GET /-/bench/stats?run=ID            → {received, resets} for the keep-alive churn phase
 *
 * Keep-alive churn (issue 11, "never a double generation"): a request carrying `x-bench-run: ID`
 * is counted on arrival, per run. With `x-bench-idle-close-ms: N` the connection it came on is
 * closed silently after N ms idle (no `Keep-Alive: timeout` hint says so, like a gateway or load
 * balancer with a shorter idle timeout than the client's pool). With `x-bench-reset-every: K`,
 * every K-th such request that arrives on a reused connection is answered with a TCP reset after
 * its body was read: the stale-socket race (the upstream closed the idle socket just as the
 * request arrived) made deterministic. A proxy that re-sends the POST makes `received` exceed what
 * the client sent: a second generation, billed.
 *
 * Run as a child process (`node --import tsx bench/upstream.ts`): prints `{"port":N}` on stdout.
 */
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { pathToFileURL } from 'node:url';

/** The non-streamed answer (also bench/meter-micro.ts's response body). */
export const COMPLETION = JSON.stringify({
  id: 'chatcmpl-bench',
  object: 'chat.completion',
  created: 1_700_000_000,
  model: 'gpt-4o-mini',
  choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
  usage: { prompt_tokens: 12, completion_tokens: 1, total_tokens: 13 },
});

function chunk(content: string): string {
  return `data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":${JSON.stringify(content)}},"finish_reason":null}]}\n\n`;
}
const USAGE_CHUNK =
  'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}\n\n';

export interface BenchUpstream {
  url: string;
  close(): Promise<void>;
}

interface ChatBody {
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
}

interface RunStats {
  received: number;
  /** Requests on a reused connection seen so far (the reset counter). */
  reusedSeen: number;
  resets: number;
}

/** Per-connection state: requests served, and the silent idle-close timer. */
interface ConnState {
  requests: number;
  idleTimer?: NodeJS.Timeout;
}

class ChurnBook {
  private readonly runs = new Map<string, RunStats>();
  private readonly conns = new WeakMap<Socket, ConnState>();

  /** Called on every request's arrival; returns true when this one must be reset. */
  arrive(req: http.IncomingMessage): boolean {
    const conn = this.conns.get(req.socket) ?? { requests: 0 };
    this.conns.set(req.socket, conn);
    clearTimeout(conn.idleTimer);
    conn.requests++;
    const run = header(req, 'x-bench-run');
    if (run === undefined) return false;
    const stats = this.runs.get(run) ?? { received: 0, reusedSeen: 0, resets: 0 };
    this.runs.set(run, stats);
    stats.received++;
    const every = Number(header(req, 'x-bench-reset-every') ?? '0');
    if (every <= 0 || conn.requests < 2) return false;
    stats.reusedSeen++;
    if (stats.reusedSeen % every !== 0) return false;
    stats.resets++;
    return true;
  }

  /** After a response: close the connection silently once it has been idle `ms`. */
  idleClose(req: http.IncomingMessage, res: http.ServerResponse): void {
    const ms = Number(header(req, 'x-bench-idle-close-ms') ?? '0');
    if (ms <= 0) return;
    const socket = req.socket;
    res.once('finish', () => {
      const conn = this.conns.get(socket);
      if (!conn) return;
      clearTimeout(conn.idleTimer);
      conn.idleTimer = setTimeout(() => socket.destroy(), ms);
    });
  }

  stats(run: string): Omit<RunStats, 'reusedSeen'> {
    const s = this.runs.get(run);
    return { received: s?.received ?? 0, resets: s?.resets ?? 0 };
  }
}

function header(req: http.IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function sendLong(res: http.ServerResponse, mb: number, body: ChatBody): void {
  const event = Buffer.from(chunk('y'.repeat(4000)));
  let left = Math.ceil((mb * 1024 * 1024) / event.length);
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  const pump = () => {
    while (left > 0) {
      left--;
      if (!res.write(event)) return void res.once('drain', pump);
    }
    if (body.stream_options?.include_usage) res.write(USAGE_CHUNK);
    res.end('data: [DONE]\n\n');
  };
  pump();
}

function sendStream(req: http.IncomingMessage, res: http.ServerResponse, body: ChatBody): void {
  const n = Number(header(req, 'x-bench-chunks') ?? '8');
  const gap = Number(header(req, 'x-bench-gap-ms') ?? '0');
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  let i = 0;
  const next = () => {
    if (res.destroyed) return;
    if (i < n) {
      res.write(chunk(`t${i++}`));
      if (gap > 0) setTimeout(next, gap);
      else setImmediate(next);
      return;
    }
    if (body.stream_options?.include_usage) res.write(USAGE_CHUNK);
    res.end('data: [DONE]\n\n');
  };
  next();
}

function answer(req: http.IncomingMessage, res: http.ServerResponse, raw: Buffer): void {
  let body: ChatBody = {};
  try {
    body = JSON.parse(raw.toString('utf8')) as ChatBody;
  } catch {
    /* not JSON: answer as non-stream */
  }
  if (!body.stream) {
    res.writeHead(200, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(COMPLETION),
    });
    res.end(COMPLETION);
    return;
  }
  const longMb = header(req, 'x-bench-long-mb');
  if (longMb !== undefined) sendLong(res, Number(longMb), body);
  else sendStream(req, res, body);
}

export async function startBenchUpstream(port = 0): Promise<BenchUpstream> {
  const churn = new ChurnBook();
  const server = http.createServer({ keepAliveTimeout: 30_000 }, (req, res) => {
    if (req.method === 'GET' && req.url?.startsWith('/-/bench/stats')) {
      const run = new URL(req.url, 'http://x').searchParams.get('run') ?? '';
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(churn.stats(run)));
      return;
    }
    const reset = churn.arrive(req);
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => {
      if (reset) return void req.socket.resetAndDestroy();
      churn.idleClose(req, res);
      answer(req, res, Buffer.concat(parts));
    });
  });
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const up = await startBenchUpstream();
  process.stdout.write(JSON.stringify({ port: Number(new URL(up.url).port) }) + '\n');
  process.on('SIGTERM', () => void up.close().then(() => process.exit(0)));
}
