/** Real HTTP servers and a raw client for the proxy tests (127.0.0.1 only). */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import net, { type AddressInfo, type Socket } from 'node:net';

export type Handler = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void;

export interface TestUpstream {
  url: string;
  server: http.Server;
  seen: Array<{ method: string; url: string; rawHeaders: string[]; body: Buffer }>;
  close(): Promise<void>;
}

/** A real HTTP upstream on 127.0.0.1 that records what it received; closed by `cleanups`. */
export async function startTestUpstream(
  handler: Handler,
  cleanups: Array<() => Promise<void>>,
): Promise<TestUpstream> {
  const seen: TestUpstream['seen'] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      seen.push({ method: req.method!, url: req.url!, rawHeaders: req.rawHeaders, body });
      handler(req, res, body);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const up: TestUpstream = {
    url: `http://127.0.0.1:${port}`,
    server,
    seen,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
  cleanups.push(up.close);
  return up;
}

export interface RawResponse {
  status: number;
  rawHeaders: string[];
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

export function request(
  url: string,
  opts: {
    method?: string;
    headers?: Record<string, string> | string[];
    body?: Buffer | string;
    agent?: http.Agent;
  } = {},
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      { method: opts.method ?? 'GET', headers: opts.headers, agent: opts.agent ?? false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({
            status: res.statusCode!,
            rawHeaders: res.rawHeaders,
            headers: res.headers,
            body: Buffer.concat(chunks),
          }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(opts.body);
  });
}

/**
 * An upstream that answers each connection's first request with these raw bytes (latin1), then
 * closes: for heads no real server would send. Returns its base URL; closed by `cleanups`.
 */
export async function startRawUpstream(raw: string, cleanups: Array<() => Promise<void>>): Promise<string> {
  const server = net.createServer((socket) => {
    socket.on('error', () => {});
    socket.once('data', () => socket.end(Buffer.from(raw, 'latin1')));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** Sends `raw` bytes on a new connection; resolves with every byte that came back before it closed (latin1). */
export function rawExchange(port: number, raw: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', reject);
    socket.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    socket.write(raw);
  });
}

export interface KeepAliveUpstream {
  url: string;
  /** Resolves with the ms between the connection's last response and its close by the client. */
  closedAfter(): Promise<number>;
  /** Connections accepted so far. */
  connections: number;
  close(): Promise<void>;
}

/**
 * An upstream that answers every request at once (with `Keep-Alive: <hint>` when given), never
 * closes a connection first, and records when the client closes one: for the keep-alive pools'
 * tests (agents.test.ts, upstream-pool.test.ts). Closed by `cleanups`.
 */
export async function startKeepAliveUpstream(
  cleanups: Array<() => Promise<void>>,
  keepAliveHint?: string,
): Promise<KeepAliveUpstream> {
  let lastResponseAt = 0;
  let connections = 0;
  const closes: Array<(ms: number) => void> = [];
  const sockets = new Set<Socket>();
  const server = http.createServer((_req, res) => {
    const headers: http.OutgoingHttpHeaders = { 'content-type': 'application/json' };
    if (keepAliveHint) headers['keep-alive'] = keepAliveHint;
    res.writeHead(200, headers);
    res.end('{"ok":true}', () => (lastResponseAt = performance.now()));
  });
  // The upstream itself never closes first within a test.
  server.keepAliveTimeout = 60_000;
  server.on('connection', (s: Socket) => {
    connections++;
    sockets.add(s);
    s.on('close', () => {
      sockets.delete(s);
      const ms = performance.now() - lastResponseAt;
      for (const f of closes.splice(0)) f(ms);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const up: KeepAliveUpstream = {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    closedAfter: () => new Promise((r) => closes.push(r)),
    get connections() {
      return connections;
    },
    close: () =>
      new Promise((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
  cleanups.push(up.close);
  return up;
}
