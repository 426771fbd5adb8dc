/**
 * The benchmark's baseline proxy (docs/benchmarks.md): a bare node:http pass-through and nothing
 * else. A keep-alive agent to the upstream, the request piped up, the response head copied and the
 * body piped down; no parsing, no metering, no retry. Whatever tokenmeter costs beyond this is the
 * price of what it does, not of being a Node.js proxy.
 *
 * Run as a child process: `node --import tsx bench/bare-proxy.ts --upstream http://127.0.0.1:PORT`;
 * prints `{"port":N}` on stdout.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

function strip(headers: http.IncomingHttpHeaders): http.OutgoingHttpHeaders {
  const out: http.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
  return out;
}

const flag = process.argv.indexOf('--upstream');
const upstream = new URL(process.argv[flag + 1] ?? 'http://127.0.0.1:1');
const agent = new http.Agent({ keepAlive: true, maxFreeSockets: 256 });

const server = http.createServer((req, res) => {
  const up = http.request(
    {
      host: upstream.hostname,
      port: upstream.port,
      method: req.method,
      path: req.url,
      headers: { ...strip(req.headers), host: upstream.host },
      agent,
    },
    (upRes) => {
      res.writeHead(upRes.statusCode ?? 502, strip(upRes.headers));
      upRes.pipe(res);
    },
  );
  up.on('error', () => {
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'application/json' });
    res.end('{"error":{"message":"bare proxy: upstream error"}}');
  });
  res.on('close', () => {
    if (!res.writableFinished) up.destroy();
  });
  req.pipe(up);
});

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: (server.address() as AddressInfo).port }) + '\n');
});
process.on('SIGTERM', () => {
  agent.destroy();
  server.closeAllConnections();
  server.close(() => process.exit(0));
});
