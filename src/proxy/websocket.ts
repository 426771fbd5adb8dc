/**
 * WebSocket pass-through (DESIGN.md §3.1; the OpenAI Realtime API, `GET /v1/realtime?model=…` with
 * `Upgrade: websocket`). One `WsSession` per upgrade request, from the request head to its one
 * record, driven like an `Exchange` (./exchange.ts): the same router, path join, header rules,
 * upstream agents and timeouts, the same meter (`begin` → `RequestMeter` → `finish(outcome)`) and
 * the same one in-flight count, which covers the whole session.
 *
 * Bytes first: after the upstream's `101`, its head is written to the client as received and the
 * two sockets are joined both ways, bytes unchanged, with backpressure (a slow reader pauses the
 * other side's socket). The meter gets a copy of the server→client bytes after they were written
 * (src/meter/ws-session.ts reads them as messages). A non-101 answer is forwarded as a normal HTTP
 * response and recorded. Why not http-proxy-middleware's `ws` support: docs/proxy.md.
 */
import http, { type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { UpstreamSettings } from '../config/types.js';
import { MAX_MODEL_CHARS } from '../meter/inspect.js';
import type { MeterOutcome, RequestInfo, RequestMeter } from '../meter/types.js';
import type { Operation } from '../record.js';
import type { ProxyContext } from './context.js';
import {
  endpointError,
  forwardableHeaders,
  openUpstreamRequest,
  forwardableReason,
  unreachableMessage,
} from './http-util.js';
import { joinUpstreamPath } from './path-join.js';

/**
 * connecting: upstream request under way, no answer yet · rejected: answered by tokenmeter
 * (budget, bad upgrade) · responding: a non-101 answer is being forwarded · open: joined after the
 * 101 · ended: the end step ran (the record is on its way).
 */
export type WsSessionState = 'connecting' | 'rejected' | 'responding' | 'open' | 'ended';

/** After one side ended the session, the other gets this long to finish closing before both are cut. */
const LINGER_MS = 2000;
/** Client bytes held before the 101; a client sending more than this before the switch is cut. */
const EARLY_CAP = 1024 * 1024;

/** The operation of an upgrade request: a Realtime session, or any other WebSocket (passed through, no usage). */
export function wsOperationFor(path: string): Operation {
  return /\/realtime\/?$/.test(path) ? 'realtime' : 'other';
}

/** True when the request asks for a WebSocket (RFC 6455 §4.1): GET with `Upgrade: websocket`. */
export function isWebSocketUpgrade(req: IncomingMessage): boolean {
  return req.method === 'GET' && String(req.headers.upgrade ?? '').toLowerCase() === 'websocket';
}

/** Writes a complete HTTP/1.1 response on a raw socket and closes it once flushed. */
export function answerRaw(
  socket: Duplex,
  status: number,
  headers: Record<string, string>,
  body: string,
): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  let head = `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ''}\r\n`;
  for (const [k, v] of Object.entries(headers)) head += `${k}: ${v}\r\n`;
  head += 'Connection: close\r\n\r\n';
  socket.end(head + body, () => socket.destroy());
}

/** `answerRaw` with a JSON body. */
export function answerRawJson(socket: Duplex, status: number, body: string): void {
  answerRaw(
    socket,
    status,
    { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) },
    body,
  );
}

export class WsSession {
  state: WsSessionState = 'connecting';
  /** The upstream this session counts under in the in-flight gauge, once known. */
  upstreamName: string | undefined;
  /** Counted in the in-flight gauge now (managed by `Inflight`, proxy/context.ts). */
  inflight = false;
  /** Held for drain while the request is read (managed by `Inflight`). */
  pending = false;

