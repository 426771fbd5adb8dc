/**
 * What every exchange of one proxy server shares: settings, the router, the upstream agents, the
 * meter, the logger and the one in-flight count (per upstream, for the gauge and for drain).
 */
import http, { type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import https from 'node:https';
import type { Dispatcher } from 'undici';
import type { Settings, UpstreamSettings } from '../config/types.js';
import type { Logger } from '../log.js';
import type { Meter } from '../meter/types.js';
import type { HealthCounters } from '../sinks/types.js';
import type { Router } from './router.js';

export interface InflightMember {
  upstreamName: string | undefined;
  /**
   * Whether `Inflight` counts this member now. Owned by `Inflight`; members declare it (initially
   * false) so their shape never changes.
   */
  inflight: boolean;
  /** Whether `Inflight` holds this member for drain while its request is still being read. */
  pending: boolean;
}

/**
 * The one in-flight count: exchanges from meter begin until their record was handed to the sinks.
 *
 * Counters, and a flag on each member: never a `Set` of members. A long-lived Set with one add and
 * one delete per request is rehashed every few hundred requests, and V8 leaves the obsolete table
 * (in the old generation) pointing at the members it held. Young-generation collections take such
 * a pointer as a root, so every request object reachable from a dead table survived, was promoted,
 * and pulled the next requests after it: ~1 MB promoted per scavenge and a mark-compact every
 * ~12k requests with the no-op meter, where the bare proxy promotes nothing. Measured at c=32
 * (issue 11, docs/benchmarks.md): 0.96 → 0.001 MB promoted per scavenge, +32 % requests/s.
 */
export class Inflight<T extends InflightMember> {
  private count = 0;
  /** Members held while their request is read (no upstream yet): drain waits for them too. */
  private pendingCount = 0;
  private readonly byUpstream = new Map<string, number>();
  private waiters: Array<() => void> = [];

  /**
   * Holds a member whose request is still being read (no upstream chosen yet): `idle()` waits for
   * it, so a request cut while uploading at shutdown still gets its record written before the
   * sinks close; the gauge does not show it. `add()` moves it into the count, `delete()` ends it.
   */
  hold(x: T): void {
    if (x.pending || x.inflight) return;
    x.pending = true;
    this.pendingCount++;
  }

  add(x: T): void {
    if (x.inflight) return;
    if (x.pending) {
      x.pending = false;
      this.pendingCount--;
    }
    x.inflight = true;
    this.count++;
    const u = x.upstreamName ?? '';
    this.byUpstream.set(u, (this.byUpstream.get(u) ?? 0) + 1);
  }

  delete(x: T): void {
    if (x.pending) {
      x.pending = false;
      this.pendingCount--;
    } else if (x.inflight) {
      x.inflight = false;
      this.count--;
      const u = x.upstreamName ?? '';
      this.byUpstream.set(u, (this.byUpstream.get(u) ?? 1) - 1);
    } else return;
    if (this.count === 0 && this.pendingCount === 0) {
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    }
  }

  get size(): number {
    return this.count;
  }

  perUpstream(): ReadonlyMap<string, number> {
    return this.byUpstream;
  }

  /** Resolves when nothing is in flight or being read, or after `ms`. */
  idle(ms: number): Promise<void> {
    if (this.count === 0 && this.pendingCount === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done(): void {
        clearTimeout(t);
        resolve();
      }
      this.waiters.push(done);
    });
  }
}

/**
 * Room for the request bodies buffered for metering, shared by every exchange
 * (`limits.max_buffered_bodies`). A body takes its room before its first byte is read (its declared
 * length, or the per-request cap when it is chunked) and gives it back when its exchange ends. A
 * body that does not fit waits, unread, so TCP holds its client back, until enough room was given
 * back; bodies that fit go on meanwhile. A holder never waits for more, so every waiter gets its
 * turn as exchanges end. The queue exists only while bodies wait: nothing per request is kept.
 */
export class BodyRoom {
  private used = 0;
  private waiting: Array<{ bytes: number; onTaken: () => void }> = [];

  constructor(
    readonly capacity: number,
    /** Called each time a body has to wait (the caller logs it once). */
    private readonly onWait: () => void = () => {},
  ) {}

  /** Takes `bytes` if they fit now. */
  take(bytes: number): boolean {
    if (this.used + bytes > this.capacity) return false;
    this.used += bytes;
    return true;
  }

  /** Queues `onTaken`, called once `bytes` were taken for it (never if it is withdrawn first). */
  wait(bytes: number, onTaken: () => void): void {
    this.onWait();
    this.waiting.push({ bytes, onTaken });
  }

  /** Withdraws a queued waiter (its client left). */
  withdraw(onTaken: () => void): void {
    this.waiting = this.waiting.filter((w) => w.onTaken !== onTaken);
  }

  /** Gives `bytes` back, then takes room for every waiter that now fits, in the order they came. */
  give(bytes: number): void {
    this.used -= bytes;
    if (this.waiting.length === 0) return;
    const still: typeof this.waiting = [];
    const taken: Array<() => void> = [];
    for (const w of this.waiting) {
      if (this.take(w.bytes)) taken.push(w.onTaken);
      else still.push(w);
    }
    this.waiting = still;
    for (const f of taken) f();
  }
}

