/**
 * An ended span as it crosses to the span export thread (span-thread.ts): the fields of the SDK's
 * `ReadableSpan` an exporter reads, as one flat array a structured clone copies cheaply. The
 * attribute names, the same few sets on every span, cross once as a numbered "shape"; each span
 * then carries only its shape's number and the values (measured: 2.8 µs to clone a span this way
 * against 7.5 µs as an object with its attributes, 265 bytes against 828; docs/opentelemetry.md).
 * What is not plain data in a `ReadableSpan` crosses as what it stands for: `spanContext()` as
 * its value, a `TraceState` as its `tracestate` text, the resource and scopes once.
 */
import type { Attributes, AttributeValue, SpanContext, SpanKind } from '@opentelemetry/api';
import { core, type resources, type tracing } from '@opentelemetry/sdk-node';

/** A span context with its trace state as the `tracestate` header text. */
export interface WireContext {
  traceId: string;
  spanId: string;
  traceFlags: number;
  isRemote?: boolean;
  traceState?: string;
}

export interface WireLink {
  context: WireContext;
  attributes?: Attributes;
  droppedAttributesCount?: number;
}

/**
 * [name, kind, context, parent | null, start s, start ns, end s, end ns, status code,
 *  status message | null, links | null, events | null, dropped attributes, dropped events,
 *  dropped links, scope, shape, ...attribute values] — or, when the shape table is full,
 *  shape -1 and the attributes object as the one value.
 */
export type WireSpan = unknown[];

const ATTRS = 17;
const SHAPE = 16;

export interface WireScope {
  name: string;
  version?: string;
  schemaUrl?: string;
}

/** The resource every span of the process's tracer provider carries, its async attributes settled. */
export interface WireResource {
  attributes: Attributes;
  schemaUrl?: string;
}

export type ToSpanThread =
  | { type: 'resource'; resource: WireResource }
  /** `shapes`: attribute-name lists first used in this batch, by number; `scopes`: by number too. */
  | { type: 'spans'; shapes: [number, string[]][]; scopes: [number, WireScope][]; spans: WireSpan[] }
  /** Export everything handed over so far (forceFlush), then answer with the same seq. */
  | { type: 'flush'; seq: number }
  /** Flush, shut the exporters down, answer, and let the thread end. */
  | { type: 'shutdown'; seq: number };

export type FromSpanThread =
  | { type: 'done'; seq: number; error?: string }
  /** OpenTelemetry's diagnostics on that thread, for the main thread's diag logger. */
  | { type: 'diag'; level: 'error' | 'warn' | 'info' | 'debug' | 'verbose'; message: string };

export function wireContext(c: SpanContext): WireContext {
  const w: WireContext = { traceId: c.traceId, spanId: c.spanId, traceFlags: c.traceFlags };
  if (c.isRemote !== undefined) w.isRemote = c.isRemote;
  const state = c.traceState?.serialize();
  if (state) w.traceState = state;
  return w;
}

function wireLinks(span: tracing.ReadableSpan): WireLink[] | null {
  if (span.links.length === 0) return null;
  return span.links.map((l) => {
    const w: WireLink = { context: wireContext(l.context) };
    if (l.attributes) w.attributes = l.attributes;
    if (l.droppedAttributesCount !== undefined) w.droppedAttributesCount = l.droppedAttributesCount;
    return w;
  });
}

/** Numbers attribute-name lists (main thread side); bounded, then spans carry their attributes whole. */
export class ShapeTable {
  /** Known lists by length: a few per length, compared name by name (no key string per span). */
  private readonly byLength = new Map<number, { names: string[]; id: number }[]>();
  private size = 0;
  /** Shapes numbered since the last `take()`, to send with the batch that first uses them. */
  private fresh: [number, string[]][] = [];

  constructor(private readonly max = 1024) {}

