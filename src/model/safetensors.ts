/**
 * Strict safetensors reader and writer (https://github.com/huggingface/safetensors, "Format").
 *
 * Layout: 8-byte little-endian header length N, N bytes of JSON header, then the data section. The reader
 * refuses anything the reference implementation would refuse, and a little more (duplicate names, which
 * JSON.parse would silently collapse). Tensors are read one at a time by positional reads, so a caller never
 * holds a file twice in memory.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { writeFileAtomic } from './atomic.ts';
import { jsonFault } from '../util/json.ts';

/** Bytes per element of every dtype the format defines. */
export const DTYPE_SIZE = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
} as const;
export type Dtype = keyof typeof DTYPE_SIZE;

/** Same bound as the reference implementation: a header over 100 MB is refused before it is read. */
export const MAX_HEADER_BYTES = 100_000_000;

export interface TensorInfo {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Absolute byte offsets in the file (already shifted past the header). */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
  /** Byte offset where the data section starts. */
  dataStart: number;
  fileSize: number;
}

/** Every violation of the format is one of these, naming the tensor (when there is one) and the rule. */
export class SafetensorsError extends Error {
  readonly rule: string;
  readonly tensor?: string;
  constructor(message: string, rule: string, tensor?: string) {
    super(message);
    this.rule = rule;
    this.tensor = tensor;
    this.name = 'SafetensorsError';
  }
}

const fail = (rule: string, message: string, tensor?: string): never => {
  throw new SafetensorsError(tensor ? `${message} (tensor "${tensor}")` : message, rule, tensor);
};

