/**
 * Shared budgets through `tokenmeter serve` (issue 14, docs/fleet.md "Shared budgets"): the proxy
 * waits for the fleet ledger before forwarding; a fleet-wide used-up budget answers 429 without
 * reaching the upstream even though this host's own view has room; settle replaces the
 * reservation with the real cost; Postgres down applies on_unreachable per budget.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServe } from '../../src/cli/serve.js';
import { createLogger } from '../../src/log.js';
import { makeTempDir } from '../e2e/helpers.js';
import { request, startTestUpstream } from '../proxy/http-helpers.js';
import { chatCompletionBody, waitFor } from './fixtures.js';
import { skipWithoutPostgres, startPostgres, type PgServer } from './postgres.js';

describe.skipIf(skipWithoutPostgres())('serve with shared block budgets (real Postgres)', () => {
  let server: PgServer;
  const cleanups: Array<() => Promise<void>> = [];
  beforeAll(async () => {
    server = await startPostgres();
  }, 60_000);
  afterAll(async () => {
    while (cleanups.length) await cleanups.pop()!();
    await server?.stop();
  });

  async function sidecar(name: string, onUnreachable: 'local' | 'block', upstreamUrl: string) {
    const tmp = makeTempDir('tm-fleet-budget-');
    cleanups.push(async () => tmp.remove());
    const cfg = join(tmp.dir, 'tokenmeter.yaml');
    writeFileSync(
      cfg,
      `fleet:\n  host: ${name}\n  budget_timeout: 500ms\n  postgres:\n    url: "\${TOKENMETER_PG_URL}"\n` +
        `budgets:\n  - name: team\n    period: day\n    limit: "1"\n    currency: USD\n    action: block\n` +
        `    on_unreachable: ${onUnreachable}\n`,
    );
    const lines: string[] = [];
    const running = await startServe(
      { upstream: upstreamUrl, port: '0', db: join(tmp.dir, 'audit.db'), config: cfg, logLevel: 'info' },
      { OTEL_SDK_DISABLED: 'true', TOKENMETER_PG_URL: server.url },
      tmp.dir,
      createLogger('info', (l) => void lines.push(l)),
    );
    cleanups.push(async () => running.stop());
    const base = `http://127.0.0.1:${running.port}`;
    const chat = () =>
      request(`${base}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: 'Bearer sk-test' },
        body: JSON.stringify({
          model: 'gpt-4o-mini',
          max_tokens: 100,
          messages: [{ role: 'user', content: 'hi' }],
        }),
      });
    return { base, chat, lines };
  }

  it('gates forwarding on the fleet ledger, settles real cost, and applies on_unreachable', async () => {
    let hits = 0;
    const upstream = await startTestUpstream((_q, res) => {
      hits += 1;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(chatCompletionBody(10, 5));
    }, cleanups);
    const strict = await sidecar('web-strict', 'block', upstream.url);
    const lenient = await sidecar('web-lenient', 'local', upstream.url);

    expect((await strict.chat()).status).toBe(200);
    expect((await lenient.chat()).status).toBe(200);
    const client = await server.connect();
    try {
      // Both settled: no reservation left, the real costs (not the bounds) are spent.
      await waitFor(async () => {
        const r = await client.query<{ n: string }>('SELECT count(*)::text AS n FROM budget_reservations');
        const s = await client.query<{ spent: string }>(
          "SELECT spent_nanos::text AS spent FROM budget_ledger WHERE budget = 'team'",
        );
        return r.rows[0]!.n === '0' && BigInt(s.rows[0]?.spent ?? '0') > 0n;
      });
      const spent = BigInt(
        (
          await client.query<{ spent: string }>(
            "SELECT spent_nanos::text AS spent FROM budget_ledger WHERE budget = 'team'",
          )
        ).rows[0]!.spent,
      );
      expect(spent).toBeLessThan(1_000_000n); // 2 × (10 in + 5 out) tokens of gpt-4o-mini: fractions of a cent

      // Another host spent the rest: this host's own view has room, the fleet's has not.
      await client.query("UPDATE budget_ledger SET spent_nanos = 1000000000 WHERE budget = 'team'");
      const before = hits;
      const refused = await strict.chat();
      expect(refused.status).toBe(429);
      expect(refused.body.toString()).toMatch(/budget_exceeded/);
      expect(refused.body.toString()).toMatch(/shared by the fleet/);
      expect(hits).toBe(before); // never reached the upstream
      await client.query("UPDATE budget_ledger SET spent_nanos = 0 WHERE budget = 'team'");
    } finally {
      await client.end();
    }

    await server.stopServer();
    try {
      const r1 = await strict.chat();
      expect(r1.status).toBe(429);
      expect(r1.body.toString()).toMatch(/fleet budget ledger .* is unreachable/);
      const r2 = await lenient.chat();
      expect(r2.status).toBe(200);
      const metrics = await request(`${lenient.base}/metrics`);
      expect(metrics.body.toString()).toMatch(/tokenmeter_fleet_budget_fallback_total\{budget="team"\} 1/);
      expect(lenient.lines.join('')).toContain('fleet budget ledger unreachable');
      expect(lenient.lines.join('')).not.toContain(server.password);
    } finally {
      await server.startServer();
    }
    await waitFor(async () => (await strict.chat()).status === 200);
  }, 40_000);
});
