/**
 * One exchange per request (DESIGN.md §3.4): the object that owns one proxied request from its
 * first byte to its record. Its states are explicit, and exactly one end step runs whatever
 * happens: `end(outcome)` moves to `ended` once, and the record is built, handed to the sinks and
 * the budget reservation settled by the meter *after* the response bytes were flushed (on a later
 * turn of the event loop); the one in-flight count drops only when that is done.
 *
 * Traffic first: bytes are written to the client before the meter sees its copy, nothing on the
 * response path awaits metering, and a failure of any metering step never reaches the client.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { UpstreamSettings } from '../config/types.js';
import { inspectRequest } from '../meter/inspect.js';
import type { MeterOutcome, RequestInfo, RequestMeter } from '../meter/types.js';
import { joinUpstreamPath } from './path-join.js';
import type { ProxyContext } from './context.js';
import { endpointError, forwardableHeaders, forwardableReason, unreachableMessage } from './http-util.js';
import { UpstreamRequest, type UpstreamRequestSpec, type UpstreamResponse } from './upstream-call.js';
import {
  canRecode,
  EncodedUsageChunkStripper,
  injectUsageOption,
  shouldInjectUsage,
  UsageChunkStripper,
} from './usage-injection.js';

/**
 * receiving: reading the request body · rejected: answered by tokenmeter (budget) ·
 * forwarding: upstream request under way, no response head yet · responding: streaming the
 * upstream response to the client · ended: the end step ran (the record is on its way).
 */
export type ExchangeState = 'receiving' | 'rejected' | 'forwarding' | 'responding' | 'ended';

/** Methods that may be re-sent on a stale pooled socket (RFC 9110 §9.2.2). POST never is. */
const RETRYABLE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/** What is sent upstream for one exchange (again, for a single re-send after a reset). */
interface Outgoing {
  method: string;
  targetPath: string;
  headers: string[];
  body: RequestBody;
  /** The whole body to send (rewritten when usage was injected); unset when it is streamed. */
  outBody: Buffer | undefined;
  /** Remove the injected usage chunk from the response. */
  strip: boolean;
}

interface RequestBody {
  chunks: Buffer[];
  bytes: number;
  /** The rest of the body must be piped: over the cap. */
  streamRest: boolean;
}

export class Exchange {
  state: ExchangeState = 'receiving';
  /** The upstream this exchange counts under in the in-flight gauge, once known. */
  upstreamName: string | undefined;
  /** Counted in the in-flight gauge now (managed by `Inflight`, proxy/context.ts). */
  inflight = false;
  /** Held for drain while the request is read (managed by `Inflight`). */
  pending = false;

  private meter: RequestMeter | undefined;
  private upstream!: UpstreamSettings;
  private upReq: UpstreamRequest | undefined;
  private idleTimer: NodeJS.Timeout | undefined;
  private bytesToClient = false;
  /** The whole request reached the upstream's socket: a generation may be billed from here on. */
  private sent = false;
  private upResStarted = false;
  /** Time tokenmeter itself spent on this request (µs-level work: read → upstream write, chunk → client write). */
  private overheadMs = 0;
  /** Room this exchange's body takes in `ctx.bodyRoom`, given back by the end step. */
  private bodyRoomBytes = 0;
  private readonly pathOnly: string;

  constructor(
    private readonly ctx: ProxyContext,
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    private readonly startedAt: number,
  ) {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    this.pathOnly = q === -1 ? url : url.slice(0, q);
    // Drain waits for it from its first byte: cut while uploading, it still leaves its record.
    ctx.inflight.hold(this);
  }

  /** Runs the exchange; never rejects (an internal failure answers 500 and still ends with a record). */
  async run(): Promise<void> {
    try {
      await this.forward();
    } catch (err) {
      if (!this.meter) this.beginFallbackMeter();
      this.crash(err);
    }
  }