  private meter: RequestMeter | undefined;
  private upstream!: UpstreamSettings;
  private upReq: http.ClientRequest | undefined;
  private upSocket: Duplex | undefined;
  private headTimer: NodeJS.Timeout | undefined;
  private lingerTimer: NodeJS.Timeout | undefined;
  /** The upgrade request reached the upstream's socket. */
  private sent = false;
  /** Client→server bytes after the request head (the record's request_bytes). */
  private clientBytes = 0;
  /** Client bytes that arrived before the 101 (a client must wait, but one may not): kept, capped. */
  private early: Buffer[] = [];
  private earlyBytes = 0;
  private readonly pathOnly: string;

  constructor(
    private readonly ctx: ProxyContext,
    private readonly req: IncomingMessage,
    private readonly client: Duplex,
    private readonly head: Buffer,
    private readonly startedAt: number,
  ) {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    this.pathOnly = q === -1 ? url : url.slice(0, q);
  }

  /** Runs the session; never throws (an internal failure answers 500 if it can and still records). */
  run(): void {
    this.client.on('error', () => this.clientGone());
    this.client.on('close', () => this.clientGone());
    this.client.on('end', () => this.clientGone());
    // Flowing from the start, so a client that leaves before the 101 is seen at once.
    this.client.on('data', this.onEarlyData);
    try {
      this.begin();
    } catch (err) {
      // A session that failed before metering began still gets its one record (§3.4).
      const fallback = this.ctx.settings.upstreams[0];
      if (!this.meter && fallback)
        this.startMetering(
          fallback,
          this.pathOnly,
          undefined,
          requestInfo(this.pathOnly, this.req.url ?? '/'),
        );
      this.crash(err);
    }
  }

  /**
   * An exception of tokenmeter's own (a bug), at the start or in an event callback (where it would
   * stop the process): a 500 if nothing was sent to the client yet, else both sockets cut; the
   * record says internal_error and tokenmeter_internal_errors_total{component="proxy"} counts it,
   * as an HTTP exchange's does.
   */
  private crash(err: unknown): void {
    if (this.state === 'ended') return;
    const message = err instanceof Error ? err.message : String(err);
    this.ctx.health.internalError('proxy');
    this.ctx.log.once('proxy-websocket', 'error', 'websocket session failed; it was answered 500 or cut', {
      error: message,
    });
    this.upReq?.destroy(); // after a 101 too: its socket is still the request's
    this.upSocket?.destroy();
    if (this.state === 'rejected') this.client.destroy();
    else this.fail(500, 'internal_error', 'tokenmeter internal error');
    this.end({ kind: 'internal', message });
  }

  private readonly onEarlyData = (chunk: Buffer): void => {
    this.earlyBytes += chunk.length;
    if (this.earlyBytes > EARLY_CAP) {
      this.clientGone();
      return;
    }
    this.early.push(chunk);
  };

  private begin(): void {
    const { ctx, req } = this;
    const url = req.url ?? '/';
    const info = requestInfo(this.pathOnly, url);
    const choice = ctx.router.pick(url, info.model);
    const rejection = this.startMetering(choice.upstream, choice.path, choice.routeApp, info).rejection;
    if (rejection) {
      // A session's cost cannot be bounded up front; the meter reserved (or refused) like an HTTP
      // request's bound. Refused: no upgrade (docs/proxy.md, "WebSocket (Realtime)").
      this.state = 'rejected';
      const e = endpointError(
        this.pathOnly,
        rejection.status,
        rejection.type,
        rejection.message,
        rejection.headers,
      );
      answerRaw(this.client, e.status, e.headers, e.body);
      this.end({ kind: 'rejected' });
      return;
    }
    this.send(joinUpstreamPath(choice.upstream.url, choice.path), this.upstreamHeaders(), 0);
  }

