/**
 * Counters and histograms for the per-record metrics, registered in the same prom-client registry
 * and exported in the same text format, but updated through series handles that are plain
 * objects: `handle.inc(n)` / `handle.observe(v)` is an addition, where a prom-client child
 * re-validates and re-hashes its label set on every call (prom-client 15 `labels()` children call
 * `observe.call(this, labels)`). That was a measurable part of tokenmeter's per-request CPU; the
 * series handles are created once per label set and cached by the metrics sink.
 *
 * They implement what prom-client's Registry asks of a metric (`name`, `help`, `type`,
 * `aggregator`, `get()`, `reset()`), so `/metrics` and `getMetricsAsJSON` see them like any
 * other. Label values are bounded by the caller (§7).
 */
import type { Registry } from 'prom-client';

type Labels = Record<string, string>;

interface MetricValue {
  labels: Labels;
  value: number;
  metricName?: string;
}

interface MetricData {
  name: string;
  help: string;
  type: 'counter' | 'histogram';
  values: MetricValue[];
  aggregator: 'sum';
}

export interface CounterSeries {
  inc(value?: number): void;
}

export interface HistogramSeries {
  observe(value: number): void;
}

abstract class FastMetric<S> {
  readonly aggregator = 'sum' as const;
  protected series = new Map<string, S>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
    registry: Registry,
  ) {
    // The registry only needs what its exposition and JSON paths call; see the file comment.
    registry.registerMetric(this as unknown as Parameters<Registry['registerMetric']>[0]);
  }

  protected key(labels: Labels): string {
    let k = '';
    for (const n of this.labelNames) {
      const v = labels[n];
      if (v === undefined) continue;
      k += `${n}\u0000${v}\u0001`;
    }
    return k;
  }

  protected checked(labels: Labels): Labels {
    for (const n of Object.keys(labels)) {
      if (!this.labelNames.includes(n)) throw new Error(`${this.name}: unknown label "${n}"`);
    }
    return { ...labels };
  }

  /** Zeroes every series in place (handles cached by callers stay valid). */
  reset(): void {
    for (const cell of this.series.values()) this.zero(cell);
  }

  protected abstract zero(cell: S): void;
}

class CounterCell implements CounterSeries {
  value = 0;
  constructor(readonly labels: Labels) {}
  inc(value = 1): void {
    if (!(value >= 0) || !Number.isFinite(value)) throw new TypeError(`counter increment ${value}`);
    this.value += value;
  }
}

export class FastCounter extends FastMetric<CounterCell> {
  readonly type = 'counter' as const;

  /**
   * A handle on the series for this label set. The series only appears in the exposition once it
   * is incremented: a handle taken for a value that stays unknown exports nothing (not a 0).
   */
  labels(labels: Labels): CounterSeries {
    const checked = this.checked(labels);
    const k = this.key(checked);
    let cell = this.series.get(k);
    return {
      inc: (value = 1) => {
        if (!cell) {
          cell = this.series.get(k) ?? new CounterCell(checked);
          this.series.set(k, cell);
        }
        cell.inc(value);
      },
    };
  }

  protected zero(cell: CounterCell): void {
    cell.value = 0;
  }

  get(): MetricData {
    const values = [...this.series.values()].map((c) => ({ labels: c.labels, value: c.value }));
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }
}

class HistogramCell implements HistogramSeries {
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  constructor(
    readonly labels: Labels,
    private readonly bounds: readonly number[],
  ) {
    this.counts = new Float64Array(bounds.length);
  }
  observe(value: number): void {
    if (!Number.isFinite(value)) throw new TypeError(`histogram value ${value}`);
    this.sum += value;
    this.count += 1;
    const b = this.bounds;
    for (let i = 0; i < b.length; i++) {
      if (value <= b[i]!) {
        this.counts[i]! += 1;
        return;
      }
    }
  }
}

export class FastHistogram extends FastMetric<HistogramCell> {
  readonly type = 'histogram' as const;
  private readonly bounds: readonly number[];

  constructor(
    name: string,
    help: string,
    labelNames: readonly string[],
    buckets: readonly number[],
    registry: Registry,
  ) {
    super(name, help, labelNames, registry);
    this.bounds = [...buckets].sort((a, b) => a - b);
  }

  /** A handle on the series for this label set; like counters, it appears once observed. */
  labels(labels: Labels): HistogramSeries {
    const checked = this.checked(labels);
    const k = this.key(checked);
    let cell = this.series.get(k);
    return {
      observe: (value: number) => {
        if (!cell) {
          cell = this.series.get(k) ?? new HistogramCell(checked, this.bounds);
          this.series.set(k, cell);
        }
        cell.observe(value);
      },
    };
  }

  protected zero(cell: HistogramCell): void {
    cell.counts.fill(0);
    cell.sum = 0;
    cell.count = 0;
  }

  /** prom-client's histogram exposition: cumulative `_bucket`s with `le`, `+Inf`, `_sum`, `_count`. */
  get(): MetricData {
    const values: MetricValue[] = [];
    const bucket = `${this.name}_bucket`;
    for (const c of this.series.values()) {
      let acc = 0;
      this.bounds.forEach((le, i) => {
        acc += c.counts[i]!;
        values.push({ labels: { ...c.labels, le: String(le) }, value: acc, metricName: bucket });
      });
      values.push({ labels: { ...c.labels, le: '+Inf' }, value: c.count, metricName: bucket });
      values.push({ labels: c.labels, value: c.sum, metricName: `${this.name}_sum` });
      values.push({ labels: c.labels, value: c.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }
}
