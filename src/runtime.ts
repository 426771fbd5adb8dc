/**
 * Wires the parts together for `serve`: price book, sinks (traces, metrics, audit log), budgets,
 * the balance and billing pollers and the meter. The CLI is the only other place that knows all parts.
 *
 * Sink order matters only for `begin`: the OpenTelemetry sink goes first so its `traceparent` and
 * trace id are known before the upstream request is sent and before the record is built.
 */
import { randomBytes } from 'node:crypto';
import { startBalancePoller } from './balance.js';
import { createBudgets, type Budgets } from './budgets/index.js';
import type { Settings } from './config/types.js';
import type { Logger } from './log.js';
import { createMeter } from './meter/index.js';
import type { Meter } from './meter/types.js';
import { openPgBudgetLedger, type PgBudgetLedger } from './fleet/budget-ledger.js';
import { startShipper, type Shipper } from './fleet/shipper.js';
import { startBillingPoller } from './reconcile/poller.js';
import { priceBookFor, type TablePriceBook } from './pricing/index.js';
import { openAuditLog, type AuditSink } from './sinks/audit/index.js';
import { querySpend } from './sinks/audit/queries.js';
import { createMetricsSink, type MetricsSink } from './sinks/metrics.js';
import { createOtelSink } from './sinks/otel/index.js';
import type { Sink } from './sinks/types.js';

export interface Runtime {
  meter: Meter;
  metricsSink: MetricsSink;
  audit?: AuditSink;
  /** The effective price table (the console's prices page reads it; never changes it). */
  priceBook: TablePriceBook;
  /** Configured budgets, if any (the console's budgets page reads `status()`). */
  budgets?: Budgets;
  /** The fleet shipper, in fleet mode with an audit file (the console's fleet page reads `status()`). */
  shipper?: Shipper;
  metrics(): Promise<{ contentType: string; body: string }>;
  ready(): boolean;
  /** Flush and close every sink (bounded by each sink), stop timers. */
  close(): Promise<void>;
}

