/**
 * The node:http keep-alive agents that WebSocket upgrades use (docs/proxy.md, "Upstream
 * connections"; HTTP exchanges use undici's pool, test/proxy/upstream-pool.test.ts): pooled
 * sockets are closed before the upstream would close them (after the free-socket timeout, or 1 s
 * before the upstream's own `Keep-Alive: timeout=N`), and a socket carries no timer while it is
 * used or pooled (issue 11: the per-socket timer cost every request two `setTimeout` calls, a
 * `timeout` listener and a timer refresh per read and write).
 */
import http from 'node:http';
import type { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createAgents } from '../../src/proxy/context.js';
import type { UpstreamSettings } from '../../src/config/types.js';
import { upstreamSettings } from './helpers.js';
import { startKeepAliveUpstream, type KeepAliveUpstream } from './http-helpers.js';

function get(agent: http.Agent, url: string): Promise<{ status: number; socket: Socket }> {
  return new Promise((resolve, reject) => {
    const req = http.get(`${url}/v1/models`, { agent }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, socket: req.socket as Socket }));
    });
    req.on('error', reject);
  });
}

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

async function setup(
  opts: { hint?: string; freeSocketTimeoutMs?: number } = {},
): Promise<{ up: KeepAliveUpstream; agent: http.Agent; settings: UpstreamSettings }> {
  const up = await startKeepAliveUpstream(cleanups, opts.hint);
  const agents = createAgents(
    opts.freeSocketTimeoutMs === undefined ? {} : { freeSocketTimeoutMs: opts.freeSocketTimeoutMs },
  );
  cleanups.push(async () => agents.destroy());
  const settings = upstreamSettings('default', `${up.url}/v1`);
  return { up, agent: agents.agentFor(settings), settings };
}

describe('upstream agents', () => {
  it('reuse one pooled socket for back-to-back requests', async () => {
    const { up, agent } = await setup({ freeSocketTimeoutMs: 2000 });
    for (let i = 0; i < 5; i++) expect((await get(agent, up.url)).status).toBe(200);
    expect(up.connections).toBe(1);
  });

  it('close a pooled socket after the free-socket timeout, never later', async () => {
    const { up, agent } = await setup({ freeSocketTimeoutMs: 600 });
    const closed = up.closedAfter();
    const { socket } = await get(agent, up.url);
    const ms = await closed;
    // Closed by the sweep (every 250 ms) after at least the timeout less one sweep, never later
    // than the timeout (give or take a timer's lateness).
    expect(ms).toBeGreaterThan(300);
    expect(ms).toBeLessThan(700);
    expect(socket.destroyed).toBe(true);
    await new Promise((r) => setTimeout(r, 20));
    expect(Object.values(agent.freeSockets).flat()).toHaveLength(0);
  });

  it("close a pooled socket 1 s before the upstream's Keep-Alive hint when that comes first", async () => {
    const { up, agent } = await setup({ hint: 'timeout=2', freeSocketTimeoutMs: 30_000 });
    const closed = up.closedAfter();
    await get(agent, up.url);
    const ms = await closed;
    expect(ms).toBeGreaterThan(600);
    expect(ms).toBeLessThan(1100);
  });

  it('never pool a socket whose upstream announces a keep-alive of 1 s or less', async () => {
    const { up, agent } = await setup({ hint: 'timeout=1', freeSocketTimeoutMs: 30_000 });
    const closed = up.closedAfter();
    await get(agent, up.url);
    expect(await closed).toBeLessThan(300);
    await get(agent, up.url);
    expect(up.connections).toBe(2);
  });

  it('keep no timer on a socket, in use or pooled (none to refresh per read and write)', async () => {
    const { up, agent } = await setup();
    const seen: Array<number | undefined> = [];
    await new Promise<void>((resolve, reject) => {
      const req = http.get(`${up.url}/v1/models`, { agent }, (res) => {
        seen.push((req.socket as Socket & { timeout?: number }).timeout);
        res.resume();
        res.on('end', resolve);
      });
      req.on('error', reject);
    });
    const pooled = Object.values(agent.freeSockets).flat()[0] as (Socket & { timeout?: number }) | undefined;
    expect(pooled).toBeDefined();
    seen.push(pooled!.timeout);
    // Node leaves `timeout` undefined until a timer is set; 0 means one was cleared.
    for (const t of seen) expect(t ?? 0).toBe(0);
  });
});