  private async forward(): Promise<void> {
    const { req } = this;
    const method = req.method ?? 'GET';
    const body = await this.readBody(method);
    if (!body) {
      // The client went away while uploading: nothing was sent upstream, nothing can be billed.
      // Still one record (§3.4): the meter is begun so the abort is visible.
      this.beginMeter(method, undefined, false, 0);
      this.end({ kind: 'client_abort' });
      return;
    }
    const whole = !body.streamRest && body.chunks.length > 0 ? Buffer.concat(body.chunks) : undefined;
    const declared = req.headers['content-length'];
    const requestBytes = declared !== undefined ? Number(declared) || body.bytes : body.bytes;
    const t0 = performance.now();
    const { info, outBody, injected, targetPath } = this.beginMeter(
      method,
      whole,
      body.streamRest,
      requestBytes,
    );
    const meter = this.meter!;
    // Fleet mode only: a shared block budget answers from Postgres (bounded by fleet.budget_timeout)
    // before anything is sent upstream. A single tokenmeter has no admission and never awaits here.
    if (meter.admission) {
      await meter.admission;
      if (this.res.destroyed || this.req.socket.destroyed) {
        // The client left while the fleet ledger answered: nothing was sent, nothing can be billed.
        if (body.streamRest) req.resume();
        this.end({ kind: 'client_abort' });
        return;
      }
    }
    if (meter.rejection) {
      const r = meter.rejection;
      this.state = 'rejected';
      const e = endpointError(this.pathOnly, r.status, r.type, r.message, r.headers);
      this.res.writeHead(e.status, e.headers);
      this.res.end(e.body);
      if (body.streamRest) req.resume();
      this.end({ kind: 'rejected' });
      return;
    }
    this.state = 'forwarding';
    const headers = this.upstreamHeaders(outBody !== whole, injected, outBody);
    // Client gone: abort the upstream at once so no generation keeps billing (§3.2).
    this.res.on('close', () => {
      if (this.state === 'ended' || this.res.writableFinished) return;
      this.upReq?.destroy();
      this.end({ kind: 'client_abort', reachedUpstream: this.sent });
    });
    this.send({ method, targetPath, headers, body, outBody, strip: injected && info.stream });
    this.overheadMs += performance.now() - t0;
  }

  /** Buffers a metered request body up to the cap; undefined when the client left mid-upload. */
  private async readBody(method: string): Promise<RequestBody | undefined> {
    const { req } = this;
    const declared =
      req.headers['content-length'] !== undefined ? Number(req.headers['content-length']) : undefined;
    const hasBody =
      (declared !== undefined && declared > 0) || req.headers['transfer-encoding'] !== undefined;
    if (!hasBody) return { chunks: [], bytes: 0, streamRest: false };
    const maxBody = this.ctx.settings.limits.maxRequestBody;
    // POST bodies are read whatever their Content-Type says (a JSON body sent as text/plain is still
    // metered); anything else is streamed through untouched.
    if (method !== 'POST' || (declared !== undefined && declared > maxBody))
      return { chunks: [], bytes: 0, streamRest: true };
    // Memory for bodies is bounded across requests too. A chunked body takes room for the cap
    // while it uploads, then keeps only its own size: it never waits once it has started.
    const need = declared ?? maxBody;
    if (!this.ctx.bodyRoom.take(need) && !(await this.waitForRoom(need))) return undefined;
    this.bodyRoomBytes = need;
    const body = await bufferBody(req, maxBody);
    if (body && !body.streamRest && body.bytes < need) {
      this.ctx.bodyRoom.give(need - body.bytes);
      this.bodyRoomBytes = body.bytes;
    }
    return body;
  }

  /** Waits, its body unread, until `need` bytes of body room were taken; false if the client left first. */
  private waitForRoom(need: number): Promise<boolean> {
    const { req } = this;
    const room = this.ctx.bodyRoom;
    return new Promise((resolve) => {
      const onTaken = (): void => {
        req.off('close', onGone);
        resolve(true);
      };
      const onGone = (): void => {
        room.withdraw(onTaken);
        resolve(false);
      };
      req.once('close', onGone);
      room.wait(need, onTaken);
    });
  }

  /** Inspects, routes, rewrites (§3.3) and begins metering. */
  private beginMeter(method: string, whole: Buffer | undefined, streamRest: boolean, requestBytes: number) {
    const { ctx, req } = this;
    const url = req.url ?? '/';
    const tooLarge = streamRest && method === 'POST';
    const info = inspectRequest(method, this.pathOnly, whole, tooLarge);
    const choice = ctx.router.pick(url, info.model);
    let outBody = whole;
    let injected = false;
    if (whole && shouldInjectUsage(info, choice.upstream)) {
      try {
        outBody = injectUsageOption(whole, info.body as Record<string, unknown>);
        injected = true;
      } catch (err) {
        // A body JSON.parse read but JSON.stringify cannot write back (nested too deep for the
        // stack): forwarded as the app sent it; the stream's usage is estimated if not reported.
        this.ctx.log.once(
          'usage-injection',
          'warn',
          'could not add stream_options.include_usage; body forwarded unchanged',
          {
            error: (err as Error).message.slice(0, 200),
          },
        );
      }
    }
    const targetPath = joinUpstreamPath(choice.upstream.url, choice.path);
    this.startMetering(choice.upstream, choice.path, choice.routeApp, { info, requestBytes, injected });
    return { info, outBody, injected, targetPath };
  }

