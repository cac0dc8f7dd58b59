/**
 * Writes a Hugging Face model directory: config.json, safetensors (sharded with an index past `shardBytes`,
 * as transformers writes them), and side files (tokenizer, generation config) copied in. Everything goes into
 * a temporary directory beside the target, renamed into place at the end: a half-written model never exists.
 */
import { copyFileSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fromFloat32, type FloatDtype } from './dtype.ts';
import { fsyncDir } from './atomic.ts';
import { writeSafetensors, type TensorToWrite } from './safetensors.ts';

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
  const tmp = join(dirname(dir), `.${basename(dir)}.tmp-${process.pid}-${Date.now()}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    // Shards are written as they fill, so memory holds one shard's bytes at a time.
    const written: { file: string; names: string[]; bytes: number }[] = [];
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
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}
