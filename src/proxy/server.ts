/**
 * The proxy (DESIGN.md §3, §12): a node:http server that hands each proxied request to one
 * `Exchange` (./exchange.ts), which owns it from the first byte to its record, and answers the
 * admin paths (/healthz, /readyz, /metrics) itself. This file holds what is per server: client-side
 * limits (header, body and keep-alive timeouts, a connection cap), the admin surface, and drain.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { timingSafeEqual } from 'node:crypto';
import type { Settings } from '../config/types.js';
import type { Logger } from '../log.js';
import type { Meter } from '../meter/types.js';
import { NOOP_HEALTH, type HealthCounters } from '../sinks/types.js';
import { createPools } from './upstream-call.js';
import { BodyRoom, createAgents, Inflight, type InflightMember, type ProxyContext } from './context.js';
import { Exchange } from './exchange.js';
import { originForm } from './path-join.js';
import { createRouter } from './router.js';
import { answerRawJson, isWebSocketUpgrade, WsSession } from './websocket.js';

export { endpointError } from './http-util.js';

export interface AdminHooks {
  metrics?: () => Promise<{ contentType: string; body: string }>;
  ready?: () => boolean;
  /**
   * Everything under the reserved prefix `/-/` (the console and its JSON API, any method). The
   * handler owns authentication for it (a browser cannot send a bearer header on navigation).
   * Unset: `/-/` answers 404 and is never proxied.
   */
  console?: (req: IncomingMessage, res: ServerResponse) => void;
}

/** The prefix no upstream path uses (like Prometheus' `/-/healthy`); see docs/console.md. */
export const CONSOLE_PREFIX = '/-/';

export interface ProxyServerOptions {
  settings: Settings;
  meter: Meter;
  log: Logger;
  health?: HealthCounters;
  admin?: AdminHooks;
}

export interface ProxyServer {
  server: http.Server;
  listen(): Promise<AddressInfo>;
  /** Stop accepting, let in-flight requests finish for up to graceMs, then cut the rest. */
  close(graceMs: number): Promise<void>;
  /** Requests in flight: from metering begin until their record was handed to the sinks. */
  inflight(): number;
  /** The same, per upstream name (the `tokenmeter_inflight_requests` gauge). */
  inflightByUpstream(): ReadonlyMap<string, number>;
}

/** Liveness stays open even with auth_token set: container health checks and probes send no token. */
const OPEN_ADMIN_PATHS = new Set(['/healthz']);
const ADMIN_PATHS = new Set(['/healthz', '/readyz', '/metrics']);

const BAD_TARGET_BODY = '{"error":"request target must be a path (/...) or an http(s) URL"}';

/**
 * A request whose target has no path (RFC 9112 §3.2): `OPTIONS *` asks what the server supports and
 * is answered here (204 with `Allow`; no upstream can be meant); anything else is a 400. Neither
 * reaches an upstream or the audit log, like the admin paths.
 */
