/**
 * Float conversions between checkpoint dtypes and the float32 the engine computes in. onnxruntime's CPU
 * MatMul has no bf16 kernel and the Node binding has no bfloat16 tensor type, so everything becomes f32 here.
 */
import type { Dtype } from './safetensors.ts';

export type FloatDtype = 'F32' | 'F16' | 'BF16';
export const FLOAT_DTYPES: readonly FloatDtype[] = ['F32', 'F16', 'BF16'];

/** Converts raw little-endian bytes (from a fresh, aligned buffer) to float32. F32 input is reused, not copied. */
export function toFloat32(bytes: Uint8Array, dtype: Dtype): Float32Array {
  switch (dtype) {
    case 'F32':
      if (bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
      return new Float32Array(bytes.slice().buffer);
    case 'BF16': {
      const src = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
      const out = new Int32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = src[i] << 16;
      return new Float32Array(out.buffer);
    }
    case 'F16': {
      const src = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
      const out = new Float32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = halfToFloat(src[i]);
      return out;
    }
    default:
      throw new Error(`dtype ${dtype} is not a floating-point weight type (F32, F16, BF16)`);
  }
}

/**
 * The largest |value| of raw little-endian floats, NaNs ignored, without decoding them: with the sign bit
 * cleared, the bit patterns of non-NaN floats order as their magnitudes do.
 */
export function maxAbsStored(bytes: Uint8Array, dtype: Dtype): number {
  const aligned = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
  if (dtype === 'F32') {
    const src = new Uint32Array(aligned.buffer, aligned.byteOffset, aligned.byteLength >>> 2);
    let m = 0;
    for (let i = 0; i < src.length; i++) {
      const a = src[i] & 0x7fffffff;
      if (a > m && a <= 0x7f800000) m = a;
    }
    u32[0] = m;
    return f32[0];
  }
  if (dtype !== 'BF16' && dtype !== 'F16') throw new Error(`dtype ${dtype} is not a floating-point weight type (F32, F16, BF16)`);
  const src = new Uint16Array(aligned.buffer, aligned.byteOffset, aligned.byteLength >>> 1);
  const inf = dtype === 'BF16' ? 0x7f80 : 0x7c00;
  let m = 0;
  for (let i = 0; i < src.length; i++) {
    const a = src[i] & 0x7fff;
    if (a > m && a <= inf) m = a;
  }
  if (dtype === 'F16') return halfToFloat(m);
  u32[0] = m << 16;
  return f32[0];
}

/**
 * Decodes a [rows, cols] matrix and transposes it to [cols, rows] in one blocked pass (blocks keep both sides
 * in cache), into fresh memory touched once (the graph's layout for linear weights).
 */
export function toFloat32Transposed(bytes: Uint8Array, dtype: Dtype, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  const B = 64;
  const f32 = dtype === 'F32' ? new Float32Array(bytes.buffer, bytes.byteOffset, rows * cols) : null;
  const u16 = dtype === 'F32' ? null : new Uint16Array(bytes.buffer, bytes.byteOffset, rows * cols);
  if (dtype !== 'F32' && dtype !== 'BF16' && dtype !== 'F16') throw new Error(`dtype ${dtype} is not a floating-point weight type (F32, F16, BF16)`);
  const bits = new Int32Array(out.buffer);
  for (let r0 = 0; r0 < rows; r0 += B) {
    const r1 = Math.min(rows, r0 + B);
    for (let c0 = 0; c0 < cols; c0 += B) {
      const c1 = Math.min(cols, c0 + B);
      for (let r = r0; r < r1; r++) {
        const base = r * cols;
        if (f32) for (let c = c0; c < c1; c++) out[c * rows + r] = f32[base + c];
        else if (dtype === 'BF16') for (let c = c0; c < c1; c++) bits[c * rows + r] = u16![base + c] << 16;
        else for (let c = c0; c < c1; c++) out[c * rows + r] = halfToFloat(u16![base + c]);
      }
    }
  }
  return out;
}

/** Like toFloat32, into `out` (of the right length): no fresh memory, whose first touch is slow on VMs. */
export function toFloat32Into(bytes: Uint8Array, dtype: Dtype, out: Float32Array): Float32Array {
  if (dtype === 'F32') {
    out.set(new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4));
    return out;
  }
  const src = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
  if (dtype === 'BF16') {
    const bits = new Int32Array(out.buffer, out.byteOffset, out.length);
    for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  } else if (dtype === 'F16') {
    for (let i = 0; i < src.length; i++) out[i] = halfToFloat(src[i]);
  } else throw new Error(`dtype ${dtype} is not a floating-point weight type (F32, F16, BF16)`);
  return out;
}

/** Converts float32 values to the bytes of a checkpoint dtype (round to nearest even for the 16-bit ones). */
export function fromFloat32(data: Float32Array, dtype: FloatDtype): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Uint16Array(data.length);
  if (dtype === 'BF16') {
    const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
    for (let i = 0; i < data.length; i++) {
      const b = bits[i];
      if ((b & 0x7fffffff) > 0x7f800000)
        out[i] = (b >>> 16) | 0x40; // keep NaN a NaN
      else out[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
    }
  } else {
    for (let i = 0; i < data.length; i++) out[i] = floatToHalf(data[i]);
  }
  return new Uint8Array(out.buffer);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

export function floatToHalf(x: number): number {
  f32[0] = x;
  const b = u32[0];
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  const mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    const m = (mant | 0x800000) >>> 0;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let r = m >>> shift;
    const rest = m & ((1 << shift) - 1);
    if (rest > half || (rest === half && r & 1)) r++;
    return sign | r;
  }
  let r = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && r & 1)) r++;
  return sign | r;
}
