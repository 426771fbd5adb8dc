/**
 * The local web console (issue 12, docs/console.md): an Express app that the node:http proxy
 * server hands every `/-/` path to (src/proxy/server.ts, `AdminHooks.console`); proxied traffic
 * never passes through it. It serves the static pages under /-/ui/ (assets/console/, shipped in
 * the npm package: no CDN, no build step) and the read-only JSON API under /-/api/.
 *
 * Every response carries a strict CSP and nosniff; the API is never cached. The only non-GET
 * routes are /-/login and /-/logout, which set or clear the session cookie and change no data.
 */
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { fileURLToPath } from 'node:url';
import express, { type NextFunction, type Request, type Response } from 'express';
import type { Budgets } from '../budgets/index.js';
import type { Settings } from '../config/types.js';
import { TokenmeterError } from '../errors.js';
import type { Logger } from '../log.js';
import type { TablePriceBook } from '../pricing/index.js';
import { apiRouter } from './api.js';
import { FleetView, type ShipperView } from './fleet.js';
import {
  CLEAR_SESSION_COOKIE,
  authorized,
  hostAllowed,
  loginPage,
  presentsCredential,
  sessionCookie,
  TokenGuessThrottle,
  tokenMatches,
} from './auth.js';
import { AuditReader, ConsoleUnavailable, type ReaderOptions } from './reader.js';

/** The static pages, resolved from the package root (works from src/console and dist/console). */
export const ASSETS_DIR = fileURLToPath(new URL('../../assets/console/', import.meta.url));

export const CSP =
  "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; " +
  "frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

export interface ConsoleOptions {
  settings: Settings;
  priceBook: TablePriceBook;
  budgets?: Budgets;
  /** This host's fleet shipper (fleet mode with an audit file), for the fleet page's own-host row. */
  shipper?: ShipperView;
  log: Logger;
  /** Override of the static assets directory (tests). */
  assetsDir?: string;
  now?: () => number;
  /** Override of the reader thread's query timeout and queue cap (tests). */
  reader?: Omit<ReaderOptions, 'log'>;
}

export interface Console {
  /** For `AdminHooks.console`: every request whose path starts with `/-/`. */
  handler(req: IncomingMessage, res: ServerResponse): void;
  /** Stops the reader thread (and its read connection to the audit log) and ends the fleet pool. */
  close(): void;
}

function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version?: string;
    };
    return pkg.version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

const READ_METHODS = new Set(['GET', 'HEAD']);

const remoteOf = (req: Request): string => req.socket.remoteAddress ?? 'unknown';
const lockedText = (waitMs: number): string =>
  `too many wrong tokens from this address: try again in ${Math.ceil(waitMs / 1000)} s`;
const UI_INDEX = new Set(['/-/ui/', '/-/ui/index.html']);

function securityHeaders(_req: Request, res: Response, next: NextFunction): void {
  res.set({
    'Content-Security-Policy': CSP,
    'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'no-referrer',
    'X-Frame-Options': 'DENY',
    'Cross-Origin-Opener-Policy': 'same-origin',
    'Cross-Origin-Resource-Policy': 'same-origin',
  });
  next();
}

function methodNotAllowed(res: Response, allow: string): void {
  res
    .status(405)
    .set('Allow', allow)
    .json({ error: `method not allowed; use ${allow}` });
}

/** Which methods each part answers: the API and the pages only read; login/logout only POST. */
function methodGate(req: Request, res: Response, next: NextFunction): void {
  const isSession = req.path === '/-/login' || req.path === '/-/logout';
  if (isSession) {
    if (req.method === 'POST') return next();
    if (READ_METHODS.has(req.method)) {
      res.redirect(303, '/-/ui/');
      return;
    }
    return methodNotAllowed(res, 'POST');
  }
  if (!READ_METHODS.has(req.method)) return methodNotAllowed(res, 'GET, HEAD');
  next();
}

