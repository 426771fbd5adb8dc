/**
 * The drift math of billed vs metered (issue 13, docs/reconcile.md "How billed is computed"). Pure
 * and exact: nanos are BigInt, ratios decimal.js; no clock, no I/O.
 *
 * Billed over a window comes from consecutive snapshots of one series (one upstream, key, source):
 * - a cumulative counter (`total_used`, `monthly_used`, `daily_used`) adds its increase between two
 *   polls; a counter that drops — or passes its stated `*_reset_at` — started a new period, so the
 *   later value (what was used since the reset) is added, never a negative charge;
 * - a balance adds its drops; a rise is a top-up: excluded from billed, counted and reported.
 */
import type { BillingSourceName } from '../config/schema.js';
import { Dec } from '../pricing/money.js';
import type { BilledAmount, BilledCounter, BillingSnapshot } from './types.js';

const FIELD: Record<BilledCounter, keyof BillingSnapshot> = {
  total_used: 'total_used_nanos',
  monthly_used: 'monthly_used_nanos',
  daily_used: 'daily_used_nanos',
  balance: 'balance_nanos',
};

const RESET_AT: Partial<Record<BilledCounter, keyof BillingSnapshot>> = {
  daily_used: 'daily_reset_at',
  monthly_used: 'monthly_reset_at',
};

const valueOf = (s: BillingSnapshot, c: BilledCounter): bigint | undefined =>
  s[FIELD[c]] as bigint | undefined;

/**
 * The figure a source's billed amount is computed from: oneapi/newapi their never-resetting
 * total; `balance` the key's monthly counter when every snapshot states it, else its daily one,
 * else the tenant balance; `balance_delta` always the balance.
 */
export function chooseCounter(
  source: BillingSourceName,
  series: readonly BillingSnapshot[],
): BilledCounter | undefined {
  const all = (c: BilledCounter) => series.length > 0 && series.every((s) => valueOf(s, c) !== undefined);
  const order: BilledCounter[] =
    source === 'balance'
      ? ['monthly_used', 'daily_used', 'balance']
      : source === 'balance_delta'
        ? ['balance']
        : ['total_used'];
  return order.find(all);
}

/**
 * Billed between the first and the last snapshot of `series` (oldest first; snapshots lacking the
 * counter are skipped). Undefined with fewer than two usable snapshots: one poll bills nothing yet.
 */
export function billedFrom(
  series: readonly BillingSnapshot[],
  counter: BilledCounter,
): BilledAmount | undefined {
  const usable = series.filter((s) => valueOf(s, counter) !== undefined);
  if (usable.length < 2) return undefined;
  const out: BilledAmount = {
    counter,
    currency: usable[0]!.currency,
    nanos: 0n,
    fromMs: usable[0]!.ts,
    toMs: usable[usable.length - 1]!.ts,
    snapshots: usable.length,
    resets: 0,
    topUps: 0,
    topUpNanos: 0n,
  };
  const resetField = RESET_AT[counter];
  for (let i = 1; i < usable.length; i++) {
    const prev = usable[i - 1]!;
    const cur = usable[i]!;
    const a = valueOf(prev, counter)!;
    const b = valueOf(cur, counter)!;
    if (counter === 'balance') {
      if (b < a) out.nanos += a - b;
      else if (b > a) {
        out.topUps++;
        out.topUpNanos += b - a;
      }
      continue;
    }
    const resetAt = resetField ? (prev[resetField] as number | undefined) : undefined;
    if (b < a || (resetAt !== undefined && cur.ts >= resetAt)) {
      out.resets++;
      out.nanos += b;
    } else out.nanos += b - a;
  }
  return out;
}

/** The billed increase between two consecutive polls (the metric's increment), never negative. */
export function billedBetween(
  prev: BillingSnapshot,
  cur: BillingSnapshot,
  counter: BilledCounter,
): bigint | undefined {
  return billedFrom([prev, cur], counter)?.nanos;
}

/** billed / metered as an exact decimal; null when metered is zero (no ratio exists). */
export function driftRatio(billedNanos: bigint, meteredNanos: bigint): Dec | null {
  if (meteredNanos === 0n) return null;
  return new Dec(billedNanos.toString()).div(new Dec(meteredNanos.toString()));
}

/**
 * Round ratios a gateway plausibly applies to a price table: Chinese-style discounts ("8折" =
 * 0.8, "88折", "95折"), group ratios and markups. Kept short so a fit means something.
 */
export const ROUND_RATIOS = [
  '0.5', '0.6', '0.65', '0.7', '0.75', '0.8', '0.85', '0.88', '0.9', '0.95',
  '1.05', '1.1', '1.15', '1.2', '1.25', '1.3', '1.5', '1.75', '2', '2.5', '3', '4', '5',
] as const; // prettier-ignore

/** A ratio counts as matching (no drift) or as fitting a round value within this relative error. */
export const FIT_TOLERANCE = new Dec('0.02');

export interface FittedRatio {
  /** The round value, exact text ("1.25"). */
  value: string;
  /** |ratio / value − 1|. */
  error: Dec;
}

/**
 * The round value nearest to `ratio` (relative error) when within ±2 %; undefined otherwise, and
 * for a ratio within ±2 % of 1 (that is a match, not a multiplier).
 */
export function fitRatio(ratio: Dec, tolerance: Dec = FIT_TOLERANCE): FittedRatio | undefined {
  if (ratio.div(1).minus(1).abs().lte(tolerance)) return undefined;
  let best: FittedRatio | undefined;
  for (const r of ROUND_RATIOS) {
    const error = ratio.div(r).minus(1).abs();
    if (error.lte(tolerance) && (!best || error.lt(best.error))) best = { value: r, error };
  }
  return best;
}