  /** A request that failed before metering began still gets its one record (§3.4). */
  private beginFallbackMeter(): void {
    const upstream = this.ctx.settings.upstreams[0];
    if (!upstream) return;
    const method = this.req.method ?? 'GET';
    this.startMetering(upstream, this.pathOnly, undefined, {
      info: inspectRequest(method, this.pathOnly, undefined, false),
      requestBytes: 0,
      injected: false,
    });
  }

  /** Counts the exchange in flight for its upstream and begins its meter. */
  private startMetering(
    upstream: UpstreamSettings,
    path: string,
    routeApp: string | undefined,
    m: { info: RequestInfo; requestBytes: number; injected: boolean },
  ): void {
    this.upstream = upstream;
    this.upstreamName = upstream.name;
    this.ctx.inflight.add(this);
    const q = path.indexOf('?');
    this.meter = this.ctx.meter.begin({
      method: this.req.method ?? 'GET',
      path: q === -1 ? path : path.slice(0, q),
      headers: this.req.headers,
      upstream: upstream.name,
      upstreamUrl: upstream.url,
      routeApp,
      info: m.info,
      requestBytes: m.requestBytes,
      injectedUsage: m.injected,
      tsStart: this.startedAt,
    });
  }

  private upstreamHeaders(bodyChanged: boolean, injected: boolean, outBody: Buffer | undefined): string[] {
    const headers = forwardableHeaders(
      this.req.rawHeaders,
      (h) =>
        h === 'host' ||
        h === 'expect' ||
        h.startsWith('x-tokenmeter-') ||
        (bodyChanged && h === 'content-length'),
    );
    const override: Record<string, string> = { ...this.upstream.headers, ...this.meter!.upstreamHeaders };
    if (injected) {
      // We must be able to read and edit the SSE stream, so ask for it unencoded on injected requests only.
      override['accept-encoding'] = 'identity';
      override['content-length'] = String(outBody!.length);
    }
    const overrideNames = new Set(Object.keys(override).map((k) => k.toLowerCase()));
    const finalHeaders: string[] = ['Host', this.upstream.url.host];
    for (let i = 0; i < headers.length; i += 2)
      if (!overrideNames.has(headers[i]!.toLowerCase())) finalHeaders.push(headers[i]!, headers[i + 1]!);
    for (const [k, v] of Object.entries(override)) finalHeaders.push(k, v);
    return finalHeaders;
  }

  private send(out: Outgoing, attempt = 0): void {
    const upstream = this.upstream;
    const { method, body } = out;
    const requestBody: UpstreamRequestSpec['body'] = body.streamRest
      ? streamedBody(body.chunks, this.req)
      : (out.outBody ?? null);
    // undici reports a request it refuses (an invalid configured header value) through onError
    // before the constructor returns: `dispatched` tells that apart from a later failure.
    let dispatched = false;
    const r: UpstreamRequest = new UpstreamRequest(
      this.ctx.poolFor(upstream),
      { method, path: out.targetPath, headers: out.headers, body: requestBody },
      {
        // The upstream idle timer starts once the whole request is on the wire: a slow upload is
        // the client's time, not the upstream's (§3.1).
        onSent: () => {
          this.sent = true;
          if (this.state === 'forwarding' && !this.upResStarted) this.armIdle();
        },
        onResponse: (upRes) => {
          try {
            this.onResponse(upRes, out.strip);
          } catch (err) {
            this.crash(err);
          }
        },
        onError: (err) => {
          if (this.state === 'ended' || this.upResStarted) return;
          if (!dispatched) {
            // A failure building the upstream request must still answer the client and end
            // with a record.
            const message = `cannot send to upstream ${upstream.name}: ${err.message}`;
            this.fail(502, 'upstream_error', message);
            this.end({ kind: 'network', message });
            return;
          }
          this.onRequestError(r, err, out, attempt);
        },
      },
    );
    dispatched = true;
    if (this.state !== 'ended') this.upReq = r;
    else r.destroy();
  }

