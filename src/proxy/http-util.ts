/**
 * HTTP helpers the proxy's HTTP exchange and WebSocket session share: hop-by-hop filtering,
 * reason phrases and endpoint-shaped error bodies; and the WebSocket upgrade's upstream request
 * through node:http (HTTP exchanges use undici's pool: upstream-call.ts).
 */
import http from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import type { UpstreamSettings } from '../config/types.js';
import type { Logger } from '../log.js';

/**
 * One request to `upstream` through its keep-alive `agent`. `onConnected` runs once the socket is
 * connected (TLS included), or at once on a pooled socket: the caller's connect timer stops there.
 * Throws synchronously as http.request does (e.g. an invalid configured header value).
 */
export function openUpstreamRequest(
  upstream: UpstreamSettings,
  agent: http.Agent,
  method: string,
  path: string,
  headers: string[],
  connect: { timeoutMs: number; onTimeout: () => void },
): http.ClientRequest {
  const t = targetOf(upstream);
  const r = t.module.request({
    protocol: t.protocol,
    hostname: t.hostname,
    port: t.port,
    method,
    path,
    headers,
    agent,
    setHost: false,
  });
  r.on('socket', (s: Socket) => {
    // A pooled keep-alive socket is connected already: only a new connection (DNS, TCP, TLS) gets
    // the connect timer. Most requests reuse a socket, so most pay for no timer (issue 11).
    if (!s.connecting) return;
    const timer = setTimeout(connect.onTimeout, connect.timeoutMs);
    const done = (): void => {
      clearTimeout(timer);
      s.removeListener(t.connectedEvent, done);
      s.removeListener('close', done);
    };
    s.on(t.connectedEvent, done);
    s.on('close', done);
  });
  return r;
}

interface Target {
  module: typeof http | typeof https;
  protocol: string;
  hostname: string;
  port: string | number;
  connectedEvent: 'connect' | 'secureConnect';
}

/** What `request()` needs of an upstream URL, worked out once per upstream instead of per request. */
const targets = new WeakMap<UpstreamSettings, Target>();
function targetOf(upstream: UpstreamSettings): Target {
  let t = targets.get(upstream);
  if (!t) {
    const isHttps = upstream.url.protocol === 'https:';
    t = {
      module: isHttps ? https : http,
      protocol: upstream.url.protocol,
      hostname: upstream.url.hostname.replace(/^\[|\]$/g, ''),
      port: upstream.url.port || (isHttps ? 443 : 80),
      connectedEvent: isHttps ? 'secureConnect' : 'connect',
    };
    targets.set(upstream, t);
  }
  return t;
}

/** The client's message when the upstream cannot be reached (never a stack trace, never the key). */
export function unreachableMessage(upstream: UpstreamSettings, err: NodeJS.ErrnoException): string {
  return `tokenmeter: cannot reach upstream "${upstream.name}" (${err.code ?? 'network error'})`;
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

/** The same minus the upgrade's own fields, which a WebSocket upgrade (and its 101) must keep. */
const HOP_BY_HOP_BUT_UPGRADE = new Set([...HOP_BY_HOP].filter((h) => h !== 'connection' && h !== 'upgrade'));

/**
 * Filters a rawHeaders array (names' case, order and duplicates kept): hop-by-hop names, names
 * listed in Connection, and `drop(name)`. `keepUpgrade`: `Connection` and `Upgrade` stay.
 */
export function forwardableHeaders(
  raw: string[],
  drop: (lower: string) => boolean,
  opts: { keepUpgrade?: boolean } = {},
): string[] {
  let listed: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === 'connection') {
      listed ??= new Set();
      for (const n of raw[i + 1]!.split(',')) listed.add(n.trim().toLowerCase());
    }
  }
  if (opts.keepUpgrade) listed?.delete('upgrade');
  const hopByHop = opts.keepUpgrade ? HOP_BY_HOP_BUT_UPGRADE : HOP_BY_HOP;
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase();
    if (hopByHop.has(lower) || listed?.has(lower) || drop(lower)) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

/** Anthropic Messages endpoints answer errors in Anthropic's shape; everything else in OpenAI's. */
export function isAnthropicPath(path: string): boolean {
  return /\/messages(\/|$)/.test(path);
}

/** Error body shaped like the endpoint's own errors so SDKs parse it (OpenAI vs Anthropic). */
export function endpointError(
  path: string,
  status: number,
  type: string | { openai: string; anthropic: string },
  message: string,
  extraHeaders: Record<string, string> = {},
): { status: number; headers: Record<string, string>; body: string } {
  const body = isAnthropicPath(path)
    ? JSON.stringify({
        type: 'error',
        error: { type: typeof type === 'string' ? type : type.anthropic, message },
      })
    : JSON.stringify({
        error: {
          message,
          type: typeof type === 'string' ? type : type.openai,
          code: typeof type === 'string' ? type : type.openai,
        },
      });
  return {
    status,
    headers: {
      'content-type': 'application/json',
      'content-length': String(Buffer.byteLength(body)),
      ...extraHeaders,
    },
    body,
  };
}

/** What Node's `writeHead` refuses in a reason phrase: anything but HTAB, SP, VCHAR and obs-text (RFC 9112 §4). */
const INVALID_REASON_CHAR = /[^\t\x20-\x7e\x80-\xff]/;

/**
 * The reason phrase to send with an upstream's status, by the rules Node's server applies in
 * `writeHead`, for both the HTTP path and the raw WebSocket path: a status outside 100–999 cannot
 * be sent (an Error worded as Node's), a reason phrase with a control character is replaced by the
 * standard one. Each is logged once.
 */
export function forwardableReason(
  log: Logger,
  upstream: string,
  status: number,
  reason: string | undefined,
): string | Error {
  if (!Number.isInteger(status) || status < 100 || status > 999) {
    const error = new Error(`Invalid status code: ${status}`);
    log.once('upstream-invalid-head', 'warn', 'upstream sent a response head that cannot be forwarded', {
      upstream,
      error: error.message,
    });
    return error;
  }
  if (reason === undefined || !INVALID_REASON_CHAR.test(reason)) return reason ?? '';
  log.once(
    'upstream-reason-phrase',
    'warn',
    'upstream reason phrase cannot be forwarded; sent the standard one',
    {
      upstream,
      status,
    },
  );
  return http.STATUS_CODES[status] ?? 'unknown';
}