function answerTargetWithoutPath(req: IncomingMessage, res: ServerResponse): void {
  if (req.method === 'OPTIONS' && req.url === '*') {
    res.writeHead(204, { allow: 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS' });
    res.end();
    return;
  }
  res.writeHead(400, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(BAD_TARGET_BODY),
  });
  res.end(BAD_TARGET_BODY);
}

function bearerMatches(header: string | undefined, token: string): boolean {
  if (!header?.startsWith('Bearer ')) return false;
  const given = Buffer.from(header.slice(7));
  const want = Buffer.from(token);
  return given.length === want.length && timingSafeEqual(given, want);
}

/**
 * Any other `Upgrade` (e.g. curl's `h2c`) is ignored, as RFC 9110 §7.8 allows: the request is
 * served as plain HTTP/1.1 by the normal handler (Node hands every Upgrade request to the
 * 'upgrade' listener once there is one). One with a body is refused: Node has stopped parsing at
 * its head, so the body could not be forwarded intact.
 */
function serveIgnoringUpgrade(server: http.Server, req: IncomingMessage, socket: Duplex, head: Buffer): void {
  const hasBody =
    head.length > 0 ||
    req.headers['transfer-encoding'] !== undefined ||
    (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');
  if (hasBody) {
    const body =
      '{"error":{"message":"Upgrade with a request body is not supported; send it without Upgrade","type":"bad_request"}}';
    answerRawJson(socket, 400, body);
    return;
  }
  const res = new http.ServerResponse(req);
  res.shouldKeepAlive = false;
  res.assignSocket(socket as Socket);
  res.on('finish', () => {
    res.detachSocket(socket as Socket);
    socket.end(() => socket.destroy());
  });
  server.emit('request', req, res);
}

export function createProxyServer(opts: ProxyServerOptions): ProxyServer {
  const { settings, meter, log, admin } = opts;
  const agents = createAgents();
  const pools = createPools();
  const health = opts.health ?? NOOP_HEALTH;
  const inflight = new Inflight<InflightMember>();
  const ctx: ProxyContext = {
    settings,
    router: createRouter(settings),
    meter,
    log,
    health,
    inflight,
    bodyRoom: new BodyRoom(settings.limits.maxBufferedBodies, () => {
      health.requestBodyWait();
      log.once(
        'proxy-body-room',
        'warn',
        'request bodies held for metering reached limits.max_buffered_bodies; larger bodies wait for room',
        { max_buffered_bodies: settings.limits.maxBufferedBodies },
      );
    }),
    agentFor: agents.agentFor,
    poolFor: pools.poolFor,
  };
  const sockets = new Set<Socket>();

  async function serveAdmin(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    const send = (status: number, contentType: string, body: string) => {
      res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body) });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (
      settings.authToken !== undefined &&
      !OPEN_ADMIN_PATHS.has(path) &&
      !bearerMatches(req.headers.authorization, settings.authToken)
    ) {
      send(401, 'application/json', JSON.stringify({ error: 'missing or wrong bearer token' }));
      return;
    }
    if (path === '/healthz') return send(200, 'application/json', '{"status":"ok"}');
    if (path === '/readyz') {
      const ready = admin?.ready ? admin.ready() : true;
      return send(
        ready ? 200 : 503,
        'application/json',
        ready ? '{"status":"ready"}' : '{"status":"not ready"}',
      );
    }
    if (!admin?.metrics) return send(404, 'application/json', '{"error":"metrics are not enabled"}');
    try {
      const m = await admin.metrics();
      send(200, m.contentType, m.body);
    } catch (err) {
      log.once('admin-metrics', 'error', 'metrics collection failed', { error: (err as Error).message });
      send(500, 'application/json', '{"error":"metrics collection failed"}');
    }
  }

  const limits = settings.limits;
  const server = http.createServer(
    {
      keepAliveTimeout: limits.clientKeepAliveTimeoutMs,
      // Slowloris: a client must send its headers within headersTimeout and its whole request
      // (body included) within requestTimeout. Neither limits the response, which may stream for
      // minutes. requestTimeout 0 would also switch headersTimeout off, so it is never 0 here.
      headersTimeout: limits.clientHeaderTimeoutMs,
      requestTimeout: limits.clientRequestTimeoutMs,
      connectionsCheckingInterval: Math.max(
        50,
        Math.min(30_000, Math.floor(limits.clientHeaderTimeoutMs / 4)),
      ),
    },
    (req, res) => {
      const url = originForm(req.url ?? '/');
      if (url === undefined) return answerTargetWithoutPath(req, res);
      req.url = url; // an absolute-form target goes on as its path (docs/proxy.md)
      const q = url.indexOf('?');
      const pathOnly = q === -1 ? url : url.slice(0, q);
      if ((req.method === 'GET' || req.method === 'HEAD') && ADMIN_PATHS.has(pathOnly)) {
        void serveAdmin(req, res, pathOnly);
        return;
      }
      if (pathOnly.startsWith(CONSOLE_PREFIX)) {
        if (admin?.console) admin.console(req, res);
        else {
          res.writeHead(404, { 'content-type': 'application/json' });
          res.end('{"error":"the console is not enabled"}');
        }
        return;
      }
      void new Exchange(ctx, req, res, Date.now()).run();
    },
  );
  // WebSocket upgrades (OpenAI Realtime): one WsSession each (./websocket.ts, docs/proxy.md).
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    // Node takes its own 'error' listener off the socket before it emits 'upgrade': without one a
    // client's reset (ECONNRESET, EPIPE) on any of the paths below would stop the process. A
    // socket error ends that connection only; whoever owns it sees its 'close'.
    socket.on('error', () => socket.destroy());
    const url = originForm(req.url ?? '/');
    if (url === undefined) {
      answerRawJson(socket, 400, BAD_TARGET_BODY);
      return;
    }
    req.url = url;
    const q = url.indexOf('?');
    const pathOnly = q === -1 ? url : url.slice(0, q);
    if (!isWebSocketUpgrade(req)) {
      serveIgnoringUpgrade(server, req, socket, head);
      return;
    }
    if (ADMIN_PATHS.has(pathOnly) || pathOnly.startsWith(CONSOLE_PREFIX)) {
      const body = '{"error":"no WebSocket on tokenmeter\'s own paths"}';
      answerRawJson(socket, 404, body);
      return;
    }
    new WsSession(ctx, req, socket, head, Date.now()).run();
  });
  server.maxConnections = limits.maxConnections;
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  server.on('drop', () => {
    log.once('proxy-max-connections', 'warn', 'connection refused: limits.max_connections reached', {
      max_connections: limits.maxConnections,
    });
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    // 408 for a client too slow to send its request (headersTimeout / requestTimeout).
    const status = err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : '400 Bad Request';
    // Destroyed once the answer is flushed: a client that keeps dribbling bytes must not keep a
    // half-closed socket alive.
    socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`, () =>
      socket.destroy(),
    );
  });

  return {
    server,
    inflight: () => inflight.size,
    inflightByUpstream: () => inflight.perUpstream(),
    listen() {
      return new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(settings.port, settings.host, () => {
          server.off('error', reject);
          resolve(server.address() as AddressInfo);
        });
      });
    },
    async close(graceMs) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      await inflight.idle(graceMs);
      // Whatever is still streaming after the grace period is cut (recorded as client_abort),
      // open WebSocket sessions included: their client sockets are in `sockets`, and a session
      // whose client socket closes cuts its upstream and ends with its record.
      server.closeAllConnections();
      for (const s of sockets) s.destroy();
      // The cut exchanges end on their sockets' close events; their records follow shortly.
      await inflight.idle(1000);
      await closed;
      agents.destroy();
      await pools.destroy();
    },
  };
}
