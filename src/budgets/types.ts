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
