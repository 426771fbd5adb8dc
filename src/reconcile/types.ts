/**
 * Types of billed-vs-metered reconciliation (issue 13, docs/reconcile.md). Money is integer nanos
 * (1e-9 of the currency unit) as BigInt; undefined = the gateway did not state that figure.
 */
import type { BillingSourceName } from '../config/schema.js';

/** What one billing endpoint said at one poll (a `billing_snapshots` row). */
export interface BillingSnapshot {
  ts: number;
  upstream: string;
  /** Fingerprint of the key the endpoint answered for (the configured `api_key`), as in records. */
  key_id: string | null;
  source: BillingSourceName;
  currency: string;
  /** Tenant balance (balance sources) or the key's remaining quota (newapi). */
  balance_nanos?: bigint;
  daily_used_nanos?: bigint;
  monthly_used_nanos?: bigint;
  /** A counter that never resets (oneapi `total_usage`, newapi `total_used`). */
  total_used_nanos?: bigint;
  granted_nanos?: bigint;
  daily_reset_at?: number;
  monthly_reset_at?: number;
}

/** Which figure of the snapshots a billed amount was computed from. */
export type BilledCounter = 'total_used' | 'monthly_used' | 'daily_used' | 'balance';

/** Billed over a window, from consecutive snapshots of one series. */
export interface BilledAmount {
  counter: BilledCounter;
  currency: string;
  nanos: bigint;
  /** First and last snapshot used: the billed window is [fromMs, toMs]. */
  fromMs: number;
  toMs: number;
  snapshots: number;
  /** A cumulative counter that dropped (a new gateway period): counted from zero, never negative. */
  resets: number;
  /** Balance rises (top-ups), excluded from billed; their total. */
  topUps: number;
  topUpNanos: bigint;
}
