/**
 * Exact money (DESIGN.md §5.5). Every amount is either a decimal.js value computed at a precision
 * far above what any price needs, or an integer count of nanos (1e-9 of the currency unit).
 * Floats appear only in `nanosToUnits`, which exists for Prometheus (it has no integers).
 */
import { Decimal as DecimalJs } from 'decimal.js';
import type { FxRate } from '../config/schema.js';

/**
 * A private Decimal constructor: 60 significant digits (a 1e12-token request at a 1e-12 price still
 * fits exactly) and half-up rounding, so the one rounding per request is the one §5.5 asks for.
 */
export const Dec = DecimalJs.clone({ precision: 60, rounding: DecimalJs.ROUND_HALF_UP, toExpNeg: -30 });
export type Dec = InstanceType<typeof Dec>;

export const NANOS_PER_UNIT = 1_000_000_000n;
const NANOS_PER_UNIT_DEC = new Dec(1_000_000_000);

/** A decimal literal as written (no exponent, no sign): "0.81", "12", "0.0000025". */
export const DECIMAL_TEXT = /^\d+(\.\d+)?$/;

/** Parses an exact decimal from text or an integer; throws on anything that is not a finite, non-negative decimal. */
export function parseDecimal(text: string | number | bigint): Dec {
  if (typeof text === 'bigint') return new Dec(text.toString());
  if (typeof text === 'number') {
    if (!Number.isFinite(text)) throw new Error(`not a finite number: ${text}`);
    // The shortest round-trip string of a JS number is the literal the user wrote.
    return new Dec(String(text));
  }
  const t = text.trim();
  if (!/^[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?$/i.test(t)) throw new Error(`not a decimal number: ${text}`);
  return new Dec(t);
}

/** Currency units → nanos, rounded half-up (the single rounding step of a request's cost). */
export function unitsToNanos(units: Dec): bigint {
  const scaled = units.times(NANOS_PER_UNIT_DEC).toDecimalPlaces(0, Dec.ROUND_HALF_UP);
  return BigInt(scaled.toFixed(0));
}

/**
 * Integer pricing (issue 11): a price or multiplier with at most `SCALE_DIGITS` decimals is held as
 * the integer `value × 10^SCALE_DIGITS`, and a request's cost is computed in BigInt with one
 * half-up division at the end: the same figure as the decimal.js path (which stays the fallback for
 * anything with more decimals), at a fraction of its time and garbage. 18 digits hold every price
 * a price sheet writes (the smallest seen: 0.0000025).
 */
export const SCALE_DIGITS = 18;
export const SCALE = 10n ** BigInt(SCALE_DIGITS);

/** `d × 10^SCALE_DIGITS` as a BigInt when that is an exact non-negative integer, else null. */
export function scaledInteger(d: Dec): bigint | null {
  if (d.isNegative() || !d.isFinite() || d.decimalPlaces() > SCALE_DIGITS) return null;
  return BigInt(d.times(SCALE.toString()).toFixed(0));
}

/** `n / d` rounded half-up, for n ≥ 0 and d > 0: the single rounding of §5.5. */
export function divRoundHalfUp(n: bigint, d: bigint): bigint {
  return (n * 2n + d) / (d * 2n);
}

/** Nanos as a JS number when it is a safe integer (the record's `cost_nanos` column), else null. */
export function nanosToSafeNumber(nanos: bigint): number | null {
  const n = Number(nanos);
  return Number.isSafeInteger(n) ? n : null;
}

/** Exact decimal text of a nanos amount in currency units. */
export function nanosToDecimalText(nanos: number | bigint): string {
  const n = toBigInt(nanos);
  const neg = n < 0n;
  const abs = neg ? -n : n;
  const whole = abs / NANOS_PER_UNIT;
  const frac = (abs % NANOS_PER_UNIT).toString().padStart(9, '0').replace(/0+$/, '');
  return `${neg ? '-' : ''}${whole}${frac ? `.${frac}` : ''}`;
}

/**
 * Human text of an amount: exact, trailing zeros trimmed but at least two decimals (so ¥1 reads
 * "1.00" and ¥0.0011826 keeps every digit), followed by the currency code when given.
 */
export function formatNanos(nanos: number | bigint, currency?: string): string {
  let text = nanosToDecimalText(nanos);
  const dot = text.indexOf('.');
  if (dot === -1) text += '.00';
  else if (text.length - dot - 1 < 2) text += '0';
  return currency ? `${text} ${currency}` : text;
}

/** Currency units as a float, for Prometheus counters only (never summed back into money). */
export function nanosToUnits(nanos: number | bigint): number {
  // For a safe integer the division is IEEE-exact up to its one correct rounding, the same double
  // that parsing the decimal text gives, without building the text on every request.
  if (typeof nanos === 'number' && Number.isSafeInteger(nanos)) return nanos / 1e9;
  return Number(nanosToDecimalText(nanos));
}

/** Exact sum of nanos amounts. Unknown costs are the caller's to exclude: null is not accepted here. */
export function sumNanos(values: Iterable<number | bigint>): bigint {
  let total = 0n;
  for (const v of values) total += toBigInt(v);
  return total;
}

function toBigInt(v: number | bigint): bigint {
  if (typeof v === 'bigint') return v;
  if (!Number.isSafeInteger(v)) throw new RangeError(`nanos must be a safe integer, got ${v}`);
  return BigInt(v);
}

/**
 * Converts nanos from one currency to another with the configured `fx:` rates (DESIGN.md §5.5):
 * the latest rate dated on or before `day` (YYYY-MM-DD; an undated rate applies to every day)
 * is used; if only the reverse pair is configured its inverse is used. Rounded half-up once.
 * Returns null when no rate applies (the caller must not treat that as zero).
 */
export function convertNanos(
  nanos: number | bigint,
  from: string,
  to: string,
  fx: readonly FxRate[],
  day: string,
): bigint | null {
  const amount = toBigInt(nanos);
  if (from === to) return amount;
  const direct = latestRate(fx, from, to, day);
  if (direct)
    return unitsToNanos(new Dec(amount.toString()).times(parseDecimal(direct.rate)).div(NANOS_PER_UNIT_DEC));
  const inverse = latestRate(fx, to, from, day);
  if (inverse) {
    const rate = parseDecimal(inverse.rate);
    if (rate.isZero()) return null;
    return unitsToNanos(new Dec(amount.toString()).div(rate).div(NANOS_PER_UNIT_DEC));
  }
  return null;
}

function latestRate(fx: readonly FxRate[], from: string, to: string, day: string): FxRate | undefined {
  let best: FxRate | undefined;
  for (const r of fx) {
    if (r.from !== from || r.to !== to) continue;
    const d = r.date ?? '';
    if (d > day) continue;
    // Later dates win; for equal dates the later line in the config wins (a correction).
    if (!best || d >= (best.date ?? '')) best = r;
  }
  return best;
}
