/**
 * The console's view of the fleet Postgres (issue 14, docs/console.md "Fleet"): `tokenmeter report
 * --fleet`'s own report (`buildFleetReport`, so the per-currency totals are the CLI's to the byte)
 * and every host's shipped rows, plus this host's own shipper state.
 *
 * One small pool owned by the console, created on the first fleet request and ended with the
 * console: at most 2 connections, a short connect timeout, and a statement timeout so a slow query
 * cannot hold the page (or a connection) for long. Postgres I/O is asynchronous, so unlike the
 * SQLite reads it needs no reader thread. Postgres down or slow is a `ConsoleUnavailable` (503)
 * naming the server with the password masked; the pool never lets a lost connection crash serve.
 */
import type pg from 'pg';
import { buildFleetReport, type Report, type ReportOptions } from '../cli/report.js';
import type { FleetSettings } from '../config/types.js';
import { TokenmeterError } from '../errors.js';
import {
  openFleetPool,
  queryFailedMessage,
  requireFleetSchema,
  unreachableMessage,
} from '../fleet/connect.js';
import { queryFleetHosts, type FleetHostRows } from '../fleet/queries.js';
import { redactUrl } from '../fleet/redact.js';
import type { ShipperStatus } from '../fleet/shipper.js';
import { ConsoleUnavailable } from './reader.js';

/** This host's shipper, read-only (serve's runtime owns it). */
export interface ShipperView {
  status(): ShipperStatus;
}

/** Pool limits: a page's few queries, never a second copy of the shipper's pool. */
const POOL_MAX = 2;
const CONNECT_TIMEOUT_MS = 3_000;
/** Like the audit log reader's 10 s query timeout; the client-side one covers a silent server. */
const STATEMENT_TIMEOUT_MS = 10_000;
const QUERY_TIMEOUT_MS = 12_000;
const IDLE_TIMEOUT_MS = 30_000;

export interface FleetAnswer {
  report: Report;
  hosts: FleetHostRows[];
}

export class FleetView {
  private pool: pg.Pool | undefined;
  private schemaSeen = false;
  private closed = false;

  constructor(
    private readonly fleet: FleetSettings,
    private readonly shipper?: ShipperView,
  ) {}

  /** This sidecar's name in the fleet tables (the `host` column). */
  get host(): string {
    return this.fleet.host;
  }

  /** The server, password masked: safe to show. */
  get postgres(): string {
    return redactUrl(this.fleet.postgres.url);
  }

  shipperStatus(): ShipperStatus | undefined {
    return this.shipper?.status();
  }

  /** The fleet report for `options` and every host's shipped rows, from one pooled connection. */
  async read(options: ReportOptions): Promise<FleetAnswer> {
    if (this.closed) throw new ConsoleUnavailable('the console is shutting down');
    const url = this.fleet.postgres.url;
    let client: pg.PoolClient;
    try {
      client = await this.openPool().connect();
    } catch (err) {
      throw new ConsoleUnavailable(unreachableMessage(url, err));
    }
    let broken = false;
    try {
      if (!this.schemaSeen) {
        await requireFleetSchema(client, url);
        this.schemaSeen = true;
      }
      return { report: await buildFleetReport(client, options), hosts: await queryFleetHosts(client) };
    } catch (err) {
      // A failed statement may leave the connection unusable (cut, timed out): do not pool it again.
      broken = true;
      throw new ConsoleUnavailable(
        err instanceof TokenmeterError ? err.message : queryFailedMessage(url, err),
      );
    } finally {
      client.release(broken);
    }
  }

  /** Ends the pool (if one was ever opened); idle connections close, none are opened again. */
  close(): void {
    this.closed = true;
    void this.pool?.end().catch(() => undefined);
    this.pool = undefined;
  }

  private openPool(): pg.Pool {
    this.pool ??= openFleetPool(this.fleet.postgres.url, {
      max: POOL_MAX,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      statement_timeout: STATEMENT_TIMEOUT_MS,
      query_timeout: QUERY_TIMEOUT_MS,
      idleTimeoutMillis: IDLE_TIMEOUT_MS,
      // An idle console connection never keeps a process alive (as the idle reader thread).
      allowExitOnIdle: true,
      application_name: 'tokenmeter-console',
    });
    return this.pool;
  }
}
