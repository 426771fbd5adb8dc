/**
 * A small OTLP protobuf decoder for the test receivers: the protobuf wire format (varint, fixed32,
 * fixed64, length-delimited, packed repeated numbers) and the OTLP messages we assert on, with the
 * field numbers of opentelemetry-proto (common, resource, trace, metrics, logs v1). No generated
 * code or .proto files ship offline with the exporters, and a decoder written from the spec also
 * checks that what goes over the wire is real OTLP, not what our own serializer thinks it is.
 */

type Scalar = 'string' | 'bytes' | 'varint' | 'bool' | 'double' | 'fixed64' | 'sfixed64' | 'fixed32';
interface Field {
  name: string;
  type: Scalar | Schema;
  repeated?: boolean;
}
export interface Schema {
  [field: number]: Field;
}
export type Decoded = Record<string, unknown>;

const AnyValue: Schema = {};
const ArrayValue: Schema = {};
const KeyValueList: Schema = {};
const KeyValue: Schema = { 1: { name: 'key', type: 'string' }, 2: { name: 'value', type: AnyValue } };
Object.assign(AnyValue, {
  1: { name: 'stringValue', type: 'string' },
  2: { name: 'boolValue', type: 'bool' },
  3: { name: 'intValue', type: 'varint' },
  4: { name: 'doubleValue', type: 'double' },
  5: { name: 'arrayValue', type: ArrayValue },
  6: { name: 'kvlistValue', type: KeyValueList },
  7: { name: 'bytesValue', type: 'bytes' },
});
Object.assign(ArrayValue, { 1: { name: 'values', type: AnyValue, repeated: true } });
Object.assign(KeyValueList, { 1: { name: 'values', type: KeyValue, repeated: true } });
const attributes = (n: number): Schema => ({ [n]: { name: 'attributes', type: KeyValue, repeated: true } });

const Resource: Schema = { ...attributes(1) };
const Scope: Schema = { 1: { name: 'name', type: 'string' }, 2: { name: 'version', type: 'string' } };

const Span: Schema = {
  1: { name: 'traceId', type: 'bytes' },
  2: { name: 'spanId', type: 'bytes' },
  3: { name: 'traceState', type: 'string' },
  4: { name: 'parentSpanId', type: 'bytes' },
  5: { name: 'name', type: 'string' },
  6: { name: 'kind', type: 'varint' },
  7: { name: 'startTimeUnixNano', type: 'fixed64' },
  8: { name: 'endTimeUnixNano', type: 'fixed64' },
  ...attributes(9),
  15: {
    name: 'status',
    type: { 2: { name: 'message', type: 'string' }, 3: { name: 'code', type: 'varint' } },
  },
};
export const ExportTraceServiceRequest: Schema = {
  1: {
    name: 'resourceSpans',
    repeated: true,
    type: {
      1: { name: 'resource', type: Resource },
      2: {
        name: 'scopeSpans',
        repeated: true,
        type: { 1: { name: 'scope', type: Scope }, 2: { name: 'spans', type: Span, repeated: true } },
      },
    },
  },
};

const NumberDataPoint: Schema = {
  ...attributes(7),
  3: { name: 'timeUnixNano', type: 'fixed64' },
  4: { name: 'asDouble', type: 'double' },
  6: { name: 'asInt', type: 'sfixed64' },
};
const HistogramDataPoint: Schema = {
  ...attributes(9),
  3: { name: 'timeUnixNano', type: 'fixed64' },
  4: { name: 'count', type: 'fixed64' },
  5: { name: 'sum', type: 'double' },
  6: { name: 'bucketCounts', type: 'fixed64', repeated: true },
  7: { name: 'explicitBounds', type: 'double', repeated: true },
};
const Metric: Schema = {
  1: { name: 'name', type: 'string' },
  2: { name: 'description', type: 'string' },
  3: { name: 'unit', type: 'string' },
  5: { name: 'gauge', type: { 1: { name: 'dataPoints', type: NumberDataPoint, repeated: true } } },
  7: {
    name: 'sum',
    type: {
      1: { name: 'dataPoints', type: NumberDataPoint, repeated: true },
      2: { name: 'aggregationTemporality', type: 'varint' },
      3: { name: 'isMonotonic', type: 'bool' },
    },
  },
  9: {
    name: 'histogram',
    type: {
      1: { name: 'dataPoints', type: HistogramDataPoint, repeated: true },
      2: { name: 'aggregationTemporality', type: 'varint' },
    },
  },
};
export const ExportMetricsServiceRequest: Schema = {
  1: {
    name: 'resourceMetrics',
    repeated: true,
    type: {
      1: { name: 'resource', type: Resource },
      2: {
        name: 'scopeMetrics',
        repeated: true,
        type: { 1: { name: 'scope', type: Scope }, 2: { name: 'metrics', type: Metric, repeated: true } },
      },
    },
  },
};

