/**
 * The proxy (DESIGN.md §3, §12): a node:http server that forwards every method and path to the
 * chosen upstream byte for byte, streams responses as bytes arrive, and drives the Meter seam with a
 * copy. Traffic first: nothing on the response path awaits metering, and `finish` is called exactly
 * once for every request that reached `meter.begin`.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { timingSafeEqual } from 'node:crypto';
import type { Settings, UpstreamSettings } from '../config/types.js';
import type { Logger } from '../log.js';
import { inspectRequest } from '../meter/inspect.js';
import type { Meter, MeterOutcome, RequestInfo, RequestMeter } from '../meter/types.js';
import { joinUpstreamPath } from './path-join.js';
import { createRouter } from './router.js';
import {
  canRecode,
  EncodedUsageChunkStripper,
  injectUsageOption,
  shouldInjectUsage,
  UsageChunkStripper,
} from './usage-injection.js';

export interface AdminHooks {
  metrics?: () => Promise<{ contentType: string; body: string }>;
  ready?: () => boolean;
}

export interface ProxyServerOptions {
  settings: Settings;
  meter: Meter;
  log: Logger;
  admin?: AdminHooks;
}

export interface ProxyServer {
  server: http.Server;
  listen(): Promise<AddressInfo>;
  /** Stop accepting, let in-flight requests finish for up to graceMs, then cut the rest. */
  close(graceMs: number): Promise<void>;
  /** Requests currently being proxied (for drain and tests). */
  inflight(): number;
}

/**
 * RFC 9110 §7.6.1 connection-specific fields, plus the legacy ones every proxy drops. `expect` is
 * dropped too: node:http already answered `100 Continue` to the client.
 */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

const ADMIN_PATHS = new Set(['/healthz', '/readyz', '/metrics']);

/** Filters a rawHeaders array: hop-by-hop names, names listed in Connection, and `drop(name)`. */
function forwardableHeaders(raw: string[], drop: (lower: string) => boolean): string[] {
  const listed = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === 'connection')
      for (const n of raw[i + 1]!.split(',')) listed.add(n.trim().toLowerCase());
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase();
    if (HOP_BY_HOP.has(lower) || listed.has(lower) || drop(lower)) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

/** Error body shaped like the endpoint's own errors so SDKs parse it (OpenAI vs Anthropic). */
export function endpointError(
  path: string,
  status: number,
  type: string,
  message: string,
): { status: number; headers: Record<string, string>; body: string } {
  const anthropic = /\/messages(\/|$)/.test(path);
  const body = anthropic
    ? JSON.stringify({ type: 'error', error: { type, message } })
    : JSON.stringify({ error: { message, type, code: type } });
  return {
    status,
    headers: { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) },
    body,
  };
}

function bearerMatches(header: string | undefined, token: string): boolean {
  if (!header?.startsWith('Bearer ')) return false;
  const given = Buffer.from(header.slice(7));
  const want = Buffer.from(token);
  return given.length === want.length && timingSafeEqual(given, want);
}

type Agents = Map<string, http.Agent>;

function agentFor(agents: Agents, upstream: UpstreamSettings): http.Agent {
  let agent = agents.get(upstream.name);
  if (!agent) {
    const opts: http.AgentOptions = {
      keepAlive: true,
      keepAliveMsecs: 1000,
      maxFreeSockets: 256,
      scheduling: 'lifo',
      // Close pooled sockets before common upstream keep-alive timeouts (Node servers: 5 s), so a
      // reused socket is rarely one the upstream is closing at that moment.
      timeout: 4000,
    };
    // https.Agent verifies certificates by default (rejectUnauthorized true); never turned off.
    agent = upstream.url.protocol === 'https:' ? new https.Agent(opts) : new http.Agent(opts);
    agents.set(upstream.name, agent);
  }
  return agent;
}

