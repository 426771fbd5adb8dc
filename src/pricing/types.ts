import type { CostSource, Operation, Usage } from '../record.js';

export interface PriceQuery {
  model: string | undefined;
  upstream: string;
  app: string;
  operation: Operation;
  /** Request start; selects the `effective_from` entry in force. */
  at: Date;
  usage: Usage;
  /** Cost stated by the upstream, if any (decimal string in currency units). */
  upstreamCost?: { amount: string; currency?: string };
}

export interface PriceResult {
  cost_nanos: number | null;
  currency: string | null;
  cost_source: CostSource;
  /** `file#model@effective_from` of the entry used, so a cost can be traced back. */
  price_id: string | null;
  /** Exact decimal product of the multiplier stack, e.g. "0.8". */
  multiplier: string | null;
  upstream_reported_cost_nanos: number | null;
  upstream_reported_currency: string | null;
  /**
   * Our own computation when `cost_source` is `upstream` (the gateway's figure is `cost_nanos`),
   * kept so drift between the two can be watched (§5.3). Additive; absent otherwise.
   */
  computed_cost_nanos?: number | null;
  /** Why the cost is null, when it is. */
  reason?: string;
}

/** Pure: no proxy, no sink, no I/O after construction. */
export interface PriceBook {
  price(query: PriceQuery): PriceResult;
}