  /** The upstream request failed before any response head. */
  private onRequestError(
    r: UpstreamRequest,
    err: NodeJS.ErrnoException,
    out: Outgoing,
    attempt: number,
  ): void {
    if (this.upReq !== r) return;
    const upstream = this.upstream;
    this.clearTimers();
    const code = err.code ?? '';
    if (code === 'UND_ERR_CONNECT_TIMEOUT') {
      this.onTimeout('connect');
      return;
    }
    if (code === 'UND_ERR_SOCKET' && /bad upgrade/.test(err.message)) {
      // Node ended such a request without 'response' or 'error'; undici names it.
      this.upstreamFault('upstream answered 101 Switching Protocols to a request that asked for no upgrade');
      return;
    }
    if (code === 'UND_ERR_SOCKET' && /bad response/.test(err.message)) {
      // A `100 Continue` the request did not ask for (tokenmeter never forwards `Expect`): undici
      // closes the connection on it, where node:http's client skipped it (docs/proxy.md).
      this.upstreamFault('upstream sent 100 Continue to a request that did not expect it');
      return;
    }
    if (
      (code === 'UND_ERR_SOCKET' || code === 'ECONNRESET' || code === 'EPIPE') &&
      attempt === 0 &&
      RETRYABLE_METHODS.has(out.method) &&
      out.body.bytes === 0 &&
      !out.body.streamRest
    ) {
      // The connection closed before any answer: most likely a pooled keep-alive connection the
      // upstream closed just as it was reused. Only idempotent requests without a body are re-sent:
      // a POST may have reached the upstream and started a generation, and re-sending it would
      // bill twice for one record (§3.1).
      this.sent = false;
      this.send(out, 1);
      return;
    }
    const shown = networkCode(code);
    this.ctx.log.warn('upstream unreachable', { upstream: upstream.name, code: shown });
    this.fail(502, 'upstream_unreachable', unreachableMessage(upstream, { ...err, code: shown }));
    this.end({ kind: 'network', message: code === '' ? err.message : shown, reachedUpstream: this.sent });
  }

