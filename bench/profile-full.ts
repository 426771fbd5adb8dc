/**
 * Helper for investigating the full-runtime cost: runs only tm-full non-streamed load for a few
 * seconds (use with `node --cpu-prof --import tsx bench/profile-full.ts`). Not part of `npm run bench`.
 */
import http from 'node:http';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SILENT_LOGGER } from '../src/log.js';
import { createProxyServer } from '../src/proxy/server.js';
import { buildRuntime } from '../src/runtime.js';
import { benchSettings } from './settings.js';
import { startBenchUpstream } from './upstream.js';

const up = await startBenchUpstream();
const settings = benchSettings(`${up.url}/v1`, join(mkdtempSync(join(tmpdir(), 'tm-prof-')), 'p.db'));
const rt = await buildRuntime(settings, SILENT_LOGGER, { ...process.env, OTEL_SDK_DISABLED: 'true' });
const proxy = createProxyServer({ settings, meter: rt.meter, log: SILENT_LOGGER });
const { port } = await proxy.listen();
const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'x' }] });
const one = () =>
  new Promise<void>((res) => {
    const r = http.request(
      {
        port,
        host: '127.0.0.1',
        path: '/v1/chat/completions',
        method: 'POST',
        agent,
        headers: { 'content-type': 'application/json', authorization: 'Bearer sk-x' },
      },
      (s) => {
        s.resume();
        s.on('end', () => res());
      },
    );
    r.end(body);
  });
const t0 = Date.now();
let n = 0;
await Promise.all(
  Array.from({ length: 16 }, async () => {
    while (Date.now() - t0 < 4000) {
      await one();
      n++;
    }
  }),
);
console.log('rps', n / 4);
agent.destroy();
await proxy.close(0);
await rt.close();
await up.close();
