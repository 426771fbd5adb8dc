/**
 * Console reads run on a worker thread, never on the event loop that carries the proxied traffic
 * (docs/console.md, "Read-only, and reads off the event loop"): against a real `tokenmeter serve` whose audit
 * file holds 300k requests, proxied requests keep answering while a 90-day report runs; a query
 * past its timeout is a 503 and the thread is replaced; a crashed thread is replaced by the next
 * query; a flood of queries is capped.
 */
import { renameSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createConsole } from '../../src/console/index.js';
import { AuditReader, ConsoleUnavailable } from '../../src/console/reader.js';
import { SILENT_LOGGER } from '../../src/log.js';
import { loadPriceBook } from '../../src/pricing/index.js';
import { makeTempDir, type TempDir } from '../e2e/helpers.js';
import { request } from '../proxy/http-helpers.js';
import { call, fillAuditDb, startConsoleWorld, type ConsoleWorld } from './world.js';

const ROWS = 300_000;
/** About a second over ROWS rows here: four GROUP BY scans of the whole 90-day window. */
const HEAVY = '/-/api/report?since=90d&by=app,model,upstream,day';

let big: TempDir;
let bigDb: string;
let world: ConsoleWorld;

beforeAll(async () => {
  big = makeTempDir('tm-console-big-');
  bigDb = join(big.dir, 'audit.db');
  fillAuditDb(bigDb, ROWS);
  world = await startConsoleWorld('', { db: bigDb });
}, 120_000);
afterAll(async () => {
  await world?.stop();
  big?.remove();
});

const chat = () =>
  call(world, '/v1/chat/completions', {
    method: 'POST',
    headers: { authorization: 'Bearer sk-console-test-key', 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'ping' }] }),
  });

const listQuery = { op: 'listRequests', filter: {}, limit: 1 } as const;

describe('console reads off the event loop', () => {
  it('20 proxied requests all answer while one 90-day report over 300k rows is still running', async () => {
    // The reader thread starts on first use: start it, so the report below is the only wait.
    expect((await call(world, '/-/api/requests?limit=1')).status).toBe(200);
    const done: string[] = [];
    const report = call(world, HEAVY).then((r) => {
      done.push('console');
      return r;
    });
    // Let the console request reach the server: run on the event loop, it would hold it from here.
    await sleep(100);
    for (let i = 0; i < 20; i++) {
      const r = await chat();
      expect(r.status).toBe(200);
      done.push(`proxied ${i}`);
    }
    const r = await report;
    // Orders, not durations: every proxied request finished before the one console query did.
    expect(done).toEqual([...Array.from({ length: 20 }, (_, i) => `proxied ${i}`), 'console']);
    expect(r.status).toBe(200);
    const body = JSON.parse(r.body.toString()) as { groups: unknown[]; totals: Array<{ requests: number }> };
    expect(body.totals.reduce((n, t) => n + t.requests, 0)).toBeGreaterThanOrEqual(ROWS);
    expect(body.groups.length).toBeGreaterThan(1000);
  });

  it('a query past its timeout is a 503 JSON saying so; the thread is replaced and the next query answers', async () => {
    const settings = world.running.settings;
    const consoleApp = createConsole({
      settings,
      priceBook: loadPriceBook({
        files: [],
        presets: false,
        multipliers: settings.multipliers,
        upstreams: [],
      }),
      log: SILENT_LOGGER,
      reader: { timeoutMs: 100 },
    });
    const server = http.createServer((req, res) => consoleApp.handler(req, res));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const slow = await request(`${base}${HEAVY}`);
      expect(slow.status).toBe(503);
      expect(slow.headers['content-type']).toMatch(/^application\/json/);
      expect(slow.headers['retry-after']).toBe('5');
      expect(JSON.parse(slow.body.toString())).toEqual({
        error:
          'console query timed out after 0.1 s (the audit log is large for this window); narrow since/until or try again',
      });
      const next = await request(`${base}/-/api/requests?limit=1`);
      expect(next.status).toBe(200);
      expect((JSON.parse(next.body.toString()) as { rows: unknown[] }).rows).toHaveLength(1);
    } finally {
      consoleApp.close();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('starts its thread on first use; after a crash the query in flight is a 503 and the next one works', async () => {
    const reader = new AuditReader(bigDb);
    try {
      expect(reader.threadLive).toBe(false);
      expect(await reader.run(listQuery)).toHaveLength(1);
      expect(reader.threadLive).toBe(true);
      // The thread exits before it reads this query.
      reader.crashForTests();
      const lost = reader.run(listQuery);
      await expect(lost).rejects.toBeInstanceOf(ConsoleUnavailable);
      await expect(lost).rejects.toThrow(
        /reader stopped \(.*exited with code 1\); it restarts with the next query/,
      );
      expect(await reader.run(listQuery)).toHaveLength(1);
    } finally {
      reader.close();
    }
  });

  it('caps what waits: past maxWaiting a query is refused at once with "console busy"', async () => {
    const reader = new AuditReader(bigDb, { maxWaiting: 2 });
    try {
      const outcomes = await Promise.all(
        Array.from({ length: 5 }, () =>
          reader.run(listQuery).then(
            () => 'answered',
            (err: Error) => (err instanceof ConsoleUnavailable ? err.message : `unexpected: ${err.message}`),
          ),
        ),
      );
      expect(outcomes.slice(0, 2)).toEqual(['answered', 'answered']);
      for (const o of outcomes.slice(2)) expect(o).toMatch(/^console busy: 2 queries already wait/);
    } finally {
      reader.close();
    }
  });

  it('reopens the file when the one it read was replaced at the path', async () => {
    const dir = makeTempDir('tm-console-reopen-');
    const path = join(dir.dir, 'audit.db');
    const reader = new AuditReader(path);
    try {
      fillAuditDb(path, 1);
      const all = { op: 'listRequests', filter: {}, limit: 10 } as const;
      expect(await reader.run(all)).toHaveLength(1);
      fillAuditDb(join(dir.dir, 'next.db'), 3);
      renameSync(join(dir.dir, 'next.db'), path);
      expect(await reader.run(all)).toHaveLength(3);
      rmSync(path);
      await expect(reader.run(all)).rejects.toThrow(/unable to open database file/);
    } finally {
      reader.close();
      dir.remove();
    }
  });

  it('close() answers what is still running with a 503 and stops the thread', async () => {
    const reader = new AuditReader(bigDb);
    const now = Date.now();
    const running = reader.run({
      op: 'report',
      options: { fromMs: now - 90 * 86_400_000, toMs: now, by: ['app', 'model', 'upstream', 'day'] },
    });
    await sleep(50);
    reader.close();
    await expect(running).rejects.toThrow(/the console is shutting down/);
    expect(reader.threadLive).toBe(false);
    await expect(reader.run(listQuery)).rejects.toBeInstanceOf(ConsoleUnavailable);
  });
});