  /** Counts the session in flight for its upstream and begins its meter. */
  private startMetering(
    upstream: UpstreamSettings,
    path: string,
    routeApp: string | undefined,
    info: RequestInfo,
  ): RequestMeter {
    this.upstream = upstream;
    this.upstreamName = upstream.name;
    this.ctx.inflight.add(this);
    const q = path.indexOf('?');
    this.meter = this.ctx.meter.begin({
      method: 'GET',
      path: q === -1 ? path : path.slice(0, q),
      headers: this.req.headers,
      upstream: upstream.name,
      upstreamUrl: upstream.url,
      routeApp,
      info,
      requestBytes: 0,
      injectedUsage: false,
      tsStart: this.startedAt,
    });
    return this.meter;
  }

  private upstreamHeaders(): string[] {
    const headers = forwardableHeaders(
      this.req.rawHeaders,
      (h) => h === 'host' || h === 'expect' || h.startsWith('x-tokenmeter-'),
    );
    const override: Record<string, string> = { ...this.upstream.headers, ...this.meter!.upstreamHeaders };
    const overrideNames = new Set(Object.keys(override).map((k) => k.toLowerCase()));
    // The upgrade itself is hop-by-hop but is what this request is: sent as the client asked.
    const upgrade = String(this.req.headers.upgrade);
    const out: string[] = ['Host', this.upstream.url.host, 'Connection', 'Upgrade', 'Upgrade', upgrade];
    for (let i = 0; i < headers.length; i += 2)
      if (!overrideNames.has(headers[i]!.toLowerCase())) out.push(headers[i]!, headers[i + 1]!);
    for (const [k, v] of Object.entries(override)) out.push(k, v);
    return out;
  }

  private send(targetPath: string, headers: string[], attempt: number): void {
    const upstream = this.upstream;
    let r: http.ClientRequest;
    try {
      r = openUpstreamRequest(upstream, this.ctx.agentFor(upstream), 'GET', targetPath, headers, {
        timeoutMs: upstream.connectTimeoutMs,
        onTimeout: () => this.onTimeout('connect'),
      });
    } catch (err) {
      const message = `cannot send to upstream ${upstream.name}: ${(err as Error).message}`;
      this.fail(502, 'upstream_error', message);
      this.end({ kind: 'network', message });
      return;
    }
    this.upReq = r;
    r.on('finish', () => {
      this.sent = true;
      // Waiting for the 101 (or an error answer) is the upstream's time: its idle timeout applies.
      this.headTimer = setTimeout(() => this.onTimeout('idle'), upstream.idleTimeoutMs);
    });
    r.on('error', (err: NodeJS.ErrnoException) => {
      if (this.state !== 'connecting') return; // after the answer: the sockets' own events report it
      this.clearTimers();
      // A pooled keep-alive socket the upstream closed as we reused it: the GET carried no body and
      // nothing was answered, so it is re-sent once (as the HTTP path does for GET, §3.1).
      if (r.reusedSocket && attempt === 0 && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) {
        this.send(targetPath, headers, 1);
        return;
      }
      this.ctx.log.warn('upstream unreachable', { upstream: upstream.name, code: err.code ?? 'error' });
      this.fail(502, 'upstream_unreachable', unreachableMessage(upstream, err));
      this.end({ kind: 'network', message: err.code ?? err.message, reachedUpstream: this.sent });
    });
    // Event callbacks: an exception of ours in them is this session's `crash`, never the process's.
    r.on('upgrade', (upRes: IncomingMessage, upSocket: Duplex, upHead: Buffer) => {
      try {
        this.onUpgrade(upRes, upSocket, upHead);
      } catch (err) {
        this.crash(err);
      }
    });
    r.on('response', (upRes: IncomingMessage) => {
      try {
        this.onRefused(upRes);
      } catch (err) {
        this.crash(err);
      }
    });
    r.end();
  }

