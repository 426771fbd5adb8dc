/**
 * The billing poller (issue 13, docs/reconcile.md): for each upstream with `billing:` configured,
 * polls each source every interval with the configured key, stores a snapshot in the audit log
 * (billing_snapshots, through the writer), and for the upstream's first source exports what was
 * billed since the previous poll (tokenmeter_billed_total) and billed / metered over the source's
 * window (tokenmeter_reconcile_drift_ratio). Balance sources also feed tokenmeter_upstream_balance.
 *
 * Like the balance poller it never touches traffic: timers are unref'd, each poll is bounded by a
 * timeout, a failure is logged once per failing spell and never thrown, and the key only goes into
 * the Authorization header (its fingerprint, never the key, is stored).
 */
import { keyFingerprint } from '../attribution.js';
import type { BillingSettings, UpstreamSettings } from '../config/types.js';
import type { Logger } from '../log.js';
import { nanosToUnits } from '../pricing/money.js';
import type { AuditSink } from '../sinks/audit/index.js';
import type { MetricsSink } from '../sinks/metrics.js';
import { billedBetween, chooseCounter } from './drift.js';
import { querySnapshotSeries } from './metered.js';
import { seriesLine } from './reconcile.js';
import { bareKey, fetchFigures } from './sources.js';
import type { BillingSnapshot } from './types.js';

export interface BillingPollerOptions {
  upstreams: UpstreamSettings[];
  metrics: Pick<MetricsSink, 'billed' | 'reconcileDrift' | 'balance'>;
  /** Where snapshots are stored and metered is read; without it only tokenmeter_billed_total is kept. */
  audit?: Pick<AuditSink, 'writeBillingSnapshot' | 'db' | 'flush'>;
  /** HMAC secret of key fingerprints (the records' `key_id`). */
  keySecret: string;
  log: Logger;
  fetchImpl?: typeof fetch;
  /** Per-poll timeout; default 10 s. */
  timeoutMs?: number;
  now?: () => number;
}

export interface BillingPoller {
  stop(): void;
  /** Polls every configured source once now (tests; also the first poll). */
  pollNow(): Promise<void>;
}

interface Target {
  upstream: UpstreamSettings;
  billing: BillingSettings;
  /** The upstream's first source: the one behind the metrics. */
  primary: boolean;
  keyId: string;
  label: string;
  last?: BillingSnapshot;
  busy?: Promise<void>;
}

export function startBillingPoller(opts: BillingPollerOptions): BillingPoller {
  const now = opts.now ?? Date.now;
  const targets: Target[] = opts.upstreams.flatMap((u) =>
    (u.billing ?? []).map((b, i) => ({
      upstream: u,
      billing: b,
      primary: i === 0,
      keyId: keyFingerprint(opts.keySecret, bareKey(b.apiKey)),
      label: `${u.name}:${b.source}`,
    })),
  );
  const failing = new Set<string>();
  const timers: NodeJS.Timeout[] = [];
  let stopped = false;

  const fail = (t: Target, what: string, err: unknown): void => {
    if (failing.has(t.label)) return;
    failing.add(t.label);
    const reason = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    opts.log.warn(`billing ${what} failed; will retry at the next interval`, {
      upstream: t.upstream.name,
      source: t.billing.source,
      error: reason.slice(0, 200),
    });
  };

  const drift = (t: Target, ts: number): void => {
    const db = opts.audit?.db;
    if (!db) return;
    const series = querySnapshotSeries(db, ts - t.billing.windowMs, ts, t.upstream.name).find(
      (s) => s.key_id === t.keyId && s.source === t.billing.source,
    );
    const line = series ? seriesLine(db, series, { fromMs: ts - t.billing.windowMs, toMs: ts }) : undefined;
    if (!line) return;
    // Billed while nothing was metered: +Inf (the alert fires); nothing on either side: no ratio.
    const ratio =
      line.ratio !== null
        ? Number(line.ratio)
        : line.billed_nanos !== null && line.billed_nanos > 0n
          ? Infinity
          : null;
    opts.metrics.reconcileDrift(t.upstream.name, line.currency, ratio);
  };

  const pollOne = async (t: Target): Promise<void> => {
    let snapshot: BillingSnapshot;
    // Stamped when the poll is sent: a request that ended after that may be missing from the
    // figures, one that ended before is in them (docs/reconcile.md "Metered, and the window").
    const sentAt = now();
    try {
      const figures = await fetchFigures({
        upstreamUrl: t.upstream.url,
        headers: t.upstream.headers,
        billing: t.billing,
        fetchImpl: opts.fetchImpl,
        timeoutMs: opts.timeoutMs,
      });
      snapshot = {
        ts: sentAt,
        upstream: t.upstream.name,
        key_id: t.keyId,
        source: t.billing.source,
        ...figures,
      };
    } catch (err) {
      return fail(t, 'poll', err);
    }
    if (stopped) return;
    if (failing.delete(t.label))
      opts.log.info('billing poll recovered', { upstream: t.upstream.name, source: t.billing.source });
    const u = t.upstream.name;
    if (t.billing.source.startsWith('balance') && snapshot.balance_nanos !== undefined)
      opts.metrics.balance(u, snapshot.currency, nanosToUnits(snapshot.balance_nanos));
    if (t.primary) {
      const prev = t.last;
      const counter = prev ? chooseCounter(t.billing.source, [prev, snapshot]) : undefined;
      const billed =
        prev && counter && prev.currency === snapshot.currency ? billedBetween(prev, snapshot, counter) : 0n;
      opts.metrics.billed(u, snapshot.currency, billed ?? 0n);
    }
    t.last = snapshot;
    if (!opts.audit) return;
    try {
      await opts.audit.writeBillingSnapshot(snapshot);
      if (t.primary && !stopped) {
        // Records of requests answered just before this poll may still be queued: write them first.
        await opts.audit.flush();
        drift(t, snapshot.ts);
      }
    } catch (err) {
      fail(t, 'snapshot', err);
    }
  };

  /** One poll per target at a time: a slow endpoint never stacks polls. */
  const poll = (t: Target): Promise<void> => {
    t.busy ??= pollOne(t).finally(() => {
      t.busy = undefined;
    });
    return t.busy;
  };

  for (const t of targets) {
    void poll(t);
    const timer = setInterval(() => void poll(t), Math.max(1000, t.billing.intervalMs));
    timer.unref();
    timers.push(timer);
  }

  return {
    stop() {
      stopped = true;
      for (const t of timers) clearInterval(t);
      timers.length = 0;
    },
    pollNow: async () => {
      // A poll already running is awaited, then one more is made: the caller wants a fresh figure.
      await Promise.all(targets.map((t) => t.busy));
      await Promise.all(targets.map((t) => poll(t)));
    },
  };
}
