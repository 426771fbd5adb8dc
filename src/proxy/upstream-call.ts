/**
 * The HTTP exchange's request to its upstream, over one undici connection pool per upstream
 * (docs/proxy.md, "Upstream connections"). node:http's client cost the proxy's main thread more
 * than anything tokenmeter does per request (ClientRequest, the agent's queue, a Readable per
 * response); undici's pool does the same work in about two thirds of the CPU (issue 11,
 * docs/benchmarks.md). WebSocket upgrades keep node:http's agent (websocket.ts): they need the
 * raw socket Node hands over.
 *
 * `UpstreamResponse` is the part of an IncomingMessage the exchange reads (status, headers, 'data',
 * 'end', 'close', pause/resume), fed by undici's dispatch handler, so the response path is the same
 * code whichever client delivers the bytes.
 */
import { EventEmitter } from 'node:events';
import type { IncomingHttpHeaders } from 'node:http';
import type { Readable } from 'node:stream';
import { Pool, type Dispatcher } from 'undici';
import type { UpstreamSettings } from '../config/types.js';
import { DEFAULT_FREE_SOCKET_TIMEOUT_MS, KEEP_ALIVE_HINT_MARGIN_MS } from './context.js';

/**
 * A connection is retired (closed once its requests are done) this long after it connected, so a
 * busy upstream's connections follow its DNS and load balancer within a minute.
 */
const CLIENT_TTL_MS = 60_000;

/**
 * One keep-alive pool per upstream. A pooled connection is closed before the upstream would close
 * it: after 4 s idle by default, or 1 s before the upstream's own `Keep-Alive: timeout=N`
 * (undici's keepAliveTimeout, keepAliveTimeoutThreshold and keepAliveMaxTimeout). A connection the
 * upstream closes just as it is reused makes a POST fail with 502 (never re-sent, §3.1), so
 * keeping that race rare is what protects traffic. Certificates are verified (undici's default;
 * never turned off). Timeouts after the connect are the exchange's own (idle timer), so undici's
 * header and body timeouts are off. Connections are retired `clientTtlMs` after they connected
 * (default 60 s). The pool keeps one small entry (≈ 2 KB) per connection it ever held at once, so
 * memory after a burst stays bounded by the burst's concurrency (measured: 1,000 at once, then
 * idle: ≈ 1.7 MB).
 */
export function createPools(opts: { freeSocketTimeoutMs?: number; clientTtlMs?: number } = {}): {
  poolFor(u: UpstreamSettings): Dispatcher;
  destroy(): Promise<void>;
} {
  const idleMs = opts.freeSocketTimeoutMs ?? DEFAULT_FREE_SOCKET_TIMEOUT_MS;
  const pools = new Map<string, Pool>();
  return {
    poolFor(upstream) {
      let pool = pools.get(upstream.name);
      if (!pool) {
        pool = new Pool(upstream.url.origin, {
          pipelining: 1,
          keepAliveTimeout: idleMs,
          keepAliveMaxTimeout: idleMs,
          keepAliveTimeoutThreshold: KEEP_ALIVE_HINT_MARGIN_MS,
          clientTtl: opts.clientTtlMs ?? CLIENT_TTL_MS,
          headersTimeout: 0,
          bodyTimeout: 0,
          connect: { timeout: upstream.connectTimeoutMs, keepAlive: true, keepAliveInitialDelay: 1000 },
        });
        pools.set(upstream.name, pool);
      }
      return pool;
    },
    async destroy() {
      await Promise.all([...pools.values()].map((p) => p.destroy().catch(() => undefined)));
      pools.clear();
    },
  };
}

/** Header names Node keeps once (the first) in `IncomingMessage.headers` (node:_http_incoming). */
const SINGLE = new Set([
  'content-type',
  'content-length',
  'user-agent',
  'referer',
  'host',
  'authorization',
  'proxy-authorization',
  'if-modified-since',
  'if-unmodified-since',
  'from',
  'location',
  'max-forwards',
  'retry-after',
  'etag',
  'last-modified',
  'server',
  'age',
  'expires',
]);

/** Raw header pairs → the lower-cased object node:http builds (set-cookie an array, repeats joined). */
function headersObject(raw: string[]): IncomingHttpHeaders {
  const out: Record<string, string | string[]> = {};
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!.toLowerCase();
    const v = raw[i + 1]!;
    const had = out[k];
    if (had === undefined) out[k] = k === 'set-cookie' ? [v] : v;
    else if (k === 'set-cookie') (had as string[]).push(v);
    else if (!SINGLE.has(k)) out[k] = `${had as string}, ${v}`;
  }
  return out as IncomingHttpHeaders;
}

