/**
 * Reads a Hugging Face model directory: `config.json` plus `model.safetensors` or a sharded
 * `model.safetensors.index.json`. Shards are opened one at a time and tensors read one at a time and
 * converted to float32 straight away, so peak memory is the model in f32 plus one tensor.
 */
import { createHash, type Hash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve, sep } from 'node:path';
import { readSpec, type ModelSpec } from './config.ts';
import { FLOAT_DTYPES, toFloat32, toFloat32Into } from './dtype.ts';
import { expectedParams } from './names.ts';
import { SafetensorsFile, type Dtype } from './safetensors.ts';
import { jsonFault } from '../util/json.ts';

export interface LoadedTensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

export class CheckpointError extends Error {
  override name = 'CheckpointError';
}

/** Names a checkpoint may carry that the forward pass does not use. */
const IGNORED = /\.rotary_emb\.inv_freq$/;

/** The safetensors files of a model directory and which tensor lives in which. */
export function checkpointFiles(dir: string): { files: string[]; weightMap: Map<string, string> | null; index: string | null } {
  const single = join(dir, 'model.safetensors');
  const index = join(dir, 'model.safetensors.index.json');
  if (existsSync(index)) {
    let parsed: { weight_map?: Record<string, string> };
    try {
      parsed = JSON.parse(readFileSync(index, 'utf8'));
    } catch (e) {
      throw new CheckpointError(`${index}: ${jsonFault(e)}`);
    }
    if (!parsed.weight_map || typeof parsed.weight_map !== 'object') throw new CheckpointError(`${index}: no weight_map`);
    const weightMap = new Map(Object.entries(parsed.weight_map));
    const root = resolve(dir);
    const files = [...new Set(weightMap.values())].map((f) => {
      const p = resolve(dir, f);
      if (!p.startsWith(root + sep)) throw new CheckpointError(`${index}: shard "${f}" lies outside the model directory`);
      return p;
    });
    return { files, weightMap, index };
  }
  if (existsSync(single)) return { files: [single], weightMap: null, index: null };
  throw new CheckpointError(`${dir}: neither model.safetensors nor model.safetensors.index.json`);
}

export interface RawTensor {
  name: string;
  shape: number[];
  dtype: Dtype;
  /** The stored bytes, in a buffer reused for the next tensor: valid until the iteration moves on. */
  bytes: Uint8Array;
}

/**
 * Yields every parameter's stored bytes, in file order, after checking that the checkpoint has exactly the
 * parameters the config implies, each with the right shape and a float dtype. One read buffer serves every
 * tensor: first touches of fresh memory are slow on the project's VMs, so a load should touch each byte of
 * new memory once, in its final place.
 */
export function* iterateCheckpointRaw(dir: string, spec: ModelSpec): Generator<RawTensor> {
  const expected = expectedParams(spec);
  const { files } = checkpointFiles(dir);
  const scratch = new Uint8Array(checkCheckpoint(dir, spec));
  for (const path of files) {
    const f = SafetensorsFile.open(path);
    try {
      for (const name of f.names) {
        if (!expected.has(name)) continue;
        const info = f.info(name);
        yield { name, shape: info.shape, dtype: info.dtype, bytes: f.readInto(name, scratch) };
      }
    } finally {
      f.close();
    }
  }
}

/**
 * Checks, from the headers alone, that the checkpoint has exactly the parameters the config implies, each with
 * the right shape and a float dtype; returns the largest tensor's byte length.
 */
export function checkCheckpoint(dir: string, spec: ModelSpec): number {
  const expected = expectedParams(spec);
  const { files, weightMap } = checkpointFiles(dir);
  const seen = new Set<string>();
  let largest = 0;
  // Check every header before reading any data, so a bad checkpoint fails fast and cheaply.
  for (const path of files) {
    const f = SafetensorsFile.open(path);
    try {
      for (const name of f.names) {
        if (weightMap && weightMap.get(name) !== undefined && resolve(dir, weightMap.get(name)!) !== path) {
          throw new CheckpointError(`${path}: "${name}" is listed under another shard in the index`);
        }
        const info = f.info(name);
        if (IGNORED.test(name) || (spec.tieWordEmbeddings && name === 'lm_head.weight')) continue;
        const shape = expected.get(name);
        if (!shape) throw new CheckpointError(`${path}: unexpected tensor "${name}" for a ${spec.arch} model with this config`);
        if (seen.has(name)) throw new CheckpointError(`${path}: "${name}" appears in more than one shard`);
        seen.add(name);
        if (!(FLOAT_DTYPES as readonly string[]).includes(info.dtype)) throw new CheckpointError(`${path}: "${name}" has dtype ${info.dtype}; expected F32, F16 or BF16`);
        if (info.shape.join(',') !== shape.join(',')) throw new CheckpointError(`${path}: "${name}" has shape [${info.shape}], expected [${shape}]`);
        largest = Math.max(largest, info.end - info.begin);
      }
    } finally {
      f.close();
    }
  }
  const missing = [...expected.keys()].filter((n) => !seen.has(n));
  if (missing.length) throw new CheckpointError(`${dir}: missing ${missing.length} tensor(s), first "${missing[0]}"`);
  return largest;
}