/** Reads the request body up to `cap` bytes. Returns what was read and whether the cap was hit. */
function bufferBody(
  req: IncomingMessage,
  cap: number,
): Promise<{ chunks: Buffer[]; bytes: number; overCap: boolean } | undefined> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let bytes = 0;
    const done = (overCap: boolean) => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
      resolve({ chunks, bytes, overCap });
    };
    const onData = (c: Buffer) => {
      chunks.push(c);
      bytes += c.length;
      if (bytes > cap) {
        req.pause();
        done(true);
      }
    };
    const onEnd = () => done(false);
    const onError = () => {
      cleanup();
      resolve(undefined);
    };
    const onClose = () => {
      if (!req.complete) {
        cleanup();
        resolve(undefined);
      }
    };
    const cleanup = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('close', onClose);
  });
}

function isJsonish(req: IncomingMessage): boolean {
  const ct = req.headers['content-type'];
  return ct === undefined || /json/i.test(ct);
}

export function createProxyServer(opts: ProxyServerOptions): ProxyServer {
  const { settings, meter, log, admin } = opts;
  const router = createRouter(settings);
  const agents: Agents = new Map();
  const maxBody = settings.limits.maxRequestBody;
  let inflight = 0;
  let drainWaiters: Array<() => void> = [];
  const sockets = new Set<Socket>();

  const requestDone = () => {
    inflight--;
    if (inflight === 0) {
      const w = drainWaiters;
      drainWaiters = [];
      for (const f of w) f();
    }
  };

  async function serveAdmin(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    const send = (status: number, contentType: string, body: string) => {
      res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body) });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (settings.authToken !== undefined && !bearerMatches(req.headers.authorization, settings.authToken)) {
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

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const pathOnly = q === -1 ? url : url.slice(0, q);
    if ((req.method === 'GET' || req.method === 'HEAD') && ADMIN_PATHS.has(pathOnly)) {
      await serveAdmin(req, res, pathOnly);
      return;
    }

    // 1. Body: buffer JSON bodies up to the cap to learn model/stream/operation (§3.3).
    const method = req.method ?? 'GET';
    const declaredLength =
      req.headers['content-length'] !== undefined ? Number(req.headers['content-length']) : undefined;
    const hasBody =
      (declaredLength !== undefined && declaredLength > 0) || req.headers['transfer-encoding'] !== undefined;
    let bodyChunks: Buffer[] = [];
    let bodyBytes = 0;
    let streamRest = false; // the rest of req must be piped (too large, or not JSON)
    let tooLarge = false;
    if (
      hasBody &&
      method === 'POST' &&
      isJsonish(req) &&
      !(declaredLength !== undefined && declaredLength > maxBody)
    ) {
      const got = await bufferBody(req, maxBody);
      if (!got) return; // client went away while uploading: nothing begun, nothing to record
      bodyChunks = got.chunks;
      bodyBytes = got.bytes;
      if (got.overCap) {
        streamRest = true;
        tooLarge = true;
      }
    } else if (hasBody) {
      streamRest = true;
      tooLarge = method === 'POST' && isJsonish(req);
    }
    const body = !streamRest && bodyChunks.length > 0 ? Buffer.concat(bodyChunks) : undefined;
    const info: RequestInfo = inspectRequest(method, pathOnly, body, tooLarge);

    // 2. Route, rewrite (§3.3), begin metering.
    const choice = router.pick(url, info.model);
    const upstream = choice.upstream;
    let outBody: Buffer | undefined = body;
    let injected = false;
    if (body && shouldInjectUsage(info, upstream)) {
      outBody = injectUsageOption(body, info.body as Record<string, unknown>);
      injected = true;
    }
    const targetPath = joinUpstreamPath(upstream.url, choice.path);
    const cq = choice.path.indexOf('?');
    let rm: RequestMeter;
    try {
      rm = meter.begin({
        method,
        path: cq === -1 ? choice.path : choice.path.slice(0, cq),
        headers: req.headers,
        upstream: upstream.name,
        upstreamUrl: new URL(targetPath, upstream.url),
        routeApp: choice.routeApp,
        info,
        requestBytes: declaredLength ?? bodyBytes,
        injectedUsage: injected,
      });
    } catch (err) {
      // The meter must not throw; if it does, traffic still flows unmetered.
      log.once('meter-begin', 'error', 'meter.begin failed; forwarding unmetered', {
        error: (err as Error).message,
      });
      rm = NOOP_REQUEST_METER;
    }
    inflight++;
    let finished = false;
    const finish = (outcome: MeterOutcome) => {
      if (finished) return;
      finished = true;
      requestDone();
      try {
        rm.finish(outcome);
      } catch (err) {
        log.once('meter-finish', 'error', 'meter.finish failed', { error: (err as Error).message });
      }
    };

    if (rm.rejection) {
      const r = rm.rejection;
      res.writeHead(r.status, r.headers);
      res.end(r.body);
      finish({ kind: 'rejected' });
      if (streamRest) req.resume();
      return;
    }

    // 3. Upstream request headers.
    const headers = forwardableHeaders(
      req.rawHeaders,
      (h) =>
        h === 'host' ||
        h === 'expect' ||
        h.startsWith('x-tokenmeter-') ||
        (outBody !== body && h === 'content-length'),
    );
    const override: Record<string, string> = { ...upstream.headers, ...rm.upstreamHeaders };
    if (injected) {
      // We must be able to read and edit the SSE stream, so ask for it unencoded on injected requests only.
      override['accept-encoding'] = 'identity';
      override['content-length'] = String(outBody!.length);
    }
    const overrideNames = new Set(Object.keys(override).map((k) => k.toLowerCase()));
    const finalHeaders: string[] = ['Host', upstream.url.host];
    for (let i = 0; i < headers.length; i += 2)
      if (!overrideNames.has(headers[i]!.toLowerCase())) finalHeaders.push(headers[i]!, headers[i + 1]!);
    for (const [k, v] of Object.entries(override)) finalHeaders.push(k, v);

    const isHttps = upstream.url.protocol === 'https:';
    let bytesToClient = false;
    let upReq: http.ClientRequest | undefined;
    let idleTimer: NodeJS.Timeout | undefined;
    let connectTimer: NodeJS.Timeout | undefined;
    const clearTimers = () => {
      if (idleTimer) clearTimeout(idleTimer);
      if (connectTimer) clearTimeout(connectTimer);
      idleTimer = connectTimer = undefined;
    };

    const failBeforeBytes = (status: number, type: string, message: string) => {
      if (!res.headersSent) {
        const e = endpointError(pathOnly, status, type, message);
        res.writeHead(e.status, e.headers);
        res.end(e.body);
      } else {
        // Bytes already went out: a clean end would make a truncated stream look complete.
        res.destroy();
      }
    };

    const onTimeout = (phase: 'connect' | 'idle') => {
      if (finished) return;
      clearTimers();
      upReq?.destroy();
      const ms = phase === 'connect' ? upstream.connectTimeoutMs : upstream.idleTimeoutMs;
      failBeforeBytes(
        504,
        'timeout',
        `tokenmeter: upstream "${upstream.name}" ${phase} timeout after ${ms} ms`,
      );
      finish({ kind: 'timeout', phase });
    };
    const armIdle = () => {
      if (idleTimer) idleTimer.refresh();
      else idleTimer = setTimeout(() => onTimeout('idle'), upstream.idleTimeoutMs);
    };

    // Client gone: abort the upstream at once so no generation keeps billing (§3.2).
    res.on('close', () => {
      if (finished || res.writableFinished) return;
      clearTimers();
      upReq?.destroy();
      finish({ kind: 'client_abort' });
    });

    const send = (attempt: number) => {
      const r = (isHttps ? https : http).request({
        protocol: upstream.url.protocol,
        hostname: upstream.url.hostname.replace(/^\[|\]$/g, ''),
        port: upstream.url.port || (isHttps ? 443 : 80),
        method,
        path: targetPath,
        headers: finalHeaders,
        agent: agentFor(agents, upstream),
        setHost: false,
      });
      upReq = r;
      connectTimer = setTimeout(() => onTimeout('connect'), upstream.connectTimeoutMs);
      r.on('socket', (s: Socket) => {
        const connected = () => {
          if (connectTimer) clearTimeout(connectTimer);
          connectTimer = undefined;
          if (!finished) armIdle();
        };
        if (s.connecting) s.once(isHttps ? 'secureConnect' : 'connect', connected);
        else connected();
      });
      r.on('error', (err: NodeJS.ErrnoException) => {
        if (finished) return;
        clearTimers();
        if (upResStarted) return; // handled by the response's close
        // A pooled keep-alive socket the upstream closed just as we reused it: retry once when the
        // body is in memory (nothing of it could have been processed by the upstream).
        if (
          r.reusedSocket &&
          attempt === 0 &&
          !streamRest &&
          (err.code === 'ECONNRESET' || err.code === 'EPIPE')
        ) {
          send(1);
          return;
        }
        log.warn('upstream unreachable', { upstream: upstream.name, code: err.code ?? 'error' });
        failBeforeBytes(
          502,
          'upstream_unreachable',
          `tokenmeter: cannot reach upstream "${upstream.name}" (${err.code ?? 'network error'})`,
        );
        finish({ kind: 'network', message: err.code ?? err.message });
      });
      r.on('response', onResponse);
      if (streamRest) {
        for (const c of bodyChunks) r.write(c);
        req.pipe(r);
        req.resume();
      } else r.end(outBody);
    };

    let upResStarted = false;
    const onResponse = (upRes: IncomingMessage) => {
      if (finished) {
        upRes.destroy();
        return;
      }
      upResStarted = true;
      armIdle();
      const status = upRes.statusCode ?? 502;
      const ct = upRes.headers['content-type'] ?? '';
      const strippable = injected && status >= 200 && status < 300 && /text\/event-stream/i.test(ct);
      const encoding = String(upRes.headers['content-encoding'] ?? '')
        .trim()
        .toLowerCase();
      const stripper =
        strippable && (encoding === '' || encoding === 'identity') ? new UsageChunkStripper() : undefined;
      let recoder: EncodedUsageChunkStripper | undefined;
      if (strippable && !stripper) {
        if (canRecode(encoding)) {
          recoder = new EncodedUsageChunkStripper(
            encoding,
            (bytes) => {
              if (!write(bytes)) pauseForDrain();
            },
            () => {
              if (finished) return;
              clearTimers();
              res.destroy();
              finish({ kind: 'upstream_reset', message: `undecodable ${encoding} stream` });
            },
          );
        } else
          // Constant key: the encoding comes from the upstream, so keying on it could grow the set.
          log.once(
            'unstrippable-encoding',
            'warn',
            'cannot remove the injected usage chunk from this encoding',
            {
              upstream: upstream.name,
              encoding: encoding.slice(0, 32),
            },
          );
      }
      try {
        rm.onResponseHead(status, upRes.headers);
      } catch (err) {
        log.once('meter-head', 'error', 'meter.onResponseHead failed', { error: (err as Error).message });
      }
      const outHeaders = forwardableHeaders(
        upRes.rawHeaders,
        // Both the stripper and the re-encoder change the body's length: the upstream's is wrong then.
        (h) => (stripper !== undefined || recoder !== undefined) && h === 'content-length',
      );
      res.sendDate = false; // pass the upstream's Date (or none), add nothing of our own
      res.writeHead(status, upRes.statusMessage, outHeaders);
      // Send the head on its own only if no body byte follows within this turn of the event loop
      // (an SSE head before a slow first token); otherwise it leaves with the first chunk in one write.
      setImmediate(() => {
        if (!bytesToClient && !res.destroyed && !finished) res.flushHeaders();
      });

      const write = (b: Buffer): boolean => {
        if (b.length === 0) return true;
        const ok = res.write(b);
        if (!bytesToClient) {
          bytesToClient = true;
          try {
            rm.onFirstByteToClient();
          } catch {
            /* the meter counts its own failures */
          }
        }
        return ok;
      };
      res.once('close', () => recoder?.destroy());
      const pauseForDrain = () => {
        // Backpressure: a slow reader pauses the upstream read; that is not upstream idleness.
        if (upRes.isPaused()) return;
        upRes.pause();
        if (idleTimer) clearTimeout(idleTimer);
        idleTimer = undefined;
        res.once('drain', () => {
          if (finished) return;
          armIdle();
          upRes.resume();
        });
      };
      upRes.on('data', (chunk: Buffer) => {
        if (finished) return;
        armIdle();
        let ok = true;
        if (stripper) for (const part of stripper.push(chunk)) ok = write(part) && ok;
        else if (recoder) recoder.push(chunk);
        else ok = write(chunk);
        try {
          rm.onResponseChunk(chunk);
        } catch {
          /* the meter counts its own failures */
        }
        if (!ok) pauseForDrain();
      });
      upRes.on('end', () => {
        if (finished) return;
        clearTimers();
        const complete = () => {
          if (finished) return;
          res.end();
          finish({ kind: 'complete' });
        };
        if (stripper) for (const part of stripper.flush()) write(part);
        if (recoder) recoder.end(complete);
        else complete();
      });
      upRes.on('error', () => {
        /* reported through 'close' below */
      });
      upRes.on('close', () => {
        if (finished || upRes.complete) return;
        clearTimers();
        // The client connection was already gone (close() cut it after the shutdown grace, or the
        // client left and its 'close' event is still queued): the upstream closing now is a
        // consequence, so this is a client_abort, not an upstream fault (docs/proxy.md, Shutdown).
        if (req.socket.destroyed) {
          finish({ kind: 'client_abort' });
          return;
        }
        res.destroy();
        finish({ kind: 'upstream_reset', message: 'upstream closed the connection mid-response' });
      });
    };

    try {
      send(0);
    } catch (err) {
      // A synchronous failure building the upstream request (e.g. an invalid configured header
      // value) must still answer the client and finish the record, or inflight counts leak.
      const message = `cannot send to upstream ${upstream.name}: ${(err as Error).message}`;
      clearTimers();
      failBeforeBytes(502, 'upstream_error', message);
      finish({ kind: 'network', message });
    }
  }

  const server = http.createServer({ keepAliveTimeout: 5000, requestTimeout: 0 }, (req, res) => {
    handle(req, res).catch((err: unknown) => {
      log.once('proxy-handler', 'error', 'proxy handler failed', { error: (err as Error).message });
      if (!res.headersSent) {
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end('{"error":{"message":"tokenmeter internal error","type":"internal_error"}}');
      } else res.destroy();
    });
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  server.on('clientError', (_err, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    else socket.destroy();
  });

  return {
    server,
    inflight: () => inflight,
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
      if (inflight > 0) {
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, graceMs);
          drainWaiters.push(() => {
            clearTimeout(t);
            resolve();
          });
        });
      }
      // Whatever is still streaming after the grace period is cut (recorded as client_abort).
      server.closeAllConnections();
      for (const s of sockets) s.destroy();
      await closed;
      for (const a of agents.values()) a.destroy();
    },
  };
}

const NOOP_REQUEST_METER: RequestMeter = {
  upstreamHeaders: {},
  onResponseHead() {},
  onResponseChunk() {},
  onFirstByteToClient() {},
  finish() {},
};