/** The upstream's response as the exchange reads it: an IncomingMessage's status, headers and events. */
export class UpstreamResponse extends EventEmitter {
  /** The whole body arrived. */
  complete = false;
  private paused = false;
  private readonly resumeRead: () => void;
  private headersObj: IncomingHttpHeaders | undefined;

  constructor(
    readonly statusCode: number,
    readonly statusMessage: string,
    /** Names' case, order and repeats as received (latin1, as node:http gives them). */
    readonly rawHeaders: string[],
    resume: () => void,
    private readonly abort: () => void,
  ) {
    super();
    this.resumeRead = resume;
  }

  get headers(): IncomingHttpHeaders {
    return (this.headersObj ??= headersObject(this.rawHeaders));
  }

  isPaused(): boolean {
    return this.paused;
  }

  /** Stops reading the upstream after the chunk being delivered (backpressure). */
  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.resumeRead();
  }

  /** Stops the response: the connection is closed, nothing more is emitted. */
  destroy(): void {
    this.abort();
  }
}

export interface UpstreamCallbacks {
  /** The whole request reached the upstream's socket. */
  onSent(): void;
  /** The final response head (1xx informational answers are skipped). */
  onResponse(res: UpstreamResponse): void;
  /** The request failed before a response head (undici's error: `code` names it). */
  onError(err: NodeJS.ErrnoException): void;
}

export interface UpstreamRequestSpec {
  method: string;
  path: string;
  /** Flat [name, value, …] pairs, Host included. */
  headers: string[];
  body: Buffer | AsyncIterable<Buffer> | Readable | null;
}

/**
 * One request in flight to the upstream. `destroy()` aborts it at any point (the connection is
 * closed, no callback follows). Dispatch errors that undici reports synchronously (an invalid
 * header value) arrive through `onError` before the constructor returns.
 */
export class UpstreamRequest implements Dispatcher.DispatchHandler {
  private abortFn: ((err: Error) => void) | undefined;
  private destroyed = false;
  private response: UpstreamResponse | undefined;

  constructor(
    pool: Dispatcher,
    spec: UpstreamRequestSpec,
    private readonly cb: UpstreamCallbacks,
  ) {
    pool.dispatch(
      {
        method: spec.method as Dispatcher.HttpMethod,
        path: spec.path,
        headers: spec.headers,
        body: spec.body,
        // One answer per request, never re-sent by the pool (a POST may have started a generation).
        reset: false,
        // undici takes an async iterable body (a streamed upload), which its types do not list.
      } as Dispatcher.DispatchOptions,
      this,
    );
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.abortFn?.(new Error('aborted by tokenmeter'));
  }

  onConnect(abort: (err?: Error) => void): void {
    this.abortFn = abort;
    if (this.destroyed) abort(new Error('aborted by tokenmeter'));
  }

  onRequestSent(): void {
    if (!this.destroyed) this.cb.onSent();
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    if (this.destroyed) return true;
    // 1xx informational answers (103 Early Hints, …): the final one follows. A 101 here is not one
    // (the request asked for no upgrade) and a status below 100 is none at all: both go to the
    // exchange, which refuses to forward them.
    if (statusCode >= 100 && statusCode < 200 && statusCode !== 101) return true;
    const raw = new Array<string>(rawHeaders.length);
    for (let i = 0; i < rawHeaders.length; i++) raw[i] = rawHeaders[i]!.toString('latin1');
    const res = new UpstreamResponse(statusCode, statusText, raw, resume, () => this.destroy());
    this.response = res;
    this.cb.onResponse(res);
    return !res.isPaused();
  }

  onData(chunk: Buffer): boolean {
    const res = this.response;
    if (!res || this.destroyed) return true;
    res.emit('data', chunk);
    return !res.isPaused();
  }

  onComplete(): void {
    const res = this.response;
    if (!res || this.destroyed) return;
    res.complete = true;
    res.emit('end');
    res.emit('close');
  }

  onError(err: Error): void {
    if (this.destroyed) return;
    const res = this.response;
    if (res) {
      res.emit('close');
      return;
    }
    this.cb.onError(err as NodeJS.ErrnoException);
  }
}
