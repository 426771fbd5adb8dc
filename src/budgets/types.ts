import type { RequestRecord } from '../record.js';
import type { RequestStart } from '../sinks/types.js';

/** What the gate needs of a request's body (read by the proxy, capped at `limits.max_request_body`). */
export interface BudgetRequest {
  /** Parsed JSON request body, when it could be read (undefined: not JSON, or over the body cap). */
  body?: unknown;
  /** The body exceeded the metering cap and could not be read (model, max_tokens unknown). */
  bodyUnreadable: boolean;
  requestBytes: number;
}

/**
 * `exhausted`: a block budget has no room for this request (used up, or its bound does not fit,
 * or its cost cannot be counted in the budget's currency): the meter answers 429.
 * `unmeterable`: a block budget has the request in scope but its body could not be read, so its
 * cost cannot be bounded: the meter answers 413. `message` names the budget and what to do.
 */
export type BudgetDecision =
  | {
      blocked: false;
      reservation?: BudgetReservation;
      /**
       * Fleet mode only (a shared block budget gates the request): the fleet ledger's verdict. The
       * request must not be forwarded before it resolves; a blocked verdict refuses it like a local
       * one. Never rejects. Absent for a single tokenmeter: its gate stays synchronous.
       */
      pending?: Promise<BudgetBlock | undefined>;
    }
  | BudgetBlock;

export interface BudgetBlock {
  blocked: true;
  budget: string;
  message: string;
  reason: 'exhausted' | 'unmeterable';
}

/** One block budget's share of a request, as the fleet ledger (src/fleet/budget-ledger.ts) needs it. */
export interface SharedHold {
  budget: string;
  /** The period the hold belongs to: start epoch ms and its local start date. */
  periodStart: number;
  periodKey: string;
  periodEnd: number;
  timezone: string;
  period: 'day' | 'week' | 'month';
  currency: string;
  limit: bigint;
  /** The request's bound in the budget's currency (0n when unpriced). */
  amount: bigint;
  onUnreachable: 'local' | 'block';
}

/**
 * The fleet's shared books for block budgets (issue 14). Budgets never import Postgres: the
 * runtime injects this in fleet mode. Both methods never throw or reject.
 */
export interface SharedBudgetLedger {
  /** Reserves every hold in one transaction, or says which budget has no room (or cannot be asked). */
  reserve(id: string, holds: readonly SharedHold[]): Promise<SharedVerdict>;
  /** In the background: drops the reservation (if one was taken) and adds each budget's real cost. */
  settle(id: string, reserved: boolean, costs: ReadonlyArray<{ hold: SharedHold; cost: bigint }>): void;
}

export type SharedVerdict =
  { admitted: true; reserved: boolean } | { admitted: false; budget: string; message: string };

/**
 * Returned whenever any budget (alert or block) has the request in scope. The meter calls
 * `settle` exactly once with the request's record, whatever happened to the request.
 */
export interface BudgetReservation {
  /** Releases what was reserved and adds the record's real cost (nothing when it is unpriced). */
  settle(record: RequestRecord): void;
}

/** Checked before a request is forwarded; `action: block` budgets may reject it. */
export interface BudgetGate {
  check(start: RequestStart, request: BudgetRequest): BudgetDecision;
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
  /** Bounds reserved by requests in flight (block budgets only). */
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
