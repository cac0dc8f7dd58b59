import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CheckpointReader, iterateCheckpointRaw } from '../../src/model/checkpoint.ts';
import { readSpec } from '../../src/model/config.ts';
import { decodeWeight, WeightStore } from '../../src/engine/weight-store.ts';
import { releaseBuffers } from '../../src/util/release.ts';
import { fixtureDir } from '../helpers/fixtures.ts';

describe('releaseBuffers', () => {
  it('frees whole buffers at once (views onto them read as empty) and leaves parts of larger buffers alone', () => {
    const whole = new Float32Array(1024).fill(1);
    const shared = new Float32Array(1024);
    const part = shared.subarray(10, 20);
    releaseBuffers([whole, part]);
    assert.equal(whole.length, 0, 'detached: its memory went with the closed port');
    assert.equal(part.length, 10, 'a part of a larger buffer is not the caller to free');
    assert.equal(shared.length, 1024);
  });
});

describe('WeightStore', () => {
  it('drops weights from JS at once and reads them back from the checkpoint, equal', () => {
    const dir = fixtureDir('A');
    const { spec } = readSpec(dir);
    const held = new Map<string, Float32Array>();
    for (const t of iterateCheckpointRaw(dir, spec)) held.set(t.name, decodeWeight(spec, t.name, t.bytes, t.dtype, t.shape));
    const name = 'model.layers.1.mlp.up_proj.weight';
    const before = held.get(name)!;
    const copy = before.slice();
    const store = new WeightStore(spec, held, new CheckpointReader(dir));
    try {
      const bytes = store.heldBytes;
      store.drop([name]);
      assert.equal(before.length, 0, 'the dropped copy is freed now, not at a later collection');
      assert.equal(store.heldBytes, bytes - copy.byteLength);
      assert.deepEqual(store.get(name), copy, 'read back from the checkpoint in graph layout');
      store.restore();
      assert.deepEqual(store.held.get(name), copy);
    } finally {
      store.close();
    }
  });
});
