/**
 * GGUF, llama.cpp's file format (version 3): metadata key-values, tensor infos, then the tensors' data, each at
 * a 32-byte aligned offset. Offsets follow from shapes and types alone, so the header is written first and the
 * tensors streamed after it, one at a time. Quantisers are ggml's reference ones (quantize_row_q8_0_ref,
 * quantize_row_q4_0_ref), bit for bit.
 */
import { closeSync, openSync } from 'node:fs';
import { writeAll } from './atomic.ts';
import { floatToHalf, fromFloat32 } from './dtype.ts';

export const GGUF_TYPES = ['f32', 'f16', 'q8_0', 'q4_0'] as const;
export type GgufType = (typeof GGUF_TYPES)[number];

/** ggml_type ids, block sizes (elements) and bytes per block. */
const GGML: Record<GgufType, { id: number; block: number; bytes: number }> = {
  f32: { id: 0, block: 1, bytes: 4 },
  f16: { id: 1, block: 1, bytes: 2 },
  q4_0: { id: 2, block: 32, bytes: 18 },
  q8_0: { id: 8, block: 32, bytes: 34 },
};

/** general.file_type (llama_ftype) of a file whose matrices are of this type. */
export const FILE_TYPE: Record<GgufType, number> = { f32: 0, f16: 1, q4_0: 2, q8_0: 7 };

const ALIGNMENT = 32;

