/**
 * Upstream balance poller: for each upstream with `balance:` configured, GET its balance endpoint
 * (seed 004, dieyu: `GET /v1/balance` → `{"object":"balance","currency":"CNY","balance":138.5}`)
 * every interval and export it as tokenmeter_upstream_balance{upstream,currency}.
 *
 * It never touches traffic: timers are unref'd (they never keep the process alive), each poll is
 * bounded by a timeout, and a failure is logged once per failing spell (again only after a success),
 * never thrown. The API key goes only into the Authorization header, never into logs.
 */
import type { UpstreamSettings } from './config/types.js';
import type { Logger } from './log.js';
import { joinUpstreamPath } from './proxy/path-join.js';
import type { MetricsSink } from './sinks/metrics.js';

export interface BalancePollerOptions {
  upstreams: UpstreamSettings[];
  metrics: Pick<MetricsSink, 'balance'>;
  log: Logger;
  fetchImpl?: typeof fetch;
  /** Per-poll timeout; default 10 s. */
  timeoutMs?: number;
}

export interface BalancePoller {
  stop(): void;
  /** Polls every configured upstream once now (tests; also used for the first poll). */
  pollNow(): Promise<void>;
}

const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * Joins the upstream base URL and the balance path without doubling a version segment (§3.1), the
 * same way proxied requests are joined: `https://h/v1` + `/v1/balance` → `https://h/v1/balance`;
 * `https://h` + `/v1/balance` → same. An absolute `http(s)://` path is used as it is.
 */
export function balanceUrl(upstream: URL, path: string): URL {
  if (/^https?:\/\//i.test(path)) return new URL(path);
  return new URL(joinUpstreamPath(upstream, path), upstream);
}

/** Parses seed 004's balance body; returns undefined when it is not that shape. */
export function parseBalance(body: unknown): { currency: string; amount: number } | undefined {
  if (typeof body !== 'object' || body === null) return undefined;
  const b = body as Record<string, unknown>;
  const amount = typeof b.balance === 'string' ? Number(b.balance) : b.balance;
  if (typeof amount !== 'number' || !Number.isFinite(amount)) return undefined;
  if (typeof b.currency !== 'string' || !/^[A-Z]{3}$/.test(b.currency)) return undefined;
  return { currency: b.currency, amount };
}

/**
 * The upstreams this poller polls: those with `balance:`, except where a `billing:` source of kind
 * `balance` or `balance_delta` already polls the balance endpoint (src/reconcile/poller.ts) and
 * sets the same gauge. One poll per interval, one writer of the gauge (docs/reconcile.md).
 */
export function balancePollTargets(upstreams: readonly UpstreamSettings[]): UpstreamSettings[] {
  return upstreams.filter(
    (u) =>
      u.balance !== undefined &&
      !(u.billing ?? []).some((b) => b.source === 'balance' || b.source === 'balance_delta'),
  );
}

export function startBalancePoller(opts: BalancePollerOptions): BalancePoller {
  const fetchImpl = opts.fetchImpl ?? fetch;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const targets = balancePollTargets(opts.upstreams);
  const failing = new Set<string>();
  const timers: NodeJS.Timeout[] = [];
  let stopped = false;

  const fail = (u: UpstreamSettings, reason: string): void => {
    if (failing.has(u.name)) return;
    failing.add(u.name);
    opts.log.warn('upstream balance poll failed; will retry at the next interval', {
      upstream: u.name,
      error: reason.slice(0, 200),
    });
  };

  const pollOne = async (u: UpstreamSettings): Promise<void> => {
    const cfg = u.balance!;
    try {
      const url = balanceUrl(u.url, cfg.path);
      const headers: Record<string, string> = { ...u.headers, accept: 'application/json' };
      if (cfg.apiKey)
        headers.authorization = /^bearer /i.test(cfg.apiKey) ? cfg.apiKey : `Bearer ${cfg.apiKey}`;
      const res = await fetchImpl(url, { method: 'GET', headers, signal: AbortSignal.timeout(timeoutMs) });
      const text = await res.text();
      if (!res.ok) return fail(u, `HTTP ${res.status}`);
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        return fail(u, 'response is not JSON');
      }
      const balance = parseBalance(parsed);
      if (!balance) return fail(u, 'response has no numeric `balance` and ISO `currency`');
      if (stopped) return;
      opts.metrics.balance(u.name, balance.currency, balance.amount);
      if (failing.delete(u.name)) opts.log.info('upstream balance poll recovered', { upstream: u.name });
    } catch (err) {
      // Network errors, timeouts, a broken fetchImpl: never thrown (the error text carries no key).
      fail(u, err instanceof Error ? `${err.name}: ${err.message}` : String(err));
    }
  };

  const pollNow = async (): Promise<void> => {
    await Promise.all(targets.map((u) => pollOne(u)));
  };

  for (const u of targets) {
    void pollOne(u);
    const timer = setInterval(() => void pollOne(u), Math.max(1000, u.balance!.intervalMs));
    timer.unref();
    timers.push(timer);
  }

  return {
    stop() {
      stopped = true;
      for (const t of timers) clearInterval(t);
      timers.length = 0;
    },
    pollNow,
  };
}