  /** The upstream switched protocols: hand its 101 on and join the sockets. */
  private onUpgrade(upRes: IncomingMessage, upSocket: Duplex, upHead: Buffer): void {
    this.clearTimers();
    if (this.state !== 'connecting') {
      upSocket.destroy();
      return;
    }
    this.state = 'open';
    this.upSocket = upSocket;
    const { client, meter } = this;
    // Node hands over a 101 here only: its status line is valid, its reason phrase may not be.
    let head = this.statusLine(upRes, 101) as string;
    // The 101's headers as received, minus hop-by-hop fields other than the upgrade's own.
    const raw = forwardableHeaders(upRes.rawHeaders, () => false, { keepUpgrade: true });
    for (let i = 0; i < raw.length; i += 2) head += `${raw[i]}: ${raw[i + 1]}\r\n`;
    client.write(head + '\r\n');
    this.metering(() => meter!.onResponseHead(upRes.statusCode ?? 101, upRes.headers));
    for (const s of [client, upSocket] as Socket[]) {
      s.setNoDelay?.(true);
      s.setTimeout?.(0);
    }
    upSocket.on('error', () => this.upstreamGone());
    upSocket.on('end', () => this.upstreamGone());
    upSocket.on('close', () => this.upstreamGone());
    this.join(upSocket, client, (chunk) => this.metering(() => meter!.onResponseChunk(chunk)));
    this.join(client, upSocket, (chunk) => {
      this.clientBytes += chunk.length;
    });
    if (upHead.length > 0) {
      client.write(upHead);
      this.metering(() => meter!.onResponseChunk(upHead));
    }
    this.client.off('data', this.onEarlyData);
    for (const early of [this.head, ...this.early]) {
      if (early.length === 0) continue;
      this.clientBytes += early.length;
      upSocket.write(early);
    }
    this.early = [];
  }

  /** Copies `from` → `to` unchanged: bytes first, then `observe` sees them; a full `to` pauses `from`. */
  private join(from: Duplex, to: Duplex, observe: (chunk: Buffer) => void): void {
    from.on('data', (chunk: Buffer) => {
      if (this.state === 'ended') return;
      const ok = to.write(chunk);
      observe(chunk);
      if (!ok && !from.isPaused()) {
        from.pause();
        to.once('drain', () => from.resume());
      }
    });
    from.resume();
  }

  /** The upstream refused the upgrade (401, 403, 429 …): its answer goes to the client as is, and is recorded. */
  private onRefused(upRes: IncomingMessage): void {
    this.clearTimers();
    if (this.state !== 'connecting') {
      upRes.destroy();
      return;
    }
    const status = upRes.statusCode ?? 502;
    const line = this.statusLine(upRes, status);
    if (line instanceof Error) {
      // Written as received, the client could not parse it: a 502 naming it instead, recorded.
      upRes.destroy();
      const message = `invalid response head: ${line.message}`;
      this.fail(502, 'upstream_error', `tokenmeter: upstream "${this.upstream.name}": ${message}`);
      this.end({ kind: 'upstream_reset', message, reachedUpstream: true });
      return;
    }
    this.state = 'responding';
    const { client, meter } = this;
    let head = line;
    const raw = forwardableHeaders(upRes.rawHeaders, () => false);
    for (let i = 0; i < raw.length; i += 2) head += `${raw[i]}: ${raw[i + 1]}\r\n`;
    // The body's end is the connection's end (its length, if stated, still stands).
    client.write(head + 'Connection: close\r\n\r\n');
    this.metering(() => meter!.onResponseHead(status, upRes.headers));
    upRes.on('data', (chunk: Buffer) => {
      if (this.state === 'ended') return;
      if (!client.write(chunk)) {
        upRes.pause();
        client.once('drain', () => upRes.resume());
      }
      this.metering(() => meter!.onResponseChunk(chunk));
    });
    upRes.on('end', () => {
      if (this.state === 'ended') return;
      client.end(() => client.destroy());
      this.end({ kind: 'complete' });
    });
    upRes.on('error', () => {
      /* reported through 'close' below */
    });
    upRes.on('close', () => {
      if (this.state === 'ended' || upRes.complete) return;
      client.destroy();
      this.end({ kind: 'upstream_reset', message: 'upstream closed the connection mid-response' });
    });
  }