export function createConsole(opts: ConsoleOptions): Console {
  const { settings, log } = opts;
  const token = settings.authToken;
  const reader = new AuditReader(settings.db, { ...opts.reader, log });
  // Its pool connects on the first fleet request, not here: no fleet page visited, no connection.
  const fleet = settings.fleet ? new FleetView(settings.fleet, opts.shipper) : undefined;
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);

  app.use(securityHeaders);
  app.use((req, res, next) => {
    if (token !== undefined || hostAllowed(req.headers.host, settings.host)) return next();
    res.status(403).json({
      error:
        'Host not allowed: without auth_token the console answers only to an IP address, localhost or the configured host (DNS rebinding); set auth_token to reach it by another name',
    });
  });
  app.use(methodGate);
  app.use((req, res, next) => {
    if (req.path === '/-/' || req.path === '/-/ui') {
      res.redirect(302, '/-/ui/');
      return;
    }
    next();
  });

  // Wrong tokens are counted per address and lock it for a minute after 5 (auth.ts).
  const guesses = new TokenGuessThrottle(opts.now);
  const wrongToken = (addr: string): void => {
    log.warn('console: wrong token', { remote: addr });
    if (guesses.failed(addr))
      log.warn('console: too many wrong tokens; this address is refused for a minute', { remote: addr });
  };

  /** Answers 429 with Retry-After when the client's address is locked; true when it did. */
  const refusedAsLocked = (req: Request, res: Response, send: (text: string) => void): boolean => {
    const wait = guesses.lockedFor(remoteOf(req));
    if (wait === 0) return false;
    res.status(429).set('Retry-After', String(Math.ceil(wait / 1000)));
    send(lockedText(wait));
    return true;
  };

  app.post(
    '/-/login',
    express.urlencoded({ extended: false, limit: '4kb', parameterLimit: 4 }),
    (req, res) => {
      res.set('Cache-Control', 'no-store');
      if (token === undefined) {
        res.redirect(303, '/-/ui/');
        return;
      }
      if (refusedAsLocked(req, res, (text) => res.type('text').send(text))) return;
      const addr = remoteOf(req);
      const body = req.body as Record<string, unknown> | undefined;
      const given = typeof body?.token === 'string' ? body.token : '';
      if (!tokenMatches(given, token)) {
        wrongToken(addr);
        res.status(401).type('html').send(loginPage(true));
        return;
      }
      guesses.succeeded(addr);
      res.set('Set-Cookie', sessionCookie(token)).redirect(303, '/-/ui/');
    },
  );
  app.post('/-/logout', (_req, res) => {
    res.set({ 'Cache-Control': 'no-store', 'Set-Cookie': CLEAR_SESSION_COOKIE }).redirect(303, '/-/ui/');
  });

  const allowed = (req: Request) => token === undefined || authorized(req, token);
  app.use('/-/api', (req, res, next) => {
    res.set('Cache-Control', 'no-store');
    if (token === undefined) return next();
    if (refusedAsLocked(req, res, (text) => res.json({ error: text }))) return;
    if (authorized(req, token)) return next();
    if (presentsCredential(req)) wrongToken(remoteOf(req));
    res
      .status(401)
      .set('WWW-Authenticate', 'Bearer realm="tokenmeter"')
      .json({ error: 'missing or wrong bearer token (or sign in at /-/ui/)' });
  });
  app.use(
    '/-/api',
    apiRouter({
      settings,
      reader,
      priceBook: opts.priceBook,
      budgets: opts.budgets,
      fleet,
      version: packageVersion(),
      now: opts.now,
    }),
  );

  // The pages: the HTML needs a session when auth_token is set (else the login form); the scripts
  // and the stylesheet are the package's own files, the same for everyone, and the login page needs
  // the stylesheet, so they are served without one.
  app.use('/-/ui', (req, res, next) => {
    if (UI_INDEX.has(req.originalUrl.split('?')[0]!) && !allowed(req)) {
      res.status(401).set('Cache-Control', 'no-store').type('html').send(loginPage(false));
      return;
    }
    next();
  });
  app.use(
    '/-/ui',
    express.static(opts.assetsDir ?? ASSETS_DIR, {
      index: ['index.html'],
      redirect: false,
      dotfiles: 'ignore',
      etag: true,
      setHeaders: (res) => res.setHeader('Cache-Control', 'no-cache'),
    }),
  );

  app.use((_req, res) => {
    res.status(404).json({ error: 'not found under /-/ (pages at /-/ui/, API at /-/api/)' });
  });
  // Express recognises an error handler by its four parameters.
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    if (err instanceof ConsoleUnavailable) {
      // Busy, timed out or restarting: the proxied traffic is fine; the console can be asked again.
      res.status(err.status).set('Retry-After', '5').json({ error: err.message });
      return;
    }
    if (err instanceof TokenmeterError && err.code === 'USAGE') {
      res.status(400).json({ error: err.message });
      return;
    }
    const status = (err as { status?: unknown }).status;
    if (typeof status === 'number' && status >= 400 && status < 500) {
      // body-parser: a login body too large or malformed.
      res.status(status).json({ error: (err as Error).message });
      return;
    }
    const message = err instanceof Error ? err.message : String(err);
    log.once(`console:${message.slice(0, 80)}`, 'error', 'console request failed', { error: message });
    res.status(500).json({ error: `console request failed: ${message}` });
  });

  return {
    handler: (req, res) => {
      app(req as Request, res as Response);
    },
    close: () => {
      reader.close();
      fleet?.close();
    },
  };
}