const LogRecord: Schema = {
  1: { name: 'timeUnixNano', type: 'fixed64' },
  2: { name: 'severityNumber', type: 'varint' },
  3: { name: 'severityText', type: 'string' },
  5: { name: 'body', type: AnyValue },
  ...attributes(6),
  8: { name: 'flags', type: 'fixed32' },
  9: { name: 'traceId', type: 'bytes' },
  10: { name: 'spanId', type: 'bytes' },
  11: { name: 'observedTimeUnixNano', type: 'fixed64' },
  12: { name: 'eventName', type: 'string' },
};
export const ExportLogsServiceRequest: Schema = {
  1: {
    name: 'resourceLogs',
    repeated: true,
    type: {
      1: { name: 'resource', type: Resource },
      2: {
        name: 'scopeLogs',
        repeated: true,
        type: {
          1: { name: 'scope', type: Scope },
          2: { name: 'logRecords', type: LogRecord, repeated: true },
        },
      },
    },
  },
};

class Reader {
  pos = 0;
  constructor(private readonly buf: Buffer) {}
  get done(): boolean {
    return this.pos >= this.buf.length;
  }
  varint(): bigint {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      const byte = this.buf[this.pos++];
      if (byte === undefined) throw new Error('truncated varint');
      result |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return result;
      shift += 7n;
    }
  }
  take(n: number): Buffer {
    if (this.pos + n > this.buf.length) throw new Error('truncated field');
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
}

function fixedValue(type: Scalar, bytes: Buffer): unknown {
  if (type === 'double') return bytes.readDoubleLE(0);
  if (type === 'fixed64') return Number(bytes.readBigUInt64LE(0));
  if (type === 'sfixed64') return Number(bytes.readBigInt64LE(0));
  if (type === 'fixed32') return bytes.readUInt32LE(0);
  throw new Error(`fixed-width bytes for a ${type} field`);
}

function scalarFromVarint(type: Scalar, v: bigint): unknown {
  if (type === 'bool') return v !== 0n;
  return Number(BigInt.asIntN(64, v));
}

/** Decodes one message. Unknown fields are skipped, as a real receiver would. */
export function decodeMessage(buf: Buffer, schema: Schema): Decoded {
  const out: Decoded = {};
  const r = new Reader(buf);
  const put = (f: Field, v: unknown) => {
    if (f.repeated) ((out[f.name] ??= []) as unknown[]).push(v);
    else out[f.name] = v;
  };
  while (!r.done) {
    const tag = Number(r.varint());
    const field = schema[tag >>> 3];
    const wire = tag & 7;
    if (wire === 0) {
      const v = r.varint();
      if (field && typeof field.type === 'string') put(field, scalarFromVarint(field.type, v));
    } else if (wire === 1 || wire === 5) {
      const bytes = r.take(wire === 1 ? 8 : 4);
      if (field && typeof field.type === 'string') put(field, fixedValue(field.type, bytes));
    } else if (wire === 2) {
      const bytes = r.take(Number(r.varint()));
      if (!field) continue;
      if (typeof field.type !== 'string') put(field, decodeMessage(bytes, field.type));
      else if (field.type === 'string') put(field, bytes.toString('utf8'));
      else if (field.type === 'bytes') put(field, bytes.toString('hex'));
      else {
        // Packed repeated numbers.
        const width = field.type === 'fixed32' ? 4 : 8;
        for (let i = 0; i < bytes.length; i += width)
          put(field, fixedValue(field.type, bytes.subarray(i, i + width)));
      }
    } else {
      throw new Error(`unsupported wire type ${wire}`);
    }
  }
  return out;
}
