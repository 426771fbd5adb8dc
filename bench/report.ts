/**
 * Rows of the benchmark table (docs/benchmarks.md): each has the measured value, the target it is
 * held to (if any), a verdict, and its ratio against the baseline measured in the same run.
 * Verdicts are given only on the `tokenmeter serve` rows; the other rows are references (`info`).
 */
export type Verdict = 'PASS' | 'FAIL' | 'info' | 'skipped';

export interface Goal {
  op: '<=' | '>=' | '==';
  limit: number;
}

export interface Row {
  figure: string;
  /** Which process the row measures: direct, bare, tm-serve, tm-traces, tm-noop, component… */
  target: string;
  value: number | null;
  unit: string;
  goal?: Goal;
  verdict: Verdict;
  /** value ÷ the baseline of the same run (see `ratioOf`). */
  ratio?: number;
  ratioOf?: string;
  note?: string;
}

/** Rows that carry a verdict; the others are references. */
export const JUDGED = new Set(['tm-serve', 'tm-traces']);

export function judge(value: number | null, goal: Goal | undefined, target: string): Verdict {
  if (value === null || Number.isNaN(value)) return 'skipped';
  if (!goal || !JUDGED.has(target)) return 'info';
  const ok =
    goal.op === '<='
      ? value <= goal.limit
      : goal.op === '>='
        ? value >= goal.limit
        : Math.abs(value - goal.limit) < 1e-9;
  return ok ? 'PASS' : 'FAIL';
}

export class Table {
  readonly rows: Row[] = [];

  add(r: Omit<Row, 'verdict'> & { verdict?: Verdict }): void {
    this.rows.push({ ...r, verdict: r.verdict ?? judge(r.value, r.goal, r.target) });
  }

  failures(): Row[] {
    return this.rows.filter((r) => r.verdict === 'FAIL');
  }

  format(): string {
    const header = ['figure', 'row', 'value', 'target', 'verdict', 'vs baseline (same run)'];
    const lines = this.rows.map((r) => [
      r.figure,
      r.target,
      r.value === null ? '—' : `${fmt(r.value)}${r.unit ? ' ' + r.unit : ''}`,
      r.goal ? `${r.goal.op === '==' ? '=' : r.goal.op === '<=' ? '≤' : '≥'} ${fmt(r.goal.limit)}` : '',
      r.verdict,
      [r.ratio === undefined ? '' : `${fmt(r.ratio)}× ${r.ratioOf ?? ''}`.trim(), r.note ?? '']
        .filter(Boolean)
        .join('; '),
    ]);
    const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
    const out: string[] = [];
    let lastFigure = '';
    for (const l of [header, ...lines]) {
      const shown = l[0] === lastFigure ? ['', ...l.slice(1)] : l;
      lastFigure = l[0]!;
      out.push(
        shown
          .map((c, i) => (i === 2 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
          .join('  ')
          .trimEnd(),
      );
    }
    return out.join('\n') + '\n';
  }
}

export function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const a = Math.abs(n);
  const digits = a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3;
  return n.toFixed(digits);
}

export const round = (n: number, d = 4): number =>
  Number.isFinite(n) ? Math.round(n * 10 ** d) / 10 ** d : n;
