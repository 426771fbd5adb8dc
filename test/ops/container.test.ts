/**
 * Dockerfile and docker-compose.yml (DESIGN.md §2): the compose stack is wired to the shipped
 * prometheus.yml, alertmanager.yml and Grafana provisioning, every mounted file exists, and the
 * image's health check really distinguishes a healthy tokenmeter from an unhealthy one.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join, posix } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { findBinary, freePort } from './binaries.js';
import { COMPOSE_FILE, COMPOSE_PROMETHEUS_CONFIG, REPO, repoPath } from './paths.js';

interface ComposeService {
  build?: unknown;
  image?: string;
  hostname?: string;
  environment?: Record<string, string>;
  ports?: string[];
  volumes?: string[];
}

const compose = parse(readFileSync(COMPOSE_FILE, 'utf8')) as { services: Record<string, ComposeService> };
const prometheusConfig = parse(readFileSync(COMPOSE_PROMETHEUS_CONFIG, 'utf8')) as {
  rule_files: string[];
  alerting: { alertmanagers: { static_configs: { targets: string[] }[] }[] };
  scrape_configs: { job_name: string; static_configs: { targets: string[] }[] }[];
};
const dockerfile = readFileSync(repoPath('Dockerfile'), 'utf8');
const dockerignore = readFileSync(repoPath('.dockerignore'), 'utf8')
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l !== '' && !l.startsWith('#'));

/** `./src:/dst:ro` → { source: './src', target: '/dst' } (named volumes have no ./ prefix). */
function mounts(service: ComposeService): { source: string; target: string }[] {
  return (service.volumes ?? []).map((v) => {
    const [source, target] = v.split(':') as [string, string];
    return { source, target };
  });
}

/** Container ports a service publishes ("127.0.0.1:9090:9090" → 9090). */
function containerPorts(service: ComposeService): number[] {
  return (service.ports ?? []).map((p) => Number(p.split(':').at(-1)));
}

/** The ENV value the Dockerfile sets for `name`. */
function dockerEnv(name: string): string | undefined {
  return new RegExp(`\\b${name}=(\\S+)`).exec(dockerfile)?.[1];
}

describe('docker-compose.yml', () => {
  it('runs two tokenmeters, postgres, prometheus, alertmanager and grafana', () => {
    expect(Object.keys(compose.services).sort()).toEqual([
      'alertmanager',
      'grafana',
      'postgres',
      'prometheus',
      'tokenmeter',
      'tokenmeter-b',
    ]);
  });

  it('every file or directory it mounts from the repository exists', () => {
    const binds = Object.values(compose.services)
      .flatMap(mounts)
      .filter((m) => m.source.startsWith('.'));
    expect(binds.length).toBeGreaterThanOrEqual(5);
    for (const { source } of binds) expect(existsSync(join(REPO, source)), source).toBe(true);
  });

  it("compose/prometheus.yml's targets are compose services on the ports they listen on", () => {
    const tokenmeterTargets = prometheusConfig.scrape_configs
      .filter((j) => j.job_name === 'tokenmeter')
      .flatMap((j) => j.static_configs.flatMap((s) => s.targets));
    const alertmanagerTargets = prometheusConfig.alerting.alertmanagers.flatMap((a) =>
      a.static_configs.flatMap((s) => s.targets),
    );
    for (const target of [...tokenmeterTargets, ...alertmanagerTargets]) {
      const [host, port] = target.split(':') as [string, string];
      expect(compose.services[host], `${target} is not a compose service`).toBeDefined();
      expect(containerPorts(compose.services[host]!), target).toContain(Number(port));
    }
    // Both tokenmeters listen where the image says, on all interfaces inside the container.
    expect(tokenmeterTargets).toEqual([
      `tokenmeter:${dockerEnv('TOKENMETER_PORT')}`,
      `tokenmeter-b:${dockerEnv('TOKENMETER_PORT')}`,
    ]);
    expect(dockerEnv('TOKENMETER_HOST')).toBe('0.0.0.0');
  });

  it('mounts the shipped configs where prometheus, alertmanager and grafana read them', () => {
    const targetOf = (service: string, source: string) =>
      mounts(compose.services[service]!).find((m) => m.source === source)?.target;
    expect(targetOf('prometheus', './compose/prometheus.yml')).toBe('/etc/prometheus/prometheus.yml');
    // Prometheus resolves rule paths against its config file's directory, as from the repo root.
    const rulesInContainer = prometheusConfig.rule_files.map((f) => posix.resolve('/etc/prometheus', f));
    expect(rulesInContainer).toEqual([`${targetOf('prometheus', './alerts')}/tokenmeter.rules.yml`]);
    expect(targetOf('alertmanager', './alertmanager/alertmanager.yml')).toBe(
      '/etc/alertmanager/alertmanager.yml',
    );
    expect(targetOf('grafana', './dashboards/provisioning')).toBe('/etc/grafana/provisioning');
    expect(targetOf('grafana', './dashboards')).toBe('/var/lib/grafana/dashboards');
    expect(containerPorts(compose.services.prometheus!)).toContain(9090); // the datasource URL's port
  });

  it('takes the upstream from the environment and keeps the audit DB on a volume', () => {
    const tokenmeter = compose.services.tokenmeter!;
    expect(tokenmeter.build).toBeDefined();
    expect(tokenmeter.environment?.TOKENMETER_UPSTREAM).toMatch(/^\$\{TOKENMETER_UPSTREAM[:?}]/);
    expect(mounts(tokenmeter).map((m) => m.target)).toContain('/data');
    expect(dockerEnv('TOKENMETER_DB')).toBe('/data/tokenmeter.db');
  });

  it('a fleet: both tokenmeters ship to the postgres service with the password from the environment', () => {
    const pgService = compose.services.postgres!;
    expect(pgService.image).toMatch(/^postgres:\d+\.\d+/); // official image, pinned
    expect(mounts(pgService).map((m) => m.target)).toContain('/var/lib/postgresql/data');
    expect(pgService.environment?.POSTGRES_PASSWORD).toMatch(/^\$\{POSTGRES_PASSWORD:-[^}]+\}$/);
    const published = new Set<string>();
    const names = new Set<string>();
    for (const name of ['tokenmeter', 'tokenmeter-b']) {
      const s = compose.services[name]!;
      expect(s.environment?.TOKENMETER_PG_URL, name).toMatch(
        /^postgres:\/\/tokenmeter:\$\{POSTGRES_PASSWORD:-[^}]+\}@postgres:5432\/tokenmeter$/,
      );
      expect(s.environment?.TOKENMETER_UPSTREAM).toMatch(/^\$\{TOKENMETER_UPSTREAM[:?}]/);
      expect(mounts(s).map((m) => m.target)).toContain('/data');
      for (const p of s.ports ?? []) published.add(p.split(':').slice(0, -1).join(':'));
      names.add(s.hostname ?? '');
    }
    expect(published.size, 'each tokenmeter on its own host port').toBe(2);
    expect([...names].filter((h) => h !== '').length, 'distinct fleet host names').toBe(2);
    // Separate audit logs: a volume each.
    expect(mounts(compose.services.tokenmeter!)[0]!.source).not.toBe(
      mounts(compose.services['tokenmeter-b']!)[0]!.source,
    );
  });

  const docker = findBinary('docker');
  const composeAvailable =
    docker !== null && spawnSync(docker, ['compose', 'version'], { encoding: 'utf8' }).status === 0;
  // Optional even in CI: the container checks above do not need a Docker daemon.
  if (!composeAvailable)
    console.warn('[test/ops] skipping `docker compose config`: no docker binary with compose');
  it.skipIf(!composeAvailable)('`docker compose config` accepts it', () => {
    const r = spawnSync(docker!, ['compose', '-f', COMPOSE_FILE, 'config', '--quiet'], {
      encoding: 'utf8',
      env: { ...process.env, TOKENMETER_UPSTREAM: 'http://127.0.0.1:9/v1' },
    });
    expect(r.status, r.stderr).toBe(0);
  });
});

