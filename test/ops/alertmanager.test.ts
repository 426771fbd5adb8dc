/**
 * The shipped alertmanager/alertmanager.yml against the real Alertmanager: it loads, and an alert
 * posted to its API v2 is accepted, routed by severity, and delivered to a webhook on 127.0.0.1.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import {
  ALERTMANAGER,
  freePort,
  skipWithoutBinary,
  startAlertmanager,
  waitFor,
  type Child,
} from './binaries.js';
import { ALERTMANAGER_CONFIG } from './paths.js';

interface AlertmanagerConfig {
  route: { receiver: string; group_by: string[]; routes: { matchers: string[]; receiver: string }[] };
  receivers: { name: string; webhook_configs?: { url: string }[] }[];
}

const shipped = parse(readFileSync(ALERTMANAGER_CONFIG, 'utf8')) as AlertmanagerConfig;
const scratch = mkdtempSync(join(tmpdir(), 'tokenmeter-am-'));
const children: Child[] = [];
afterAll(async () => {
  await Promise.all(children.map((c) => c.stop()));
  rmSync(scratch, { recursive: true, force: true });
});

async function startAlertmanagerHere(
  configFile: string,
  name: string,
): Promise<{ url: string; child: Child }> {
  const started = await startAlertmanager(configFile, join(scratch, name));
  children.push(started.child);
  return started;
}

describe('alertmanager.yml', () => {
  it('routes by severity to a critical and a warning receiver, grouped by alertname, budget, upstream', () => {
    expect(shipped.route.group_by).toEqual(['alertname', 'budget', 'upstream']);
    const bySeverity = Object.fromEntries(
      shipped.route.routes.map((r) => [r.matchers.join(','), r.receiver]),
    );
    expect(bySeverity).toEqual({ 'severity="critical"': 'critical', 'severity="warning"': 'warning' });
    expect(shipped.receivers.map((r) => r.name).sort()).toEqual(['critical', 'warning']);
  });
});

describe.skipIf(skipWithoutBinary('alertmanager tests', ALERTMANAGER))(
  'alertmanager.yml: real Alertmanager',
  () => {
    it('the shipped file loads as is', async () => {
      const { url, child } = await startAlertmanagerHere(ALERTMANAGER_CONFIG, 'shipped');
      const status = (await (await fetch(`${url}/api/v2/status`)).json()) as { config: { original: string } };
      expect(status.config.original).toContain('receiver: critical');
      await child.stop();
    });

    it(
      'an alert posted to the API reaches the receiver its severity routes to',
      { timeout: 60_000 },
      async () => {
        // Same routing, webhooks pointed at a local receiver instead of the example host.
        const received: { receiver: string; alerts: { labels: Record<string, string> }[] }[] = [];
        const webhookPort = await freePort();
        const webhook: Server = createServer((req, res) => {
          let body = '';
          req.on('data', (c: Buffer) => (body += c.toString('utf8')));
          req.on('end', () => {
            received.push(JSON.parse(body) as (typeof received)[number]);
            res.end('ok');
          });
        });
        await new Promise<void>((r) => webhook.listen(webhookPort, '127.0.0.1', r));
        try {
          const local = structuredClone(shipped);
          for (const receiver of local.receivers) {
            for (const hook of receiver.webhook_configs ?? []) {
              hook.url = `http://127.0.0.1:${webhookPort}/${receiver.name}`;
            }
          }
          const configFile = join(scratch, 'local.yml');
          writeFileSync(configFile, stringify(local));
          const { url } = await startAlertmanagerHere(configFile, 'local');

          const alerts = [
            {
              labels: {
                alertname: 'TokenmeterBudgetExceeded',
                severity: 'critical',
                budget: 'team-a',
                currency: 'CNY',
              },
            },
            {
              labels: {
                alertname: 'TokenmeterUnpricedModel',
                severity: 'warning',
                upstream: 'cailag',
                model: 'x',
              },
            },
          ].map((a) => ({ ...a, annotations: { summary: 'test' }, startsAt: new Date().toISOString() }));
          const post = await fetch(`${url}/api/v2/alerts`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify(alerts),
          });
          expect(post.status).toBe(200);

          const stored = (await (await fetch(`${url}/api/v2/alerts`)).json()) as {
            labels: Record<string, string>;
            receivers: { name: string }[];
          }[];
          const receiverOf = Object.fromEntries(
            stored.map((a) => [a.labels.alertname, a.receivers.map((r) => r.name)]),
          );
          expect(receiverOf).toEqual({
            TokenmeterBudgetExceeded: ['critical'],
            TokenmeterUnpricedModel: ['warning'],
          });

          // The critical route waits 10s (group_wait) before notifying.
          const delivered = await waitFor(
            'critical webhook',
            async () => received.find((n) => n.receiver === 'critical'),
            40_000,
          );
          expect(delivered.alerts.map((a) => a.labels.budget)).toEqual(['team-a']);
        } finally {
          await new Promise((r) => webhook.close(r));
        }
      },
    );
  },
);