  private onResponse(upRes: UpstreamResponse, injected: boolean): void {
    if (this.state === 'ended') {
      upRes.destroy();
      return;
    }
    const t0 = performance.now();
    this.upResStarted = true;
    this.state = 'responding';
    this.armIdle();
    const { res, meter } = this;
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
            if (this.state === 'ended') return;
            res.destroy();
            this.end({ kind: 'upstream_reset', message: `undecodable ${encoding} stream` });
          },
        );
      } else
        // Constant key: the encoding comes from the upstream, so keying on it could grow the set.
        this.ctx.log.once(
          'unstrippable-encoding',
          'warn',
          'cannot remove the injected usage chunk from this encoding',
          { upstream: this.upstream.name, encoding: encoding.slice(0, 32) },
        );
    }
    const outHeaders = forwardableHeaders(
      upRes.rawHeaders,
      // Both the stripper and the re-encoder change the body's length: the upstream's is wrong then.
      (h) => (stripper !== undefined || recoder !== undefined) && h === 'content-length',
    );
    res.sendDate = false; // pass the upstream's Date (or none), add nothing of our own
    if (!this.writeHeadFrom(upRes, status, outHeaders)) return;
    // The meter only takes note of the head here; its work on it runs after the response.
    this.metering(() => meter!.onResponseHead(status, upRes.headers));
    // A body of unknown length (an SSE stream, chunked) may be slow to start: send the head on its
    // own if no body byte follows within this turn of the event loop (the head before a slow first
    // token); otherwise it leaves with the first chunk in one write. A body of known length is
    // already on its way, so it needs no extra tick per response.
    if (upRes.headers['content-length'] === undefined)
      setImmediate(() => {
        if (!this.bytesToClient && !res.destroyed && this.state !== 'ended') res.flushHeaders();
      });

    const write = (b: Buffer): boolean => {
      if (b.length === 0) return true;
      const ok = res.write(b);
      if (!this.bytesToClient) {
        this.bytesToClient = true;
        this.metering(() => meter!.onFirstByteToClient());
      }
      return ok;
    };
    if (recoder) res.once('close', () => recoder.destroy());
    const pauseForDrain = () => {
      // Backpressure: a slow reader pauses the upstream read; that is not upstream idleness.
      if (upRes.isPaused()) return;
      upRes.pause();
      if (this.idleTimer) clearTimeout(this.idleTimer);
      this.idleTimer = undefined;
      res.once('drain', () => {
        if (this.state === 'ended') return;
        this.armIdle();
        upRes.resume();
      });
    };
    upRes.on('data', (chunk: Buffer) => {
      if (this.state === 'ended') return;
      const c0 = performance.now();
      this.idleTimer?.refresh();
      let ok = true;
      try {
        if (stripper) for (const part of stripper.push(chunk)) ok = write(part) && ok;
        else if (recoder) recoder.push(chunk);
        else ok = write(chunk);
      } catch (err) {
        this.crash(err);
        return;
      }
      this.overheadMs += performance.now() - c0;
      // Bytes first, the meter's copy after.
      this.metering(() => meter!.onResponseChunk(chunk));
      if (!ok) pauseForDrain();
    });
    upRes.on('end', () => {
      if (this.state === 'ended') return;
      this.clearTimers();
      const complete = () => {
        if (this.state === 'ended') return;
        res.end();
        this.end({ kind: 'complete' });
      };
      try {
        if (stripper) for (const part of stripper.flush()) write(part);
        if (recoder) recoder.end(complete);
        else complete();
      } catch (err) {
        this.crash(err);
      }
    });
    upRes.on('error', () => {
      /* reported through 'close' below */
    });
    upRes.on('close', () => {
      if (this.state === 'ended' || upRes.complete) return;
      // The client connection was already gone (close() cut it after the shutdown grace, or the
      // client left and its 'close' event is still queued): the upstream closing now is a
      // consequence, so this is a client_abort, not an upstream fault (docs/proxy.md, Shutdown).
      if (this.req.socket.destroyed) {
        this.end({ kind: 'client_abort', reachedUpstream: true });
        return;
      }
      res.destroy();
      this.end({ kind: 'upstream_reset', message: 'upstream closed the connection mid-response' });
    });
    this.overheadMs += performance.now() - t0;
  }

  /**
   * Sends the upstream's status line and headers. Node refuses a head it considers invalid (a
   * status below 100, a control character in the reason phrase) by throwing, which on an event
   * callback would take the whole process down: `forwardableReason` applies Node's rules first (a
   * bad reason phrase is replaced by the standard one; the status, headers and body still go
   * through), a 1xx as the final answer is refused here, and anything else `writeHead` refuses
   * is caught. A refused head is an `upstreamFault`. Returns false when the response cannot be
   * forwarded.
   */
  private writeHeadFrom(upRes: UpstreamResponse, status: number, headers: string[]): boolean {
    const { res } = this;
    let error: Error;
    if (status >= 100 && status < 200) {
      // A 1xx is never a final answer (RFC 9110 §15.2). Node skips the informational ones and
      // hands over a 101 only when it has no Upgrade header: nothing was switched, nothing answered.
      error = new Error(`status ${status} as the final response (1xx without an upgrade)`);
    } else {
      const reason = forwardableReason(this.ctx.log, this.upstream.name, status, upRes.statusMessage);
      if (reason instanceof Error) error = reason;
      else
        try {
          res.writeHead(status, reason, headers);
          return true;
        } catch (err) {
          error = err as Error;
        }
    }
    upRes.destroy();
    res.statusMessage = ''; // the upstream's, if Node kept it, must not reach the error head
    const detail = error.message.slice(0, 200);
    this.ctx.log.once(
      'upstream-invalid-head',
      'warn',
      'upstream sent a response head that cannot be forwarded',
      {
        upstream: this.upstream.name,
        error: detail,
      },
    );
    this.upstreamFault(`invalid response head: ${detail}`);
    return false;
  }

  /**
   * The upstream answered something that cannot be forwarded: 502 `upstream_error` naming it (or
   * a cut response once bytes went out). It had the request, so the record estimates its input.
   */
  private upstreamFault(message: string): void {
    this.fail(502, 'upstream_error', `tokenmeter: upstream "${this.upstream.name}": ${message}`);
    this.end({ kind: 'upstream_reset', message, reachedUpstream: true });
  }

  /**
   * An exception of tokenmeter's own (a bug), while forwarding the request or on the response path
   * (where, in an event callback, it would stop the process). The client gets a 500 if nothing was
   * sent yet, else a cut response (never a clean end); the record says internal_error, and
   * tokenmeter_internal_errors_total{component="proxy"} counts it. Destroying the upstream request
   * also discards its response and closes the socket.
   */
  private crash(err: unknown): void {
    if (this.state === 'ended') return;
    const message = err instanceof Error ? err.message : String(err);
    this.ctx.health.internalError('proxy');
    this.ctx.log.once(
      'proxy-exchange',
      'error',
      'proxy exchange failed; that request was answered 500 or cut',
      {
        error: message,
      },
    );
    this.upReq?.destroy();
    this.fail(500, 'internal_error', 'tokenmeter internal error');
    this.end({ kind: 'internal', message });
  }

  /** A meter call on the response path: it must never reach traffic, even if the meter breaks its contract. */
  private metering(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.ctx.health.internalError('meter');
      this.ctx.log.once('meter-response', 'error', 'meter failed on the response path; traffic unaffected', {
        error: (err as Error).message,
      });
    }
  }

  private armIdle(): void {
    if (this.idleTimer) this.idleTimer.refresh();
    else this.idleTimer = setTimeout(() => this.onTimeout('idle'), this.upstream.idleTimeoutMs);
  }

  private clearTimers(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  private onTimeout(phase: 'connect' | 'idle'): void {
    if (this.state === 'ended') return;
    this.upReq?.destroy();
    const ms = phase === 'connect' ? this.upstream.connectTimeoutMs : this.upstream.idleTimeoutMs;
    this.fail(504, 'timeout', `tokenmeter: upstream "${this.upstream.name}" ${phase} timeout after ${ms} ms`);
    this.end({ kind: 'timeout', phase, reachedUpstream: this.sent });
  }

  /** Answers with an endpoint-shaped error if nothing was sent yet; otherwise cuts the response. */
  private fail(status: number, type: string, message: string): void {
    const { res } = this;
    if (!res.headersSent) {
      const e = endpointError(this.pathOnly, status, type, message);
      res.writeHead(e.status, e.headers);
      res.end(e.body);
    } else {
      // Bytes already went out: a clean end would make a truncated stream look complete.
      res.destroy();
    }
  }

  /**
   * The one end step. Runs once, whatever ends the exchange; the meter builds the record on a later
   * turn of the event loop, and the in-flight count drops when it has been handed to the sinks.
   */
  end(outcome: MeterOutcome): void {
    if (this.state === 'ended') return;
    this.state = 'ended';
    this.clearTimers();
    if (this.bodyRoomBytes > 0) {
      this.ctx.bodyRoom.give(this.bodyRoomBytes);
      this.bodyRoomBytes = 0;
    }
    const meter = this.meter;
    const ctx = this.ctx;
    const overheadS = this.overheadMs / 1000;
    void (async () => {
      try {
        if (meter) await meter.finish(outcome, { overheadSeconds: overheadS });
      } catch (err) {
        // The meter never throws by contract; if it does, the request is still counted out.
        ctx.health.internalError('meter');
        ctx.log.once('meter-finish', 'error', 'meter.finish failed', { error: (err as Error).message });
      } finally {
        ctx.inflight.delete(this);
      }
    })();
  }
}

