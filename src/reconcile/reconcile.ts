/**
 * Billed vs metered per upstream and key (issue 13, docs/reconcile.md): for every stored snapshot
 * series and every key whose requests carry a gateway-reported cost, billed and metered over the
 * same window, their ratio, and the lines that explain a gap — requests whose cost we could not
 * know or only estimated first, then a fitted round multiplier.
 */
import type Database from 'better-sqlite3';
import { Dec, formatNanos } from '../pricing/money.js';
import { billedFrom, chooseCounter, driftRatio, fitRatio, FIT_TOLERANCE, type FittedRatio } from './drift.js';
import {
  queryMetered,
  queryReportedCosts,
  querySnapshotSeries,
  type MeteredTotals,
  type SnapshotSeries,
} from './metered.js';
import type { BilledAmount, BilledCounter } from './types.js';

export interface ReconcileOptions {
  fromMs: number;
  toMs: number;
  upstream?: string;
}

export type ReconcileSource = SnapshotSeries['source'] | 'reported';

export interface ReconcileLine {
  upstream: string;
  key_id: string | null;
  source: ReconcileSource;
  /** Which figure billed came from (`reported`: per-request reported costs). */
  counter: BilledCounter | 'reported_cost' | null;
  /** Tenant-wide sources (balance deltas) compare with every key of the upstream. */
  scope: 'key' | 'upstream';
  currency: string;
  /** The window both sides cover: the first and last snapshot (or reported request) in it. */
  fromMs: number;
  toMs: number;
  /** null: not known yet (fewer than two polls in the window). */
  billed_nanos: bigint | null;
  metered: MeteredTotals;
  /** billed / metered (exact decimal text, 6 places); null when either side is unknown or metered is 0. */
  ratio: string | null;
  /** billed − metered; null when billed is unknown. */
  gap_nanos: bigint | null;
  fitted: FittedRatio | null;
  /** The multiplier to configure when the fit holds (current stack × fitted). */
  suggested_multiplier: string | null;
  resets: number;
  top_ups: number;
  top_up_nanos: bigint;
  snapshots: number;
  /** Whether the drift is beyond ±2 % (or billed is known while nothing was metered). */
  drifting: boolean;
  explanation: string[];
}

export interface Reconciliation {
  fromMs: number;
  toMs: number;
  lines: ReconcileLine[];
}

export function buildReconciliation(db: Database.Database, opts: ReconcileOptions): Reconciliation {
  const lines: ReconcileLine[] = [];
  for (const series of querySnapshotSeries(db, opts.fromMs, opts.toMs, opts.upstream)) {
    const line = seriesLine(db, series, opts);
    if (line) lines.push(line);
  }
  for (const g of queryReportedCosts(db, opts.fromMs, opts.toMs, opts.upstream)) {
    const metered = queryMetered(
      db,
      { upstream: g.upstream, keyId: g.key_id, fromMs: g.fromMs, toMs: g.toMs },
      g.currency,
    );
    lines.push(
      finish({
        upstream: g.upstream,
        key_id: g.key_id,
        source: 'reported',
        counter: 'reported_cost',
        scope: 'key',
        currency: g.currency,
        fromMs: g.fromMs,
        toMs: g.toMs,
        // Only the requests that carried a reported cost: compare with their own metered cost.
        billed: g.reported_nanos,
        metered: { ...metered, nanos: g.metered_nanos, priced: g.metered_requests },
        amount: undefined,
        snapshots: 0,
      }),
    );
  }
  return { fromMs: opts.fromMs, toMs: opts.toMs, lines };
}

/** The line of one snapshot series (also the billing poller's drift gauge). */
export function seriesLine(
  db: Database.Database,
  series: SnapshotSeries,
  opts: ReconcileOptions,
): ReconcileLine | undefined {
  const snaps = series.snapshots;
  if (snaps.length === 0) return undefined;
  const counter = chooseCounter(series.source, snaps) ?? null;
  const amount = counter ? billedFrom(snaps, counter) : undefined;
  const currency = amount?.currency ?? snaps[snaps.length - 1]!.currency;
  // Balance deltas are the tenant's: every key of the upstream spends from it.
  const scope = counter === 'balance' ? 'upstream' : 'key';
  const fromMs = amount?.fromMs ?? Math.max(opts.fromMs, snaps[0]!.ts);
  const toMs = amount?.toMs ?? opts.toMs;
  const metered = queryMetered(
    db,
    { upstream: series.upstream, keyId: scope === 'key' ? series.key_id : undefined, fromMs, toMs },
    currency,
  );
  return finish({
    upstream: series.upstream,
    key_id: series.key_id,
    source: series.source,
    counter,
    scope,
    currency,
    fromMs,
    toMs,
    billed: amount?.nanos ?? null,
    metered,
    amount,
    snapshots: snaps.length,
  });
}

interface LineInput {
  upstream: string;
  key_id: string | null;
  source: ReconcileSource;
  counter: ReconcileLine['counter'];
  scope: ReconcileLine['scope'];
  currency: string;
  fromMs: number;
  toMs: number;
  billed: bigint | null;
  metered: MeteredTotals;
  amount: BilledAmount | undefined;
  snapshots: number;
}