/** Parses and checks a header, given the first bytes of a file (at least 8 + N) and the file's size. */
export function parseHeader(head: Uint8Array, fileSize: number): SafetensorsHeader {
  if (fileSize < 8 || head.length < 8) fail('too_small', `not a safetensors file: ${fileSize} bytes is shorter than the 8-byte header length`);
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const n = view.getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) fail('header_too_large', `header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  const headerLen = Number(n);
  if (8 + headerLen > fileSize) fail('header_truncated', `header length ${headerLen} runs past the end of the ${fileSize}-byte file`);
  if (head.length < 8 + headerLen) fail('header_truncated', 'header is truncated');
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(head.subarray(8, 8 + headerLen));
  } catch {
    return fail('header_utf8', 'header is not valid UTF-8');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    return fail('header_json', `header: ${jsonFault(e)}`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) fail('header_object', 'header must be a JSON object');
  const dup = firstDuplicateKey(text);
  if (dup !== undefined) fail('duplicate_name', `duplicate entry in header`, dup);

  const dataStart = 8 + headerLen;
  const dataLen = fileSize - dataStart;
  const metadata: Record<string, string> = {};
  const infos: TensorInfo[] = [];
  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) fail('metadata', '__metadata__ must be an object of strings');
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== 'string') fail('metadata', `__metadata__["${k}"] must be a string`);
        metadata[k] = v as string;
      }
      continue;
    }
    infos.push(checkEntry(name, raw));
  }
  // Offsets must tile the data section exactly: sorted, starting at 0, each beginning where the last ended.
  infos.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const t of infos) {
    if (t.begin < cursor) fail('overlap', `data_offsets [${t.begin}, ${t.end}] overlap the previous tensor (which ends at ${cursor})`, t.name);
    if (t.begin > cursor) fail('gap', `data_offsets [${t.begin}, ${t.end}] leave a gap after byte ${cursor}`, t.name);
    cursor = t.end;
  }
  if (cursor !== dataLen) {
    fail(cursor > dataLen ? 'truncated' : 'trailing_bytes', `tensors cover ${cursor} bytes but the data section holds ${dataLen}`);
  }
  const tensors = new Map<string, TensorInfo>();
  for (const t of infos) tensors.set(t.name, { ...t, begin: t.begin + dataStart, end: t.end + dataStart });
  return { tensors, metadata, dataStart, fileSize };
}

function checkEntry(name: string, raw: unknown): TensorInfo {
  if (name.length === 0) fail('name', 'tensor name must not be empty');
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) fail('entry', 'entry must be an object', name);
  const { dtype, shape, data_offsets: offsets, ...rest } = raw as Record<string, unknown>;
  const extra = Object.keys(rest);
  if (extra.length) fail('entry', `unknown field "${extra[0]}"`, name);
  if (typeof dtype !== 'string' || !(dtype in DTYPE_SIZE)) fail('dtype', `unknown dtype ${JSON.stringify(dtype)}`, name);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) fail('shape', 'shape must be a list of non-negative integers', name);
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
    fail('offsets', 'data_offsets must be two non-negative integers', name);
  }
  const [begin, end] = offsets as number[];
  if (end < begin) fail('offsets', `data_offsets [${begin}, ${end}] end before they begin`, name);
  const elems = (shape as number[]).reduce((a, b) => a * b, 1);
  const want = elems * DTYPE_SIZE[dtype as Dtype];
  if (end - begin !== want) fail('size', `shape [${shape}] of ${dtype} needs ${want} bytes but data_offsets span ${end - begin}`, name);
  return { name, dtype: dtype as Dtype, shape: shape as number[], begin, end };
}

/** Finds a key repeated inside the top-level JSON object (JSON.parse keeps the last one without a word). */
function firstDuplicateKey(text: string): string | undefined {
  // Walk the text tracking nesting; a string at depth 1 followed by ':' is a top-level key. Nested objects
  // (only __metadata__) are checked the same way at their own depth.
  const seen: Set<string>[] = [];
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === '{') seen.push(new Set()), i++;
    else if (c === '}') seen.pop(), i++;
    else if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      const str = JSON.parse(text.slice(i, j + 1)) as string;
      let k = j + 1;
      while (k < text.length && /\s/.test(text[k])) k++;
      if (text[k] === ':' && seen.length > 0) {
        const keys = seen[seen.length - 1];
        if (keys.has(str)) return str;
        keys.add(str);
      }
      i = j + 1;
    } else i++;
  }
  return undefined;
}

/** An open safetensors file: the checked header and positional reads of single tensors. */
export class SafetensorsFile {
  readonly path: string;
  private fd: number;
  readonly header: SafetensorsHeader;
  private constructor(path: string, fd: number, header: SafetensorsHeader) {
    this.path = path;
    this.fd = fd;
    this.header = header;
  }

  static open(path: string): SafetensorsFile {
    const fd = openSync(path, 'r');
    try {
      const size = fstatSync(fd).size;
      const first = Buffer.alloc(Math.min(8, size));
      readSync(fd, first, 0, first.length, 0);
      let headerLen = 0;
      if (size >= 8) {
        const n = first.readBigUInt64LE(0);
        headerLen = n > BigInt(MAX_HEADER_BYTES) ? 0 : Number(n);
      }
      const head = Buffer.alloc(Math.min(size, 8 + headerLen));
      readSync(fd, head, 0, head.length, 0);
      return new SafetensorsFile(path, fd, parseHeader(head, size));
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  get names(): string[] {
    return [...this.header.tensors.keys()];
  }

  info(name: string): TensorInfo {
    const t = this.header.tensors.get(name);
    if (!t) throw new SafetensorsError(`no tensor "${name}" in ${this.path}`, 'missing', name);
    return t;
  }

  /** Reads one tensor's raw bytes into a fresh, 8-byte aligned buffer. */
  readBytes(name: string): Uint8Array {
    const t = this.info(name);
    return this.readInto(name, new Uint8Array(new ArrayBuffer(t.end - t.begin)));
  }

  /** Reads one tensor's raw bytes into the start of `out` (at least as long) and returns that part. */
  readInto(name: string, out: Uint8Array): Uint8Array {
    const t = this.info(name);
    if (out.length < t.end - t.begin) throw new RangeError(`buffer of ${out.length} bytes for "${name}" (${t.end - t.begin})`);
    out = out.subarray(0, t.end - t.begin);
    let done = 0;
    while (done < out.length) {
      const n = readSync(this.fd, out, done, out.length - done, t.begin + done);
      if (n === 0) throw new SafetensorsError(`file ended while reading "${name}"`, 'truncated', name);
      done += n;
    }
    return out;
  }

  /** Reads bytes [from, from + out.length) of one tensor's data into `out`. */
  readRange(name: string, from: number, out: Uint8Array): Uint8Array {
    const t = this.info(name);
    if (from < 0 || from + out.length > t.end - t.begin) throw new RangeError(`range ${from}+${out.length} outside "${name}"`);
    let done = 0;
    while (done < out.length) {
      const n = readSync(this.fd, out, done, out.length - done, t.begin + from + done);
      if (n === 0) throw new SafetensorsError(`file ended while reading "${name}"`, 'truncated', name);
      done += n;
    }
    return out;
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

export interface TensorToWrite {
  name: string;
  dtype: Dtype;
  shape: number[];
  data: Uint8Array;
}

/**
 * A safetensors file's first bytes: the header's length and the header, which places the tensors one after
 * another in the given order (what follows is their data, in that order).
 */
export function safetensorsHeader(tensors: Omit<TensorToWrite, 'data'>[], metadata: Record<string, string> = {}): Uint8Array {
  const names = new Set<string>();
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    if (names.has(t.name)) throw new SafetensorsError(`duplicate tensor "${t.name}"`, 'duplicate_name', t.name);
    names.add(t.name);
    const bytes = t.shape.reduce((a, b) => a * b, 1) * DTYPE_SIZE[t.dtype];
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  // Pad the header with spaces to a multiple of 8 so that tensors stay aligned, as the reference writer does.
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(8 + headerBytes.length);
  out.writeBigUInt64LE(BigInt(headerBytes.length));
  headerBytes.copy(out, 8);
  return out;
}

/**
 * Writes a safetensors file atomically (see atomic.ts): a crash leaves the old file or the new one.
 */
export function writeSafetensors(path: string, tensors: TensorToWrite[], metadata: Record<string, string> = {}): void {
  for (const t of tensors) {
    const want = t.shape.reduce((a, b) => a * b, 1) * DTYPE_SIZE[t.dtype];
    if (t.data.byteLength !== want) throw new SafetensorsError(`"${t.name}": ${t.data.byteLength} bytes for shape [${t.shape}] of ${t.dtype} (want ${want})`, 'size', t.name);
  }
  writeFileAtomic(path, [safetensorsHeader(tensors, metadata), ...tensors.map((t) => t.data)]);
}