  /** The status line for the upstream's answer, or why it cannot be sent (as on the HTTP path). */
  private statusLine(upRes: IncomingMessage, status: number): string | Error {
    const reason = forwardableReason(this.ctx.log, this.upstream.name, status, upRes.statusMessage);
    return reason instanceof Error ? reason : `HTTP/1.1 ${status} ${reason}\r\n`;
  }

  /** The client's socket ended, closed or failed: the upstream is cut at once (no orphaned session). */
  private clientGone(): void {
    if (this.state === 'ended' || this.state === 'rejected') return;
    this.upReq?.destroy();
    this.upSocket?.destroy();
    this.client.destroy();
    this.end({ kind: 'client_abort', reachedUpstream: this.sent });
  }

  /** The upstream's socket ended or failed: what it sent is flushed to the client, which is then closed. */
  private upstreamGone(): void {
    if (this.state === 'ended') return;
    this.client.end();
    this.upSocket?.end();
    this.lingerTimer = setTimeout(() => {
      this.client.destroy();
      this.upSocket?.destroy();
    }, LINGER_MS);
    this.lingerTimer.unref();
    this.client.once('close', () => {
      if (this.lingerTimer) clearTimeout(this.lingerTimer);
      this.upSocket?.destroy();
    });
    this.end({ kind: 'complete' });
  }

  private onTimeout(phase: 'connect' | 'idle'): void {
    if (this.state !== 'connecting') return;
    this.upReq?.destroy();
    const ms = phase === 'connect' ? this.upstream.connectTimeoutMs : this.upstream.idleTimeoutMs;
    this.fail(504, 'timeout', `tokenmeter: upstream "${this.upstream.name}" ${phase} timeout after ${ms} ms`);
    this.end({ kind: 'timeout', phase, reachedUpstream: this.sent });
  }

  /** Answers with an endpoint-shaped JSON error when nothing was sent to the client yet. */
  private fail(status: number, type: string, message: string): void {
    if (this.state === 'open' || this.state === 'responding') {
      this.client.destroy();
      return;
    }
    const e = endpointError(this.pathOnly, status, type, message);
    answerRaw(this.client, e.status, e.headers, e.body);
  }

  private clearTimers(): void {
    if (this.headTimer) clearTimeout(this.headTimer);
    this.headTimer = undefined;
  }

  /** A meter call on the traffic path: it must never reach traffic, even if the meter breaks its contract. */
  private metering(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.ctx.health.internalError('meter');
      this.ctx.log.once(
        'meter-websocket',
        'error',
        'meter failed on a websocket session; traffic unaffected',
        {
          error: (err as Error).message,
        },
      );
    }
  }

  /** The one end step (as Exchange.end): runs once; the in-flight count drops once the record is handed on. */
  private end(outcome: MeterOutcome): void {
    if (this.state === 'ended') return;
    this.state = 'ended';
    this.clearTimers();
    const { meter, ctx } = this;
    const requestBytes = this.clientBytes;
    void (async () => {
      try {
        if (meter) await meter.finish(outcome, { requestBytes });
      } catch (err) {
        ctx.health.internalError('meter');
        ctx.log.once('meter-finish', 'error', 'meter.finish failed', { error: (err as Error).message });
      } finally {
        ctx.inflight.delete(this);
      }
    })();
  }
}

/** What the meter needs to know of an upgrade request: operation by path, model from `?model=`. */
function requestInfo(pathOnly: string, url: string): RequestInfo {
  const info: RequestInfo = {
    operation: wsOperationFor(pathOnly),
    stream: false,
    asksForUsage: false,
    tooLargeToMeter: false,
  };
  const q = url.indexOf('?');
  const model = q === -1 ? null : new URLSearchParams(url.slice(q + 1)).get('model');
  if (model) {
    info.model = model.slice(0, MAX_MODEL_CHARS);
    if (model.length > MAX_MODEL_CHARS) info.modelTruncated = true;
  }
  return info;
}
