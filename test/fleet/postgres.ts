/**
 * A throwaway PostgreSQL server for the fleet tests (issue 14): `initdb` a cluster in a temp dir,
 * start it on a free 127.0.0.1 port, create a role with a generated password and a database, and
 * hand back its URL. Start it once per test file (initdb takes a few seconds).
 *
 * Binaries: PATH first, then Debian's /usr/lib/postgresql/<ver>/bin. `initdb` refuses to run as
 * root, so as root the cluster runs as the `postgres` system user (`runuser -u postgres --`) and
 * the temp dir is chowned to it. Missing binaries skip the tests with a printed reason, except
 * under CI=true (`.ci/run` installs Debian's postgresql).
 *
 * Every binary runs asynchronously, through the ops tests' `run` (test/ops/binaries.ts): a vitest
 * worker that blocks its event loop for the seconds initdb and pg_ctl take cannot answer the main
 * process's RPC, which fails the run with "Timeout calling onTaskUpdate" although every test passed.
 */
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { delimiter, join } from 'node:path';
import pg from 'pg';
import { IN_CI, freePort, run as runBinary } from '../ops/binaries.js';

export interface PgBinaries {
  initdb: string;
  pgCtl: string;
}

/** `initdb` and `pg_ctl` from PATH, else from the newest /usr/lib/postgresql/<ver>/bin; or null. */
export function findPgBinaries(): PgBinaries | null {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter((d) => d !== '');
  const debian = '/usr/lib/postgresql';
  if (existsSync(debian)) {
    const versions = readdirSync(debian)
      .filter((v) => /^\d+$/.test(v))
      .sort((a, b) => Number(b) - Number(a));
    dirs.push(...versions.map((v) => join(debian, v, 'bin')));
  }
  for (const dir of dirs) {
    const initdb = join(dir, 'initdb');
    const pgCtl = join(dir, 'pg_ctl');
    if (existsSync(initdb) && existsSync(pgCtl)) return { initdb, pgCtl };
  }
  return null;
}

/** True (after printing why) when the fleet tests should skip; never in CI, where they must run. */
export function skipWithoutPostgres(): boolean {
  if (findPgBinaries() !== null || IN_CI) return false;
  console.warn(
    '[test/fleet] skipping: PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in ' +
      '/usr/lib/postgresql/<ver>/bin (apt-get install postgresql)',
  );
  return true;
}

export interface PgServer {
  /** postgres://tokenmeter:<password>@127.0.0.1:<port>/tokenmeter */
  url: string;
  password: string;
  port: number;
  /** Stops the server, keeping its data (to simulate an outage). */
  stopServer(): Promise<void>;
  /** Starts it again on the same port after stopServer(). */
  startServer(): Promise<void>;
  /** A client connected as the test role (caller ends it). */
  connect(): Promise<pg.Client>;
  /** Stops the server and deletes the cluster. */
  stop(): Promise<void>;
}

export async function startPostgres(): Promise<PgServer> {
  const bins = findPgBinaries();
  if (bins === null) throw new Error('PostgreSQL is required in CI but initdb/pg_ctl were not found');
  const asRoot = userInfo().uid === 0;
  const dir = mkdtempSync(join(tmpdir(), 'tm-pg-'));
  const data = join(dir, 'data');
  if (asRoot) {
    const id = async (flag: string): Promise<number> => {
      const r = await runBinary('id', [flag, 'postgres']);
      if (r.status !== 0) throw new Error('running as root but there is no `postgres` user to run initdb as');
      return Number(r.output.trim());
    };
    chownSync(dir, await id('-u'), await id('-g'));
  }
  const run = async (bin: string, args: string[]): Promise<void> => {
    const [cmd, argv] = asRoot ? ['runuser', ['-u', 'postgres', '--', bin, ...args]] : [bin, args];
    const r = await runBinary(cmd, argv, dir);
    if (r.status !== 0) throw new Error(`${bin} ${args.join(' ')} failed (${r.status}): ${r.output}`);
  };

  const port = await freePort();
  const password = randomBytes(12).toString('hex');
  // Local (socket) connections trust, for the setup below; TCP needs the generated password.
  await run(bins.initdb, [
    '-D',
    data,
    '-U',
    'postgres',
    '--auth-local=trust',
    '--auth-host=scram-sha-256',
    '-N',
  ]);
  const opts = `-c listen_addresses=127.0.0.1 -p ${port} -c unix_socket_directories=${dir} -c fsync=off`;
  const startServer = (): Promise<void> =>
    run(bins.pgCtl, ['-D', data, '-l', join(dir, 'log'), '-w', '-o', opts, 'start']);
  const stopServer = (): Promise<void> => run(bins.pgCtl, ['-D', data, '-m', 'fast', '-w', 'stop']);
  await startServer();

  try {
    const admin = new pg.Client({ host: dir, port, user: 'postgres', database: 'postgres' });
    await admin.connect();
    await admin.query(`CREATE ROLE tokenmeter LOGIN PASSWORD '${password}'`);
    await admin.query('CREATE DATABASE tokenmeter OWNER tokenmeter');
    await admin.end();
  } catch (err) {
    await stopServer();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  const url = `postgres://tokenmeter:${password}@127.0.0.1:${port}/tokenmeter`;
  let running = true;
  return {
    url,
    password,
    port,
    async stopServer() {
      await stopServer();
      running = false;
    },
    async startServer() {
      await startServer();
      running = true;
    },
    async connect() {
      const c = new pg.Client({ connectionString: url });
      // A test stopping the server must not crash the run through this client's error event.
      c.on('error', () => undefined);
      await c.connect();
      return c;
    },
    async stop() {
      if (running) await stopServer();
      running = false;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