/** Reads the request body up to `cap` bytes. Returns what was read, or undefined if the client left. */
function bufferBody(req: IncomingMessage, cap: number): Promise<RequestBody | undefined> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let bytes = 0;
    const cleanup = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onGone);
      req.off('close', onClose);
    };
    const onData = (c: Buffer) => {
      chunks.push(c);
      bytes += c.length;
      if (bytes > cap) {
        req.pause();
        cleanup();
        resolve({ chunks, bytes, streamRest: true });
      }
    };
    const onEnd = () => {
      cleanup();
      resolve({ chunks, bytes, streamRest: false });
    };
    const onGone = () => {
      cleanup();
      resolve(undefined);
    };
    const onClose = () => {
      if (!req.complete) onGone();
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onGone);
    req.on('close', onClose);
  });
}

/** The request body when it is not buffered whole: what was read, then the rest as it arrives. */
async function* streamedBody(head: Buffer[], rest: IncomingMessage): AsyncGenerator<Buffer> {
  for (const c of head) yield c;
  for await (const c of rest) yield c as Buffer;
}

/**
 * The code a failed upstream request is reported with (log, 502 body, record): the system's
 * (ECONNREFUSED, ENOTFOUND, …) or the parser's (HPE_*); undici's "other side closed" is the
 * connection reset it is.
 */
function networkCode(code: string): string {
  if (code === 'UND_ERR_SOCKET') return 'ECONNRESET';
  return code === '' ? 'error' : code;
}