describe('Dockerfile', () => {
  it('builds in one stage and runs production dependencies only, as a non-root user, on Node LTS', () => {
    const stages = [...dockerfile.matchAll(/^FROM\s+(\S+)(?:\s+AS\s+(\S+))?/gm)].map((m) => m[2]);
    expect(stages).toEqual(['build', 'runtime']);
    expect(dockerfile).toMatch(/^ARG NODE_IMAGE=node:24-bookworm-slim$/m);
    const [build, runtime] = dockerfile.split(/^FROM .* AS runtime$/m) as [string, string];
    expect(build).toMatch(/python3 make g\+\+/);
    expect(build).toMatch(/npm ci/);
    expect(build).toMatch(/npm run build/);
    expect(build).toMatch(/npm prune --omit=dev/);
    expect(runtime).toMatch(/COPY --from=build \/app\/node_modules/);
    expect(runtime).not.toMatch(/npm (ci|install)/);
    const user = /^USER\s+(\S+)/m.exec(runtime)?.[1];
    expect(user).toBeDefined();
    expect(['root', '0']).not.toContain(user);
    expect(runtime).toMatch(/^VOLUME \["\/data"\]$/m);
    expect(runtime).toMatch(/^ENTRYPOINT \["node", "bin\/tokenmeter\.js"\]$/m);
    expect(runtime).toMatch(/^CMD \["serve"\]$/m);
  });

  it('copies only files that exist and that .dockerignore does not exclude', () => {
    const sources = [...dockerfile.matchAll(/^COPY\s+(?!--from)(.+)\s+\S+$/gm)].flatMap((m) =>
      m[1]!.split(/\s+/),
    );
    expect(sources).toContain('src');
    for (const source of sources) {
      expect(existsSync(join(REPO, source)), source).toBe(true);
      expect(dockerignore, `${source} is excluded by .dockerignore`).not.toContain(source);
    }
    for (const secret of ['.git', 'node_modules', '*.db', '.env']) expect(dockerignore).toContain(secret);
  });

  it('the HEALTHCHECK command passes on a 200 /healthz and fails on a 503 or a dead port', async () => {
    const cmd = /^HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])$/m.exec(dockerfile)?.[1];
    expect(cmd).toBeDefined();
    const [binary, ...args] = JSON.parse(cmd!) as string[];
    expect(binary).toBe('node'); // the slim image has no curl
    let status = 200;
    const paths: string[] = [];
    const server = createServer((req, res) => {
      paths.push(req.url ?? '');
      res.writeHead(status).end();
    });
    const port = await freePort();
    await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
    // Asynchronous child: the server answering it lives in this process's event loop.
    const check = () =>
      new Promise<number | null>((resolve) => {
        const child = spawn(process.execPath, args, {
          env: { ...process.env, TOKENMETER_PORT: String(port) },
          stdio: 'ignore',
        });
        child.on('exit', (code) => resolve(code));
      });
    try {
      expect(await check()).toBe(0);
      status = 503;
      expect(await check()).toBe(1);
    } finally {
      await new Promise((r) => server.close(r));
    }
    expect(await check()).toBe(1);
    expect(paths).toEqual(['/healthz', '/healthz']);
  });
});
