/**
 * `tokenmeter reconcile` output: a table per upstream and key, each followed by its explanation,
 * or the same as JSON (money as exact decimal text and integer-nanos strings, never floats). The
 * console's `GET /-/api/reconcile` answers the JSON document.
 */
import { formatNanos, nanosToDecimalText } from '../pricing/money.js';
import type { ReconcileLine, Reconciliation } from './reconcile.js';

const UNKNOWN = '-';

const iso = (ms: number): string => new Date(ms).toISOString();

function driftText(l: ReconcileLine): string {
  if (l.ratio === null) return UNKNOWN;
  const pct = (Number(l.ratio) - 1) * 100; // display only
  return `${pct >= 0 ? '+' : ''}${pct.toFixed(1)}%`;
}

const HEADER = [
  'upstream',
  'key',
  'source',
  'currency',
  'billed',
  'metered',
  'drift',
  'requests',
  'estimated',
  'missing',
  'unpriced',
  'unanswered',
];

function cells(l: ReconcileLine): string[] {
  return [
    l.upstream,
    l.scope === 'upstream' ? `${l.key_id ?? UNKNOWN} (all keys)` : (l.key_id ?? UNKNOWN),
    l.source,
    l.currency,
    l.billed_nanos === null ? UNKNOWN : formatNanos(l.billed_nanos),
    formatNanos(l.metered.nanos),
    driftText(l),
    String(l.metered.requests),
    String(l.metered.estimated.requests),
    String(l.metered.missing),
    String(l.metered.unpriced),
    String(l.metered.unanswered.requests),
  ];
}

function align(rows: string[][], numericFrom: number): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows
    .map((r) =>
      r
        .map((c, i) => (i >= numericFrom ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

export function formatReconcileTable(r: Reconciliation): string {
  const out = [`tokenmeter reconcile ${iso(r.fromMs)} .. ${iso(r.toMs)}`, ''];
  if (r.lines.length === 0) {
    out.push(
      'nothing to reconcile: no billing snapshots and no gateway-reported costs in this window',
      '(configure `billing:` on an upstream, docs/reconcile.md)',
    );
    return out.join('\n') + '\n';
  }
  out.push(align([HEADER, ...r.lines.map(cells)], 4), '');
  for (const l of r.lines) {
    const key = l.key_id ?? 'no key';
    const via =
      l.counter === 'reported_cost'
        ? 'per-request reported cost'
        : `${l.source}, ${l.counter ?? 'no figure'}`;
    out.push(
      `${l.upstream} key ${key} (${via}; ${iso(l.fromMs)} .. ${iso(l.toMs)}${l.snapshots > 0 ? `, ${l.snapshots} polls` : ''}):`,
    );
    for (const e of l.explanation) out.push(`  - ${e}`);
    out.push('');
  }
  return out.join('\n');
}

const money = (n: bigint | null): { text: string | null; nanos: string | null } => ({
  text: n === null ? null : nanosToDecimalText(n),
  nanos: n === null ? null : n.toString(),
});

export function lineToJson(l: ReconcileLine): Record<string, unknown> {
  const billed = money(l.billed_nanos);
  const metered = money(l.metered.nanos);
  const gap = money(l.gap_nanos);
  return {
    upstream: l.upstream,
    key_id: l.key_id,
    source: l.source,
    counter: l.counter,
    scope: l.scope,
    currency: l.currency,
    from: iso(l.fromMs),
    to: iso(l.toMs),
    billed: billed.text,
    billed_nanos: billed.nanos,
    metered: metered.text,
    metered_nanos: metered.nanos,
    gap: gap.text,
    gap_nanos: gap.nanos,
    ratio: l.ratio,
    drifting: l.drifting,
    fitted_multiplier: l.fitted?.value ?? null,
    suggested_multiplier: l.suggested_multiplier,
    requests: l.metered.requests,
    priced: l.metered.priced,
    estimated: {
      requests: l.metered.estimated.requests,
      metered: nanosToDecimalText(l.metered.estimated.nanos),
    },
    unanswered: {
      requests: l.metered.unanswered.requests,
      metered: nanosToDecimalText(l.metered.unanswered.nanos),
    },
    missing: l.metered.missing,
    unpriced: l.metered.unpriced,
    uncomputed: l.metered.uncomputed,
    other_currencies: Object.fromEntries(
      Object.entries(l.metered.otherCurrencies).map(([c, n]) => [c, nanosToDecimalText(BigInt(n))]),
    ),
    multipliers: l.metered.multipliers,
    snapshots: l.snapshots,
    resets: l.resets,
    top_ups: l.top_ups,
    top_up: nanosToDecimalText(l.top_up_nanos),
    explanation: l.explanation,
  };
}

export function reconciliationToJson(r: Reconciliation): Record<string, unknown> {
  return { from: iso(r.fromMs), to: iso(r.toMs), lines: r.lines.map(lineToJson) };
}