/** Every parameter of the model as float32 (each in fresh memory), in file order, checked as above. */
export function* iterateCheckpoint(dir: string, spec: ModelSpec): Generator<LoadedTensor> {
  for (const t of iterateCheckpointRaw(dir, spec)) {
    const data = t.dtype === 'F32' ? new Float32Array(t.bytes.slice().buffer) : toFloat32(t.bytes, t.dtype);
    yield { name: t.name, shape: t.shape, data };
  }
}

/** Loads a whole checkpoint into memory (HF layout). For tools and tests; the engine streams instead. */
export function loadCheckpoint(dir: string): { spec: ModelSpec; tensors: Map<string, LoadedTensor> } {
  const { spec } = readSpec(dir);
  const tensors = new Map<string, LoadedTensor>();
  for (const t of iterateCheckpoint(dir, spec)) tensors.set(t.name, t);
  return { spec, tensors };
}

/**
 * A backbone's identity: sha256 over its config.json and every weight as stored (name, dtype, bytes), in
 * checkpoint order. Plugins record it as their base model.
 */
/** The safetensors metadata key under which a plugin names the fingerprint of the backbone it was made for. */
export const BASE_FINGERPRINT_KEY = 'sfn.base_fingerprint';

export class Fingerprinter {
  private readonly hash: Hash;

  constructor(rawConfig: unknown) {
    this.hash = createHash('sha256').update(JSON.stringify(rawConfig));
  }

  /** A tensor as stored (name, dtype and bytes). */
  addRaw(name: string, dtype: Dtype, bytes: Uint8Array): void {
    this.hash.update(`${name}\0${dtype}\0`).update(bytes);
  }

  /** A tensor held in memory as float32 (an engine built from tensors). */
  add(name: string, data: Float32Array): void {
    this.addRaw(name, 'F32', new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }

  digest(): string {
    return this.hash.digest('hex').slice(0, 32);
  }
}

/** Reads tensors by name from a model directory (single file or shards), one at a time, as float32. */
export class CheckpointReader {
  private readonly handles: SafetensorsFile[];
  private readonly where = new Map<string, SafetensorsFile>();

  readonly dir: string;
  constructor(dir: string) {
    this.dir = dir;
    const { files } = checkpointFiles(dir);
    this.handles = files.map((f) => SafetensorsFile.open(f));
    for (const h of this.handles) for (const n of h.names) this.where.set(n, h);
  }

  /** Names in file order. */
  get names(): string[] {
    return this.handles.flatMap((h) => h.names);
  }

  has(name: string): boolean {
    return this.where.has(name);
  }

  shape(name: string): number[] {
    return this.file(name).info(name).shape;
  }

  /** Raw bytes and dtype (for copying a tensor without conversion). */
  raw(name: string): { bytes: Uint8Array; dtype: Dtype; shape: number[] } {
    const h = this.file(name);
    const info = h.info(name);
    return { bytes: h.readBytes(name), dtype: info.dtype, shape: info.shape };
  }

  read(name: string): LoadedTensor {
    const { bytes, dtype, shape } = this.raw(name);
    return { name, shape, data: toFloat32(bytes, dtype) };
  }

  private scratch = new Uint8Array(0);

  elements(name: string): number {
    return this.shape(name).reduce((a, b) => a * b, 1);
  }

  /**
   * Elements [start, start + out.length) of a tensor as float32, into `out`. For streaming passes over a
   * whole model (delta): memory stays at one chunk, and no fresh buffer is touched per tensor (first touches
   * of fresh memory were measured at ~170 MB/s on the project's VMs).
   */
  readRange(name: string, start: number, out: Float32Array): Float32Array {
    const h = this.file(name);
    const dtype = h.info(name).dtype;
    const size = dtype === 'F32' ? 4 : 2;
    if (this.scratch.length < out.length * size) this.scratch = new Uint8Array(out.length * size);
    const bytes = h.readRange(name, start * size, this.scratch.subarray(0, out.length * size));
    return toFloat32Into(bytes, dtype, out);
  }

  private file(name: string): SafetensorsFile {
    const h = this.where.get(name);
    if (!h) throw new CheckpointError(`${this.dir}: no tensor "${name}"`);
    return h;
  }

  close(): void {
    this.handles.forEach((h) => h.close());
  }
}
