import type { CostSource, Operation, PriceMatchKind, Usage } from '../record.js';

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
  /**
   * How the entry was found: exact, alias, normalized, snapshot or glob (null or absent: none
   * matched). Optional so PriceBook test doubles need not state it.
   */
  price_match?: PriceMatchKind | null;
  /** Exact decimal product of the multiplier stack, e.g. "0.8". */
  multiplier: string | null;
  upstream_reported_cost_nanos: number | null;
  upstream_reported_currency: string | null;
  /**
   * Our own computation when `cost_source` is `upstream` (the gateway's figure is `cost_nanos`),
   * kept so drift between the two can be watched (§5.3). Additive; absent otherwise.
   */
  computed_cost_nanos?: number | null;
  /** The currency of `computed_cost_nanos` (our price entry's), which may differ from the gateway's. */
  computed_currency?: string | null;
  /** Why the cost is null, when it is. */
  reason?: string;
}

/**
 * What is known of a request before it is sent, to bound its cost (budgets reserve the bound).
 * Token counts are upper bounds, not estimates.
 */
export interface MaxCostQuery {
  model: string | undefined;
  upstream: string;
  app: string;
  operation: Operation;
  /** Request start; selects the `effective_from` entry in force. */
  at: Date;
  /** Upper bound of the prompt's tokens (all priced at the highest input-side rate). */
  inputTokens: number;
  /** The output cap the request states (`max_tokens` …); undefined: it states none. */
  requestedOutputTokens: number | undefined;
  /** Completions (`n`, `best_of`) or images asked for; default 1. */
  choices?: number;
}

export type MaxCostResult =
  | {
      /** The bound, in nanos of `currency`, rounded up. */
      cost_nanos: bigint;
      currency: string;
      price_id: string;
      /** Output tokens the bound assumes (over all choices). */
      output_tokens: number;
      /** Where the per-choice output cap came from. */
      output_from: 'request' | 'model' | 'default';
    }
  | { cost_nanos: null; reason: string };

/** Pure: no proxy, no sink, no I/O after construction. */
export interface PriceBook {
  price(query: PriceQuery): PriceResult;
}

/**
 * A price book that can also bound what a request may cost before it is sent (TablePriceBook):
 * what budgets need. Kept apart from PriceBook so code that only prices records (and its test
 * doubles) does not have to bound.
 */
export interface BoundingPriceBook extends PriceBook {
  /** The most a request can cost (a budget's reservation); null when the model is unpriced. */
  maxCost(query: MaxCostQuery): MaxCostResult;
}