  /** The shape number of these names, or -1 when the table is full. */
  idOf(names: string[]): number {
    let known = this.byLength.get(names.length);
    if (known) {
      for (const k of known) if (sameNames(k.names, names)) return k.id;
    } else this.byLength.set(names.length, (known = []));
    if (this.size >= this.max) return -1;
    const id = this.size++;
    known.push({ names, id });
    this.fresh.push([id, names]);
    return id;
  }

  take(): [number, string[]][] {
    const fresh = this.fresh;
    this.fresh = [];
    return fresh;
  }

  /** A new export thread knows no shape. */
  clear(): void {
    this.byLength.clear();
    this.size = 0;
    this.fresh = [];
  }
}

function sameNames(a: readonly string[], b: readonly string[]): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function encodeSpan(span: tracing.ReadableSpan, scope: number, shapes: ShapeTable): WireSpan {
  const { attributes } = span;
  const names = Object.keys(attributes);
  const shape = shapes.idOf(names);
  const w: unknown[] = [
    span.name,
    span.kind,
    wireContext(span.spanContext()),
    span.parentSpanContext ? wireContext(span.parentSpanContext) : null,
    span.startTime[0],
    span.startTime[1],
    span.endTime[0],
    span.endTime[1],
    span.status.code,
    span.status.message ?? null,
    wireLinks(span),
    span.events.length === 0 ? null : span.events,
    span.droppedAttributesCount,
    span.droppedEventsCount,
    span.droppedLinksCount,
    scope,
    shape,
  ];
  if (shape === -1) w.push(attributes);
  else for (const name of names) w.push(attributes[name]);
  return w;
}

function context(w: WireContext): SpanContext {
  const c: SpanContext = { traceId: w.traceId, spanId: w.spanId, traceFlags: w.traceFlags };
  if (w.isRemote !== undefined) c.isRemote = w.isRemote;
  if (w.traceState !== undefined) c.traceState = new core.TraceState(w.traceState);
  return c;
}

/** What a batch's spans share on the export thread: shapes, scopes (by number) and the resource. */
export interface DecodeTables {
  shapes: ReadonlyMap<number, string[]>;
  scopes: ReadonlyMap<number, core.InstrumentationScope>;
  resource: resources.Resource;
}

const UNKNOWN_SCOPE: core.InstrumentationScope = { name: 'unknown' };

/** The export thread's side: a wire span back into the `ReadableSpan` the SDK's processors take. */
export function decodeSpan(w: WireSpan, t: DecodeTables): tracing.ReadableSpan {
  const shape = w[SHAPE] as number;
  let attributes: Attributes;
  if (shape === -1) attributes = w[ATTRS] as Attributes;
  else {
    attributes = {};
    const names = t.shapes.get(shape) ?? [];
    for (let i = 0; i < names.length; i++) attributes[names[i]!] = w[ATTRS + i] as AttributeValue;
  }
  const status: tracing.ReadableSpan['status'] = { code: w[8] as number };
  if (w[9] !== null) status.message = w[9] as string;
  const startTime: [number, number] = [w[4] as number, w[5] as number];
  const endTime: [number, number] = [w[6] as number, w[7] as number];
  const ctx = context(w[2] as WireContext);
  const parent = w[3] as WireContext | null;
  return {
    name: w[0] as string,
    kind: w[1] as SpanKind,
    spanContext: () => ctx,
    parentSpanContext: parent ? context(parent) : undefined,
    startTime,
    endTime,
    status,
    attributes,
    links: ((w[10] as WireLink[] | null) ?? []).map((l) => ({ ...l, context: context(l.context) })),
    events: (w[11] as tracing.TimedEvent[] | null) ?? [],
    duration: core.hrTimeDuration(startTime, endTime),
    ended: true,
    resource: t.resource,
    instrumentationScope: t.scopes.get(w[15] as number) ?? UNKNOWN_SCOPE,
    droppedAttributesCount: w[12] as number,
    droppedEventsCount: w[13] as number,
    droppedLinksCount: w[14] as number,
  };
}