export interface ProxyContext {
  settings: Settings;
  router: Router;
  meter: Meter;
  log: Logger;
  health: HealthCounters;
  inflight: Inflight<InflightMember>;
  bodyRoom: BodyRoom;
  /** node:http keep-alive agents: WebSocket upgrades only (websocket.ts). */
  agentFor(upstream: UpstreamSettings): http.Agent;
  /** undici connection pools: every HTTP exchange (upstream-call.ts). */
  poolFor(upstream: UpstreamSettings): Dispatcher;
}

/**
 * Pooled upstream sockets idle this long are closed (Node servers close theirs at 5 s): the
 * WebSocket agents here and the HTTP exchange's pools (upstream-call.ts).
 */
export const DEFAULT_FREE_SOCKET_TIMEOUT_MS = 4000;
/** Taken off the upstream's `Keep-Alive: timeout=N` hint; a hint of 1 s or less means no reuse. */
export const KEEP_ALIVE_HINT_MARGIN_MS = 1000;
/** How often the pool is swept; a socket's deadline is this much early, so it is never closed late. */
const SWEEP_MS = 250;
/** When a pooled socket must be closed (performance.now() ms); set each time it enters the pool. */
const closeAt = Symbol('tokenmeter.closeAt');
type PooledSocket = Socket & { [closeAt]?: number; _httpMessage?: { res?: IncomingMessage } | null };

/**
 * Keep-alive agents, one per upstream. Pooled sockets are closed before the upstream would close
 * them: after 4 s idle by default (Node servers close at 5 s), or 1 s before the upstream's own
 * `Keep-Alive: timeout=N`; a hint of 1 s or less means the socket is not pooled at all. A socket
 * the upstream closes just as it is reused makes a POST fail with 502 (never re-sent, §3.1), so
 * keeping that race rare is what protects traffic.
 *
 * The idle limit is a deadline on the socket checked by one sweep every 250 ms, not the agent's
 * `timeout` option: that option puts a timer on every socket, in use or not, which cost each
 * request a `timeout` listener added and removed, two `setTimeout` calls and a timer refresh on
 * every read and write (issue 11, docs/benchmarks.md).
 */
export function createAgents(opts: { freeSocketTimeoutMs?: number } = {}): {
  agentFor(u: UpstreamSettings): http.Agent;
  destroy(): void;
} {
  const idleMs = opts.freeSocketTimeoutMs ?? DEFAULT_FREE_SOCKET_TIMEOUT_MS;
  const agents = new Map<string, http.Agent>();
  let sweeper: NodeJS.Timeout | undefined;
  const sweep = (): void => {
    const now = performance.now();
    for (const agent of agents.values())
      for (const pool of Object.values(agent.freeSockets))
        // destroy() takes the socket out of the pool (on 'close'), so walk a copy.
        for (const s of [...(pool ?? [])] as PooledSocket[]) if ((s[closeAt] ?? 0) <= now) s.destroy();
  };
  return {
    agentFor(upstream) {
      let agent = agents.get(upstream.name);
      if (!agent) {
        const agentOpts: http.AgentOptions = {
          keepAlive: true,
          keepAliveMsecs: 1000,
          maxFreeSockets: 256,
          scheduling: 'lifo',
        };
        // https.Agent verifies certificates by default (rejectUnauthorized true); never turned off.
        agent = upstream.url.protocol === 'https:' ? new https.Agent(agentOpts) : new http.Agent(agentOpts);
        agent.keepSocketAlive = (socket) => keepSocketAlive(socket as PooledSocket, idleMs);
        agents.set(upstream.name, agent);
        if (!sweeper) {
          sweeper = setInterval(sweep, SWEEP_MS);
          sweeper.unref();
        }
      }
      return agent;
    },
    destroy() {
      clearInterval(sweeper);
      sweeper = undefined;
      for (const a of agents.values()) a.destroy();
    },
  };
}

/**
 * node:http's `Agent#keepSocketAlive` (TCP keep-alive, unref, the `Keep-Alive: timeout=N` hint
 * read the same way and 1 s taken off it) with a deadline for the sweep instead of a socket timer.
 * False: the socket is not pooled (the agent destroys it).
 */
function keepSocketAlive(socket: PooledSocket, idleMs: number): boolean {
  socket.setKeepAlive(true, 1000);
  socket.unref();
  let ms = idleMs;
  const hint = socket._httpMessage?.res?.headers['keep-alive'];
  const seconds = typeof hint === 'string' ? /^timeout=(\d+)/.exec(hint)?.[1] : undefined;
  if (seconds !== undefined) {
    const byHint = Number(seconds) * 1000 - KEEP_ALIVE_HINT_MARGIN_MS;
    if (byHint <= 0) return false;
    ms = Math.min(ms, byHint);
  }
  socket[closeAt] = performance.now() + Math.max(0, ms - SWEEP_MS);
  return true;
}