export async function buildRuntime(
  settings: Settings,
  log: Logger,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Runtime> {
  // Pricing first: a bad price file is a startup error (exit 1 with file:line:field), not a runtime one.
  const priceBook = priceBookFor(settings, log);

  const configuredApps = [
    ...Object.values(settings.apps),
    ...settings.routes.flatMap((r) => (r.app ? [r.app] : [])),
    ...settings.upstreams.flatMap((u) => (u.app ? [u.app] : [])),
  ];
  const metricsSink = createMetricsSink({
    maxModels: settings.limits.maxModels,
    maxApps: settings.limits.maxApps,
    apps: configuredApps,
    collectDefault: true,
    upstreamHosts: Object.fromEntries(settings.upstreams.map((u) => [u.name, u.url.hostname])),
  });

  const audit = settings.db
    ? openAuditLog({
        path: settings.db,
        queueSize: settings.audit.queueSize,
        batchSize: settings.audit.batchSize,
        flushIntervalMs: settings.audit.flushIntervalMs,
        retentionDays: settings.retentionDays,
        captureBodies: settings.audit.captureBodies,
        captureMaxBytes: settings.audit.captureMaxBytes,
        redactPatterns: settings.audit.redactPatterns,
        keySalt: settings.keySalt,
        health: metricsSink,
        log,
      })
    : undefined;

  let keySecret = settings.keySalt ?? audit?.keySecret;
  if (keySecret === undefined) {
    keySecret = randomBytes(32).toString('hex');
    log.warn('no audit DB and no key_salt: key fingerprints (key_id, apps: map) change on every restart', {});
  }

  // OpenTelemetry (spans, OTLP metrics and logs), on only when OTEL_* variables ask for it.
  const otel = await createOtelSink({
    env,
    captureContent: settings.traces.captureContent,
    log,
    health: metricsSink,
    maxModels: settings.limits.maxModels,
    maxApps: settings.limits.maxApps,
    apps: configuredApps,
    upstreamHosts: Object.fromEntries(settings.upstreams.map((u) => [u.name, u.url.hostname])),
  });

  // Fleet mode with a block budget: its reservations and settlements go to the fleet Postgres too
  // (docs/fleet.md, Shared budgets). The pool connects lazily, on the first gated request.
  const sharedBudgets: PgBudgetLedger | undefined =
    settings.fleet && settings.budgets.some((b) => b.action === 'block')
      ? openPgBudgetLedger({ fleet: settings.fleet, metrics: metricsSink.fleetBudgets, log })
      : undefined;

  let budgets: Budgets | undefined;
  try {
    budgets =
      settings.budgets.length > 0
        ? createBudgets({
            budgets: settings.budgets,
            spend: audit ? (filter) => querySpend(audit.db, filter) : () => [],
            priceBook,
            fx: settings.fx,
            maxRequestBodyBytes: settings.limits.maxRequestBody,
            shared: sharedBudgets,
            log,
          })
        : undefined;
  } catch (err) {
    // A block budget that cannot read its period-to-date spend refuses to start (fails closed).
    await sharedBudgets?.close();
    await audit?.close();
    await otel?.close();
    throw err;
  }
  if (budgets && !audit) log.warn('budgets without an audit DB start from zero at every restart', {});
  if (budgets) {
    const b = budgets;
    metricsSink.setBudgetSource(() => b.status());
  }

  // Budgets are a gate, not a sink: spend reaches them once, through the reservation's settle.
  const sinks: Sink[] = [];
  if (otel) sinks.push(otel);
  sinks.push(metricsSink);
  if (audit) sinks.push(audit);

  const meter = createMeter({
    sinks,
    priceBook,
    budgets,
    health: metricsSink,
    log,
    keySecret,
    apps: settings.apps,
    onRateLimit: (upstream, info) => metricsSink.rateLimit(upstream, info),
    capture:
      audit && settings.audit.captureBodies ? (id, req, res) => audit.capture(id, req, res) : undefined,
    maxEventBytes: settings.limits.maxEventBytes,
    maxResponseBodyBytes: settings.limits.maxRequestBody,
    onOverhead: (upstream, seconds) => metricsSink.overhead(upstream, seconds),
  });

  // Fleet mode (docs/fleet.md): ship the audit log to Postgres in the background, off the request path.
  let shipper: Shipper | undefined;
  if (settings.fleet) {
    if (settings.db === null || settings.db === ':memory:') {
      log.warn('fleet.postgres needs an audit DB file to ship from; the shipper is off', {});
    } else {
      shipper = startShipper({
        dbPath: settings.db,
        fleet: settings.fleet,
        metrics: metricsSink.fleet,
        log,
        retentionDays: settings.retentionDays,
      });
    }
  }

  const poller = startBalancePoller({ upstreams: settings.upstreams, metrics: metricsSink, log });
  // Billed vs metered (docs/reconcile.md): snapshots into the audit log, billed and drift metrics.
  const billing = startBillingPoller({
    upstreams: settings.upstreams,
    metrics: metricsSink,
    audit,
    keySecret,
    log,
  });

  let closed = false;
  return {
    meter,
    metricsSink,
    audit,
    priceBook,
    budgets,
    shipper,
    metrics: () => metricsSink.render(),
    // Not ready while shutting down or while the audit log cannot write (records would queue and
    // then drop): an orchestrator should stop sending traffic here until it recovers.
    ready: () => !closed && (audit ? audit.healthy() : true),
    async close() {
      if (closed) return;
      closed = true;
      poller.stop();
      billing.stop();
      // Each sink closes on its own; one failing never stops the others.
      const results = await Promise.allSettled(sinks.map((s) => s.close()));
      results.forEach((r, i) => {
        if (r.status === 'rejected') {
          log.error('sink failed to close', { sink: sinks[i]?.name, error: String(r.reason) });
        }
      });
      // After the audit flush; rows written last ship at the next start (the mark is on disk).
      await shipper?.stop();
      // After the sinks: the last records' settlements are on their way (bounded wait).
      await sharedBudgets?.close();
    },
  };
}
