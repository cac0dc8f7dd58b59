import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { loadCheckpoint } from '../../src/model/checkpoint.ts';
import { makeModel } from '../../src/model/make-model.ts';
import { SafetensorsFile, writeSafetensors } from '../../src/model/safetensors.ts';
import { bf16 } from '../helpers/floats.ts';
import { fixtureDir } from '../helpers/fixtures.ts';

const root = mkdtempSync(join(tmpdir(), 'sfn-ckpt-'));
const small = { vocab_size: 512 };

describe('checkpoints', () => {
  it('loads a sharded checkpoint exactly as the single-file one', () => {
    makeModel(join(root, 'single'), { seed: 7, dtype: 'F32', config: small });
    makeModel(join(root, 'sharded'), { seed: 7, dtype: 'F32', config: small, shardBytes: 100_000 });
    assert.ok(readdirSync(join(root, 'sharded')).includes('model.safetensors.index.json'));
    assert.ok(readdirSync(join(root, 'sharded')).filter((f) => f.endsWith('.safetensors')).length > 2);
    const a = loadCheckpoint(join(root, 'single')).tensors;
    const b = loadCheckpoint(join(root, 'sharded')).tensors;
    assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort());
    for (const [k, t] of a) assert.deepEqual(b.get(k)!.data, t.data, k);
  });

  it('converts BF16 and F16 checkpoints to float32', () => {
    makeModel(join(root, 'bf16'), { seed: 7, dtype: 'BF16', config: small });
    makeModel(join(root, 'f16'), { seed: 7, dtype: 'F16', config: small });
    const f32 = loadCheckpoint(join(root, 'single')).tensors;
    const b = loadCheckpoint(join(root, 'bf16')).tensors;
    const h = loadCheckpoint(join(root, 'f16')).tensors;
    for (const [k, t] of f32) {
      const bb = b.get(k)!.data;
      for (let i = 0; i < t.data.length; i += 97) assert.equal(bb[i], bf16(t.data[i]), k);
      const hh = h.get(k)!.data;
      for (let i = 0; i < t.data.length; i += 97) assert.ok(Math.abs(hh[i] - t.data[i]) <= Math.abs(t.data[i]) * 2 ** -11 + 2 ** -24, k);
    }
  });

  /** A copy of fixture A with its safetensors rewritten by `edit`. */
  function broken(name: string, edit: (tensors: { name: string; dtype: 'F32' | 'I32'; shape: number[]; data: Uint8Array }[]) => void): string {
    const dir = join(root, name);
    cpSync(fixtureDir('A'), dir, { recursive: true });
    const f = SafetensorsFile.open(join(fixtureDir('A'), 'model.safetensors'));
    const tensors = f.names.map((n) => ({ name: n, dtype: 'F32' as 'F32' | 'I32', shape: f.info(n).shape, data: f.readBytes(n) }));
    f.close();
    edit(tensors);
    writeSafetensors(join(dir, 'model.safetensors'), tensors);
    return dir;
  }

  it('names a missing tensor', () => {
    const dir = broken('missing', (t) =>
      t.splice(
        t.findIndex((x) => x.name === 'model.norm.weight'),
        1,
      ),
    );
    assert.throws(() => loadCheckpoint(dir), /missing 1 tensor\(s\), first "model.norm.weight"/);
  });
  it('names an unexpected tensor', () => {
    const dir = broken('extra', (t) => t.push({ name: 'model.layers.9.mlp.up_proj.weight', dtype: 'F32', shape: [1], data: new Uint8Array(4) }));
    assert.throws(() => loadCheckpoint(dir), /unexpected tensor "model.layers.9.mlp.up_proj.weight"/);
  });
  it('names a tensor with the wrong shape', () => {
    const dir = broken('shape', (t) => {
      const x = t.find((x) => x.name === 'model.norm.weight')!;
      x.shape = [8, 8];
    });
    assert.throws(() => loadCheckpoint(dir), /"model.norm.weight" has shape \[8,8\], expected \[64\]/);
  });
  it('refuses integer weights', () => {
    const dir = broken('int', (t) => {
      t.find((x) => x.name === 'model.norm.weight')!.dtype = 'I32';
    });
    assert.throws(() => loadCheckpoint(dir), /dtype I32/);
  });
  it('refuses an index whose shards lie outside the model directory', () => {
    const dir = join(root, 'escape');
    cpSync(fixtureDir('A'), dir, { recursive: true });
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { 'model.norm.weight': '../single/model.safetensors' } }));
    assert.throws(() => loadCheckpoint(dir), /outside the model directory/);
  });
  it('refuses a directory without weights', () => {
    const dir = mkdtempSync(join(root, 'empty-'));
    writeFileSync(join(dir, 'config.json'), readFileSync(join(fixtureDir('A'), 'config.json')));
    assert.throws(() => loadCheckpoint(dir), /neither model.safetensors/);
  });
});

describe('streamed checkpoints', () => {
  it('writes, from a plan and values produced one at a time, the same files as writeCheckpoint (shards, index, header)', async () => {
    const { streamCheckpoint, writeCheckpoint } = await import('../../src/model/write-checkpoint.ts');
    const a = loadCheckpoint(fixtureDir('A'));
    const tensors = [...a.tensors].map(([name, t]) => ({ name, shape: t.shape, data: t.data }));
    const root = mkdtempSync(join(tmpdir(), 'sfn-stream-'));
    const opts = { config: { model_type: 'qwen2' }, dtype: 'BF16' as const, shardBytes: 40_000 };
    writeCheckpoint(join(root, 'whole'), tensors, opts);
    let produced = 0;
    await streamCheckpoint(
      join(root, 'streamed'),
      tensors.map(({ name, shape }) => ({ name, shape })),
      async (i) => {
        assert.equal(i, produced++, 'values are asked for in order, one at a time');
        await new Promise((r) => setImmediate(r));
        return tensors[i].data;
      },
      opts,
    );
    assert.equal(produced, tensors.length);
    const files = readdirSync(join(root, 'whole')).sort();
    assert.ok(files.length > 3 && files.includes('model.safetensors.index.json'), `sharded: ${files}`);
    assert.deepEqual(readdirSync(join(root, 'streamed')).sort(), files);
    for (const f of files) assert.ok(readFileSync(join(root, 'whole', f)).equals(readFileSync(join(root, 'streamed', f))), f);
  });

  it('leaves nothing behind when a value does not fit its shape', async () => {
    const { streamCheckpoint } = await import('../../src/model/write-checkpoint.ts');
    const root = mkdtempSync(join(tmpdir(), 'sfn-stream-'));
    await assert.rejects(
      streamCheckpoint(join(root, 'm'), [{ name: 'w', shape: [2, 2] }], () => new Float32Array(3), { config: {}, dtype: 'F32' }),
      /3 values for shape \[2,2\]/,
    );
    assert.deepEqual(readdirSync(root), []);
  });
});
