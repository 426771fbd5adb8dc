import type { RequestRecord } from '../record.js';
import type { RequestStart } from '../sinks/types.js';

export type BudgetDecision =
  { blocked: false; reservation?: BudgetReservation } | { blocked: true; budget: string; message: string };

export interface BudgetReservation {
  /** Replace the reserved estimate with the record's real cost (or release it when unpriced). */
  settle(record: RequestRecord): void;
}

/** Checked before a request is forwarded; `action: block` budgets may reject it. */
export interface BudgetGate {
  check(start: RequestStart): BudgetDecision;
}

/** One budget's state for the current period (`tokenmeter budgets`, GET status, gauges). */
export interface BudgetStatus {
  name: string;
  period: 'day' | 'week' | 'month';
  timezone: string;
  currency: string;
  action: 'alert' | 'block';
  scope: { app?: string; model?: string; upstream?: string };
  /** Current period [start, end), epoch ms; startDate is the local calendar date it starts on. */
  period_start: number;
  period_end: number;
  period_start_date: string;
  /** Exact amounts in nanos (1e-9 of `currency`). */
  limit_nanos: bigint;
  /** Period-to-date spend: audit log at start + live records since. Unpriced requests add nothing. */
  spent_nanos: bigint;
  /** Estimates reserved by requests in flight (block budgets only). */
  reserved_nanos: bigint;
  /** spent / limit (a display ratio, not money). */
  ratio: number;
  /** Linear projection of spend to the period end (see docs/budgets.md for the rule). */
  projected_nanos: bigint;
  warn_at: number[];
  /** The warn_at thresholds the spend has reached this period. */
  warnings_crossed: number[];
  exceeded: boolean;
}

/** Which audit rows count towards a budget (the audit log's querySpend implements it). */
export interface SpendFilter {
  app?: string;
  /** SQLite GLOB on request_model (`*`, `?`, `[...]`; case-sensitive), like the price table globs. */
  model?: string;
  upstream?: string;
  /** Inclusive start, epoch ms. */
  fromMs: number;
  /** Exclusive end, epoch ms. */
  toMs: number;
}