function finish(i: LineInput): ReconcileLine {
  const ratio = i.billed === null ? null : driftRatio(i.billed, i.metered.nanos);
  const fitted = ratio ? (fitRatio(ratio) ?? null) : null;
  const single = i.metered.multipliers.length === 1 ? i.metered.multipliers[0]! : undefined;
  const suggested =
    fitted && single !== undefined ? new Dec(single).times(fitted.value).toDecimalPlaces(6).toFixed() : null;
  const drifting =
    i.billed !== null && (ratio === null ? i.billed > 0n : ratio.minus(1).abs().gt(FIT_TOLERANCE));
  const line: ReconcileLine = {
    upstream: i.upstream,
    key_id: i.key_id,
    source: i.source,
    counter: i.counter,
    scope: i.scope,
    currency: i.currency,
    fromMs: i.fromMs,
    toMs: i.toMs,
    billed_nanos: i.billed,
    metered: i.metered,
    ratio: ratio ? ratio.toDecimalPlaces(6).toFixed() : null,
    gap_nanos: i.billed === null ? null : i.billed - i.metered.nanos,
    fitted,
    suggested_multiplier: suggested,
    resets: i.amount?.resets ?? 0,
    top_ups: i.amount?.topUps ?? 0,
    top_up_nanos: i.amount?.topUpNanos ?? 0n,
    snapshots: i.snapshots,
    drifting,
    explanation: [],
  };
  line.explanation = explain(line, single);
  return line;
}

const plural = (n: number, one: string, many = `${one}s`): string => `${n} ${n === 1 ? one : many}`;

const pct = (ratio: string): string => {
  const d = new Dec(ratio).minus(1).times(100);
  return `${d.gte(0) ? '+' : ''}${d.toFixed(1)} %`;
};

/**
 * The explanation, causes first (what we could not meter or only estimated), then a fitted
 * multiplier, then what remains. Every amount exact, in the line's currency.
 */
export function explain(l: ReconcileLine, multiplier?: string): string[] {
  const cur = l.currency;
  const m = l.metered;
  const out: string[] = [];
  if (l.billed_nanos === null) {
    out.push(
      `billed is not known yet: ${l.snapshots < 2 ? `${plural(l.snapshots, 'poll')} in the window, two are needed` : 'the snapshots state no usable figure'}`,
    );
    return out;
  }
  const gap = l.gap_nanos!;
  const sign = gap >= 0n ? '+' : '-';
  const abs = gap >= 0n ? gap : -gap;
  out.push(
    `billed ${formatNanos(l.billed_nanos, cur)} vs metered ${formatNanos(m.nanos, cur)}: ` +
      `${sign}${formatNanos(abs, cur)}` +
      (l.ratio !== null ? ` (${pct(l.ratio)}, billed/metered = ${l.ratio})` : ''),
  );
  if (!l.drifting) {
    out.push(`billed matches metered within ±${FIT_TOLERANCE.times(100).toFixed(0)} %`);
  }
  const unknown = m.missing + m.unpriced + m.uncomputed;
  if (unknown > 0) {
    const parts = [
      m.missing > 0 ? `${m.missing} with missing usage` : '',
      m.unpriced > 0 ? `${m.unpriced} unpriced` : '',
      m.uncomputed > 0 ? `${m.uncomputed} trusted upstream cost without our own figure` : '',
    ].filter((s) => s !== '');
    let line = `${plural(unknown, 'request')} not in metered (cost unknown: ${parts.join(', ')})`;
    if (m.priced > 0 && m.nanos > 0n) {
      const avg = m.nanos / BigInt(m.priced);
      const could = avg * BigInt(unknown);
      line += `; at the average metered cost per request (${formatNanos(avg, cur)}) they would add ≈ ${formatNanos(could, cur)}`;
      if (gap > 0n && could * 2n >= gap) line += ': they could account for much of the gap';
    }
    out.push(line);
  }
  if (m.estimated.requests > 0) {
    out.push(
      `${plural(m.estimated.requests, 'request')} answered without usage: metered ${formatNanos(m.estimated.nanos, cur)} from local token estimates, the gateway bills its own count`,
    );
  }
  if (m.unanswered.requests > 0) {
    const u = m.unanswered;
    const metered =
      u.unknown === u.requests
        ? 'no metered cost (their output is unknown)'
        : `metered only ${formatNanos(u.nanos, cur)} from the estimated input` +
          (u.unknown > 0 ? ` (${u.unknown} of them with no metered cost)` : '');
    out.push(
      `${plural(u.requests, 'request')} billed but never answered (timeouts, client aborts, network errors): ${metered}; a gateway may bill the whole generation`,
    );
  }
  for (const [c, nanos] of Object.entries(m.otherCurrencies)) {
    out.push(`metered ${formatNanos(BigInt(nanos), c)} in ${c} is not compared with billed in ${cur}`);
  }
  if (l.top_ups > 0)
    out.push(
      `${plural(l.top_ups, 'top-up')} (balance rose by ${formatNanos(l.top_up_nanos, cur)}) excluded from billed; spend in the same poll interval is hidden by it`,
    );
  if (l.resets > 0)
    out.push(
      `${plural(l.resets, 'counter reset')} (a new gateway day or month): counted from zero; spend between the last poll and the reset is not seen`,
    );
  if (l.drifting && l.fitted) {
    const suggest = l.suggested_multiplier ?? l.fitted.value;
    const now = multiplier ?? 'the current stack';
    out.push(
      `billed/metered = ${l.ratio} ≈ ×${l.fitted.value}: the gateway bills ×${l.fitted.value} of your table: ` +
        `set \`multiplier: ${suggest}\` on upstream ${l.upstream} (now ${now}) or fix the prices`,
    );
  } else if (l.drifting && l.ratio !== null) {
    out.push(`no round multiplier within ±2 % fits billed/metered = ${l.ratio}: check prices per model`);
  } else if (l.drifting) {
    out.push(
      'billed but nothing metered in the window: are requests reaching this gateway through tokenmeter?',
    );
  }
  return out;
}
