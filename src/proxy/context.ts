/**
 * What every exchange of one proxy server shares: settings, the router, the upstream agents, the
 * meter, the logger and the one in-flight count (per upstream, for the gauge and for drain).
 */
import http from 'node:http';
import https from 'node:https';
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
  private readonly byUpstream = new Map<string, number>();
  private waiters: Array<() => void> = [];

  add(x: T): void {
    if (x.inflight) return;
    x.inflight = true;
    this.count++;
    const u = x.upstreamName ?? '';
    this.byUpstream.set(u, (this.byUpstream.get(u) ?? 0) + 1);
  }

  delete(x: T): void {
    if (!x.inflight) return;
    x.inflight = false;
    this.count--;
    const u = x.upstreamName ?? '';
    this.byUpstream.set(u, (this.byUpstream.get(u) ?? 1) - 1);
    if (this.count === 0) {
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

  /** Resolves when nothing is in flight, or after `ms`. */
  idle(ms: number): Promise<void> {
    if (this.count === 0) return Promise.resolve();
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

export interface ProxyContext {
  settings: Settings;
  router: Router;
  meter: Meter;
  log: Logger;
  health: HealthCounters;
  inflight: Inflight<InflightMember>;
  agentFor(upstream: UpstreamSettings): http.Agent;
}

/**
 * Keep-alive agents, one per upstream. Pooled sockets are closed before the upstream would close
 * them: after 4 s idle by default (Node servers close at 5 s), or 1 s before the upstream's own
 * `Keep-Alive: timeout=N` (node:http's Agent#keepSocketAlive reads that hint since Node 20, and
 * does not pool a socket whose hint is 1 s or less). A socket the upstream closes just as it is reused makes a POST fail
 * with 502 (never re-sent, §3.1), so keeping that race rare is what protects traffic.
 */
export function createAgents(): { agentFor(u: UpstreamSettings): http.Agent; destroy(): void } {
  const agents = new Map<string, http.Agent>();
  return {
    agentFor(upstream) {
      let agent = agents.get(upstream.name);
      if (!agent) {
        const opts: http.AgentOptions = {
          keepAlive: true,
          keepAliveMsecs: 1000,
          maxFreeSockets: 256,
          scheduling: 'lifo',
          timeout: DEFAULT_FREE_SOCKET_TIMEOUT_MS,
        };
        // https.Agent verifies certificates by default (rejectUnauthorized true); never turned off.
        agent = upstream.url.protocol === 'https:' ? new https.Agent(opts) : new http.Agent(opts);
        agents.set(upstream.name, agent);
      }
      return agent;
    },
    destroy() {
      for (const a of agents.values()) a.destroy();
    },
  };
}

const DEFAULT_FREE_SOCKET_TIMEOUT_MS = 4000;