export type GgufValue =
  | { type: 'u32'; value: number }
  | { type: 'i32'; value: number }
  | { type: 'f32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'string[]'; value: string[] }
  | { type: 'i32[]'; value: ArrayLike<number> }
  | { type: 'f32[]'; value: ArrayLike<number> };

export interface GgufTensorInfo {
  name: string;
  /** ggml order: ne[0] is the innermost (contiguous) dimension, so a [rows, cols] matrix is [cols, rows]. */
  ne: number[];
  type: GgufType;
}

/** Bytes of a tensor of `count` elements stored as `type`. */
export function tensorBytes(type: GgufType, count: number): number {
  const g = GGML[type];
  if (count % g.block) throw new RangeError(`${type} needs a multiple of ${g.block} elements, not ${count}`);
  return (count / g.block) * g.bytes;
}

/** Whether a tensor whose rows have `rowLength` elements can be stored as `type` (blocks never span rows). */
export function fitsType(type: GgufType, rowLength: number): boolean {
  return rowLength % GGML[type].block === 0;
}

/** A growable little-endian byte buffer for the header. */
class ByteSink {
  private buf = new Uint8Array(1 << 16);
  private view = new DataView(this.buf.buffer);
  length = 0;
  private ensure(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.length + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u32(x: number): void {
    this.ensure(4);
    this.view.setUint32(this.length, x, true);
    this.length += 4;
  }
  i32(x: number): void {
    this.ensure(4);
    this.view.setInt32(this.length, x, true);
    this.length += 4;
  }
  u64(x: number): void {
    this.ensure(8);
    this.view.setBigUint64(this.length, BigInt(x), true);
    this.length += 8;
  }
  f32(x: number): void {
    this.ensure(4);
    this.view.setFloat32(this.length, x, true);
    this.length += 4;
  }
  u8(x: number): void {
    this.ensure(1);
    this.buf[this.length++] = x;
  }
  string(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.ensure(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  pad(to: number): void {
    const n = (to - (this.length % to)) % to;
    this.ensure(n);
    this.buf.fill(0, this.length, this.length + n);
    this.length += n;
  }
  bytes(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }
}

/** gguf_type ids of the metadata values. */
const VALUE_TYPE = { u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9 } as const;

function writeValue(out: ByteSink, v: GgufValue): void {
  switch (v.type) {
    case 'u32':
      out.u32(VALUE_TYPE.u32);
      out.u32(v.value);
      break;
    case 'i32':
      out.u32(VALUE_TYPE.i32);
      out.i32(v.value);
      break;
    case 'f32':
      out.u32(VALUE_TYPE.f32);
      out.f32(v.value);
      break;
    case 'bool':
      out.u32(VALUE_TYPE.bool);
      out.u8(v.value ? 1 : 0);
      break;
    case 'string':
      out.u32(VALUE_TYPE.string);
      out.string(v.value);
      break;
    case 'string[]':
      out.u32(VALUE_TYPE.array);
      out.u32(VALUE_TYPE.string);
      out.u64(v.value.length);
      for (const s of v.value) out.string(s);
      break;
    case 'i32[]':
    case 'f32[]':
      out.u32(VALUE_TYPE.array);
      out.u32(v.type === 'i32[]' ? VALUE_TYPE.i32 : VALUE_TYPE.f32);
      out.u64(v.value.length);
      for (let i = 0; i < v.value.length; i++) (v.type === 'i32[]' ? out.i32 : out.f32).call(out, v.value[i]);
      break;
  }
}

/** Encodes float32 values as a GGUF tensor's bytes. */
export function encodeTensor(data: Float32Array, type: GgufType): Uint8Array {
  switch (type) {
    case 'f32':
      return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    case 'f16':
      return fromFloat32(data, 'F16');
    case 'q8_0':
      return quantizeQ8_0(data);
    case 'q4_0':
      return quantizeQ4_0(data);
  }
}

/** ggml's quantize_row_q8_0_ref: per 32 values, d = max|x| / 127 (as f16) and round(x / d). */
export function quantizeQ8_0(x: Float32Array): Uint8Array {
  const blocks = tensorBytes('q8_0', x.length) / 34;
  const out = new Uint8Array(blocks * 34);
  const view = new DataView(out.buffer);
  for (let b = 0; b < blocks; b++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b * 32 + j]));
    const d = Math.fround(amax / 127);
    const id = d ? Math.fround(1 / d) : 0;
    view.setUint16(b * 34, floatToHalf(d), true);
    for (let j = 0; j < 32; j++) view.setInt8(b * 34 + 2 + j, roundHalfAway(Math.fround(x[b * 32 + j] * id)));
  }
  return out;
}

/** ggml's quantize_row_q4_0_ref: d = (the value of largest magnitude) / -8; q = min(15, trunc(x / d + 8.5)), two per byte. */
export function quantizeQ4_0(x: Float32Array): Uint8Array {
  const blocks = tensorBytes('q4_0', x.length) / 18;
  const out = new Uint8Array(blocks * 18);
  const view = new DataView(out.buffer);
  for (let b = 0; b < blocks; b++) {
    let amax = 0;
    let max = 0;
    for (let j = 0; j < 32; j++) {
      const v = x[b * 32 + j];
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = Math.fround(max / -8);
    const id = d ? Math.fround(1 / d) : 0;
    view.setUint16(b * 18, floatToHalf(d), true);
    for (let j = 0; j < 16; j++) {
      const q0 = Math.min(15, Math.trunc(Math.fround(Math.fround(x[b * 32 + j] * id) + 8.5)));
      const q1 = Math.min(15, Math.trunc(Math.fround(Math.fround(x[b * 32 + 16 + j] * id) + 8.5)));
      out[b * 18 + 2 + j] = q0 | (q1 << 4);
    }
  }
  return out;
}

/** C's roundf: halves away from zero. */
function roundHalfAway(v: number): number {
  return Math.sign(v) * Math.round(Math.abs(v));
}

/**
 * Writes a GGUF file: the header from `metadata` and `tensors` (infos in order), then each tensor's data as
 * `data(i)` returns it (float32, encoded here), padded to the alignment. Data may be produced lazily (and
 * asynchronously, e.g. to let other work run between tensors), so one tensor is in memory at a time.
 */
export async function writeGguf(path: string, metadata: [string, GgufValue][], tensors: GgufTensorInfo[], data: (i: number) => Float32Array | Promise<Float32Array>): Promise<void> {
  const head = new ByteSink();
  head.u32(0x46554747); // "GGUF"
  head.u32(3);
  head.u64(tensors.length);
  head.u64(metadata.length + 1);
  for (const [key, value] of [...metadata, ['general.alignment', { type: 'u32', value: ALIGNMENT }] as [string, GgufValue]]) {
    head.string(key);
    writeValue(head, value);
  }
  let offset = 0;
  for (const t of tensors) if (!fitsType(t.type, t.ne[0])) throw new RangeError(`${t.name}: rows of ${t.ne[0]} cannot be stored as ${t.type}`);
  const sizes = tensors.map((t) =>
    tensorBytes(
      t.type,
      t.ne.reduce((a, b) => a * b, 1),
    ),
  );
  tensors.forEach((t, i) => {
    head.string(t.name);
    head.u32(t.ne.length);
    for (const n of t.ne) head.u64(n);
    head.u32(GGML[t.type].id);
    head.u64(offset);
    offset += Math.ceil(sizes[i] / ALIGNMENT) * ALIGNMENT;
  });
  head.pad(ALIGNMENT);
  const fd = openSync(path, 'w');
  try {
    writeAll(fd, head.bytes());
    const zeros = new Uint8Array(ALIGNMENT);
    for (let i = 0; i < tensors.length; i++) {
      const values = await data(i);
      const expected = tensors[i].ne.reduce((a, b) => a * b, 1);
      if (values.length !== expected) throw new RangeError(`${tensors[i].name}: ${values.length} values for a shape of ${expected}`);
      const bytes = encodeTensor(values, tensors[i].type);
      writeAll(fd, bytes);
      const pad = (ALIGNMENT - (bytes.length % ALIGNMENT)) % ALIGNMENT;
      if (pad) writeAll(fd, zeros.subarray(0, pad));
    }
  } finally {
    closeSync(fd);
  }
}
