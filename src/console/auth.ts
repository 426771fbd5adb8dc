/**
 * Who may read the console (docs/console.md, "Auth"). With `auth_token` set: the JSON API takes
 * `Authorization: Bearer <token>` (as /metrics does), and a browser, which cannot send that header
 * when it navigates, logs in once through a form: `POST /-/login` sets an HttpOnly, SameSite=Strict
 * cookie holding an HMAC of the token (never the token itself). Without `auth_token` the console is
 * open, as /metrics is, but answers only to Host names that DNS rebinding cannot point at it.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

export const SESSION_COOKIE = 'tokenmeter_console';

/** The session value: HMAC-SHA256 keyed by the token, so it changes when the token is rotated. */
export function sessionValue(token: string): string {
  return createHmac('sha256', token).update('tokenmeter console session v1').digest('hex');
}

function sameSecret(given: string, wanted: string): boolean {
  // Compared as HMACs of equal length, so neither the length nor the content leaks through timing.
  const key = 'tokenmeter console compare';
  const a = createHmac('sha256', key).update(given).digest();
  const b = createHmac('sha256', key).update(wanted).digest();
  return timingSafeEqual(a, b) && given === wanted;
}

/** The token a login form sent matches `auth_token`. */
export function tokenMatches(given: string, token: string): boolean {
  return sameSecret(given, token);
}

function cookieValue(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq !== -1 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

/** A bearer header with the token, or a session cookie made from it. */
export function authorized(req: IncomingMessage, token: string): boolean {
  const header = req.headers.authorization;
  if (header?.startsWith('Bearer ') && sameSecret(header.slice(7), token)) return true;
  const cookie = cookieValue(req.headers.cookie, SESSION_COOKIE);
  return cookie !== undefined && sameSecret(cookie, sessionValue(token));
}

export function sessionCookie(token: string): string {
  // No Max-Age: a browser session. Path=/-/ so the proxied paths never see it.
  return `${SESSION_COOKIE}=${sessionValue(token)}; Path=/-/; HttpOnly; SameSite=Strict`;
}

export const CLEAR_SESSION_COOKIE = `${SESSION_COOKIE}=; Path=/-/; HttpOnly; SameSite=Strict; Max-Age=0`;

/**
 * DNS rebinding: a web page on evil.example can make its own name resolve to 127.0.0.1 and then
 * read an open console same-origin. Its requests still carry `Host: evil.example`, so without
 * `auth_token` only hosts that cannot be rebound are served: IP literals, `localhost` (and
 * `*.localhost`) and the configured listen host. With `auth_token` the token is the protection
 * (a rebound page has neither it nor the cookie, which belongs to our name), so any Host is served.
 */
export function hostAllowed(hostHeader: string | undefined, listenHost: string): boolean {
  if (!hostHeader) return false;
  let name = hostHeader.trim().toLowerCase();
  if (name.startsWith('[')) {
    const end = name.indexOf(']');
    return end > 1; // an IPv6 literal
  }
  const colon = name.lastIndexOf(':');
  if (colon !== -1) name = name.slice(0, colon);
  if (name === '') return false;
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(name)) return true;
  if (name === 'localhost' || name.endsWith('.localhost')) return true;
  return name === listenHost.toLowerCase();
}

/**
 * The login page: fixed text (nothing from traffic or the request goes in), styled by the
 * console's stylesheet, no script, so the strict CSP holds on it too.
 */
export function loginPage(failed: boolean): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tokenmeter console: sign in</title>
<link rel="stylesheet" href="/-/ui/console.css">
</head>
<body class="login">
<main>
<h1>tokenmeter</h1>
<form method="post" action="/-/login">
<label for="token">auth_token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button>
</form>
${failed ? '<p class="error" id="login-error">Wrong token.</p>' : ''}
<p class="hint">This tokenmeter has <code>auth_token</code> set: enter it to read the console.</p>
</main>
</body>
</html>
`;
}

/**
 * Wrong tokens per client address (docs/console.md, "Auth"): after `maxFails` within `windowMs`,
 * every attempt from that address — the right token included, or the lock would answer the guess —
 * is refused (429) until the window that began with its first failure ends. A success clears the
 * address. Only a presented credential that does not match counts: no credential is not a guess.
 * Bounded: at most `maxTracked` addresses, the oldest forgotten first.
 */
export class TokenGuessThrottle {
  private readonly fails = new Map<string, { count: number; since: number }>();

  constructor(
    private readonly now: () => number = Date.now,
    private readonly maxFails = 5,
    private readonly windowMs = 60_000,
    private readonly maxTracked = 10_000,
  ) {}

  /** Milliseconds until `addr` may try again; 0 when it may now. */
  lockedFor(addr: string): number {
    const f = this.fails.get(addr);
    if (!f) return 0;
    const left = f.since + this.windowMs - this.now();
    if (left <= 0) {
      this.fails.delete(addr);
      return 0;
    }
    return f.count >= this.maxFails ? left : 0;
  }

  /** Counts a wrong token; true when this one locks the address (log it then, once). */
  failed(addr: string): boolean {
    const now = this.now();
    let f = this.fails.get(addr);
    if (!f || now - f.since >= this.windowMs) {
      this.fails.delete(addr);
      if (this.fails.size >= this.maxTracked) this.fails.delete(this.fails.keys().next().value!);
      f = { count: 0, since: now };
      this.fails.set(addr, f);
    }
    f.count++;
    return f.count === this.maxFails;
  }

  succeeded(addr: string): void {
    this.fails.delete(addr);
  }
}

/** Whether a request presents a credential at all (a bearer header or our session cookie). */
export function presentsCredential(req: IncomingMessage): boolean {
  return (
    req.headers.authorization !== undefined || cookieValue(req.headers.cookie, SESSION_COOKIE) !== undefined
  );
}
