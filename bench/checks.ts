/**
 * What the benchmark checks besides timing (docs/benchmarks.md): tokenmeter's self-reported
 * overhead histogram, that every request it served left an audit row and (traces row) a span at the
 * receiver, and the component benchmarks (bench/decoders.ts, bench/audit.ts) as extra rows, each
 * run in its own child process so a broken module only skips its rows.
 */
import { spawn } from 'node:child_process';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import { openSqlite } from '../src/sinks/audit/sqlite.js';
import { METRIC } from '../src/semconv.js';
import type { Target } from './phases.js';
import { round, type Table } from './report.js';

const OVERHEAD_LINE = new RegExp(`^${METRIC.proxyOverhead}_(sum|count)(?:\\{[^}]*\\})? ([0-9.eE+-]+)$`);

function getText(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent: false }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
      })
      .on('error', reject);
  });
}

/** tokenmeter's own overhead histogram on /metrics, summed over its series (one per upstream). */
export async function selfReportedOverhead(
  table: Table,
  t: Target,
): Promise<Record<string, number> | string> {
  let text: string;
  try {
    text = await getText(`${t.base}/metrics`);
  } catch (err) {
    return (err as Error).message;
  }
  let sum = 0;
  let count = 0;
  for (const line of text.split('\n')) {
    const m = OVERHEAD_LINE.exec(line);
    if (m?.[1] === 'sum') sum += Number(m[2]);
    else if (m?.[1] === 'count') count += Number(m[2]);
  }
  table.add({
    figure: `self-reported overhead mean (${METRIC.proxyOverhead})`,
    target: t.name,
    value: count > 0 ? (sum / count) * 1000 : null,
    unit: 'ms',
    verdict: count > 0 ? 'info' : 'skipped',
    note: count > 0 ? `${count} observations` : 'metric not exported',
  });
  return { sum_seconds: sum, count };
}

/** Rows in the audit DB after the serve process stopped (SIGTERM drains and flushes). */
export function auditRows(table: Table, t: Target, dbPath: string): Record<string, number> | string {
  let rows: number;
  try {
    const db = openSqlite(dbPath, { readonly: true, fileMustExist: true });
    rows = (db.prepare('SELECT count(*) AS n FROM requests').get() as { n: number }).n;
    db.close();
  } catch (err) {
    table.add({
      figure: 'audit rows written ÷ requests sent',
      target: t.name,
      value: null,
      unit: '',
      verdict: 'skipped',
      note: (err as Error).message,
    });
    return (err as Error).message;
  }
  table.add({
    figure: 'audit rows written ÷ requests sent',
    target: t.name,
    value: rows / t.sent,
    unit: '',
    verdict: 'info',
    note: `${rows} rows for ${t.sent} requests (expected 1.000)`,
  });
  return { rows, sent: t.sent };
}

export async function spansReceived(table: Table, t: Target, receiverBase: string): Promise<unknown> {
  try {
    const s = JSON.parse(await getText(`${receiverBase}/stats`)) as {
      spans: number;
      requests: number;
      unparsed: number;
      checked: number;
      mismatched: number;
    };
    table.add({
      figure: 'spans received by the OTLP receiver ÷ requests sent',
      target: t.name,
      value: s.spans / t.sent,
      unit: '',
      verdict: 'info',
      note:
        `${s.spans} spans in ${s.requests} exports for ${t.sent} requests; byte count checked by a full parse ` +
        `on ${s.checked} exports, ${s.mismatched} differed${s.unparsed ? `; ${s.unparsed} unparsed` : ''}`,
    });
    return { ...s, sent: t.sent };
  } catch (err) {
    return (err as Error).message;
  }
}

/** Runs `node --import tsx bench/<file>` and parses the JSON object it prints. */
function runComponent(file: string, timeoutMs: number): Promise<Record<string, number>> {
  const script = fileURLToPath(new URL(file, import.meta.url));
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString('utf8')));
    p.stderr.on('data', (c: Buffer) => (err += c.toString('utf8')));
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('exit', (code) => {
      clearTimeout(timer);
      const start = out.indexOf('{');
      try {
        if (code !== 0 || start < 0)
          throw new Error(`exit ${code}: ${err.trim().split('\n').slice(-3).join(' | ')}`);
        resolve(JSON.parse(out.slice(start)) as Record<string, number>);
      } catch (e) {
        reject(e as Error);
      }
    });
  });
}

export async function componentBenches(table: Table): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  for (const [file, name] of [
    ['./decoders.ts', 'decoders'],
    ['./audit.ts', 'audit'],
  ] as const) {
    try {
      const r = await runComponent(file, 60_000);
      out[name] = r;
      for (const [k, v] of Object.entries(r)) {
        const ratio = /ratio/.test(k);
        table.add({
          figure: `component ${name}: ${k}`,
          target: 'component',
          value: round(v, 4),
          unit: '',
          verdict: 'info',
          note: ratio ? 'ratio to the baseline in the same run' : undefined,
        });
      }
    } catch (err) {
      out[name] = { error: (err as Error).message };
      table.add({
        figure: `component ${name}`,
        target: 'component',
        value: null,
        unit: '',
        verdict: 'skipped',
        note: (err as Error).message,
      });
    }
  }
  return out;
}
