/**
 * Writes a Hugging Face model directory: config.json, safetensors (sharded with an index past `shardBytes`,
 * as transformers writes them), and side files (tokenizer, generation config) copied in. Everything goes into
 * a temporary directory beside the target, renamed into place at the end: a half-written model never exists.
 */
import { closeSync, copyFileSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fromFloat32, type FloatDtype } from './dtype.ts';
import { fsyncDir, writeAll } from './atomic.ts';
import { DTYPE_SIZE, safetensorsHeader, writeSafetensors, type TensorToWrite } from './safetensors.ts';

export interface CheckpointTensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

export interface WriteCheckpointOptions {
  config: Record<string, unknown>;
  dtype: FloatDtype;
  /** Start a new shard past this many bytes (default: one file). */
  shardBytes?: number;
  /** Extra JSON files to write (e.g. generation_config.json). */
  json?: Record<string, unknown>;
  /** Files to copy in: destination name -> source path. */
  copy?: Record<string, string>;
}

const TORCH_DTYPE: Record<FloatDtype, string> = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' };

export function writeCheckpoint(dir: string, tensors: Iterable<CheckpointTensor>, opts: WriteCheckpointOptions): void {
  const tmp = tempDir(dir);
  try {
    // Shards are written as they fill, so memory holds one shard's bytes at a time.
    const written: Shard[] = [];
    let shard: TensorToWrite[] = [];
    let size = 0;
    const flush = () => {
      if (!shard.length) return;
      const file = `shard-${written.length}.safetensors`;
      writeSafetensors(join(tmp, file), shard, { format: 'pt' });
      written.push({ file, names: shard.map((t) => t.name), bytes: size });
      shard = [];
      size = 0;
    };
    for (const t of tensors) {
      const data = fromFloat32(t.data, opts.dtype);
      if (opts.shardBytes && size > 0 && size + data.byteLength > opts.shardBytes) flush();
      shard.push({ name: t.name, dtype: opts.dtype, shape: t.shape, data: opts.dtype === 'F32' ? data.slice() : data });
      size += data.byteLength;
    }
    flush();
    finish(tmp, dir, written, opts);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}

/** A tensor's place in a checkpoint, known before its values. */
export interface PlannedTensor {
  name: string;
  shape: number[];
}

/**
 * Writes the same checkpoint as writeCheckpoint from a plan: shards are laid out from the shapes, so each
 * shard's header is written first and the tensors' values streamed after it as `data(i)` produces them. Memory
 * holds one tensor at a time, and since `data` is awaited, the caller can let other work run between tensors.
 */
export async function streamCheckpoint(
  dir: string,
  plan: PlannedTensor[],
  data: (i: number) => Float32Array | Promise<Float32Array>,
  opts: WriteCheckpointOptions,
  /** Awaited between slices of a large tensor (an embedding takes over a second to convert and write). */
  between?: () => Promise<void>,
): Promise<void> {
  const bytesOf = (t: PlannedTensor) => t.shape.reduce((a, b) => a * b, 1) * DTYPE_SIZE[opts.dtype];
  const shards: { tensors: number[]; bytes: number }[] = [];
  plan.forEach((t, i) => {
    const last = shards.at(-1);
    if (!last || (opts.shardBytes && last.bytes > 0 && last.bytes + bytesOf(t) > opts.shardBytes)) shards.push({ tensors: [i], bytes: bytesOf(t) });
    else {
      last.tensors.push(i);
      last.bytes += bytesOf(t);
    }
  });
  const tmp = tempDir(dir);
  try {
    const written: Shard[] = [];
    for (const [k, shard] of shards.entries()) {
      const file = `shard-${k}.safetensors`;
      const fd = openSync(join(tmp, file), 'w');
      try {
        writeAll(
          fd,
          safetensorsHeader(
            shard.tensors.map((i) => ({ name: plan[i].name, shape: plan[i].shape, dtype: opts.dtype })),
            { format: 'pt' },
          ),
        );
        for (const i of shard.tensors) {
          const values = await data(i);
          if (values.length * DTYPE_SIZE[opts.dtype] !== bytesOf(plan[i])) throw new RangeError(`${plan[i].name}: ${values.length} values for shape [${plan[i].shape}]`);
          for (let at = 0; at < values.length; at += SLICE) {
            if (at) await between?.();
            writeAll(fd, fromFloat32(values.subarray(at, at + SLICE), opts.dtype));
          }
        }
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      written.push({ file, names: shard.tensors.map((i) => plan[i].name), bytes: shard.bytes });
    }
    finish(tmp, dir, written, opts);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}

/** Values converted and written at a time by streamCheckpoint (16 MB of float32). */
const SLICE = 1 << 22;

interface Shard {
  file: string;
  names: string[];
  bytes: number;
}

function tempDir(dir: string): string {
  const tmp = join(dirname(dir), `.${basename(dir)}.tmp-${process.pid}-${Date.now()}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  return tmp;
}

/** Names the shards (an index past one), writes config and side files, and renames the directory into place. */
function finish(tmp: string, dir: string, written: Shard[], opts: WriteCheckpointOptions): void {
  if (written.length === 1) renameSync(join(tmp, written[0].file), join(tmp, 'model.safetensors'));
  else {
    const weightMap: Record<string, string> = {};
    let total = 0;
    written.forEach((w, i) => {
      const name = `model-${String(i + 1).padStart(5, '0')}-of-${String(written.length).padStart(5, '0')}.safetensors`;
      renameSync(join(tmp, w.file), join(tmp, name));
      for (const n of w.names) weightMap[n] = name;
      total += w.bytes;
    });
    writeFileSync(join(tmp, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2));
  }
  writeFileSync(join(tmp, 'config.json'), JSON.stringify({ ...opts.config, torch_dtype: TORCH_DTYPE[opts.dtype] }, null, 2));
  for (const [name, value] of Object.entries(opts.json ?? {})) writeFileSync(join(tmp, name), JSON.stringify(value, null, 2));
  for (const [name, src] of Object.entries(opts.copy ?? {})) copyFileSync(src, join(tmp, name));
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dirname(dir), { recursive: true });
  renameSync(tmp, dir);
  fsyncDir(dirname(dir));
}
