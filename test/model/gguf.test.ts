/** The GGUF writer: the file's structure, and ggml's reference block quantisers reproduced bit for bit. */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { halfToFloat } from '../../src/model/dtype.ts';
import { encodeTensor, fitsType, quantizeQ4_0, quantizeQ8_0, writeGguf } from '../../src/model/gguf.ts';
import { permuteForRope } from '../../src/stethoscope/export-gguf.ts';
import { readGguf } from '../helpers/gguf-reader.ts';

const dir = mkdtempSync(join(tmpdir(), 'sfn-gguf-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('GGUF writer', () => {
  it('writes version 3 with its metadata, tensor infos in ggml order and 32-byte aligned data', async () => {
    const path = join(dir, 'x.gguf');
    const a = Float32Array.from({ length: 64 }, (_, i) => i - 32);
    const b = Float32Array.from([1.5, -2, 3]);
    await writeGguf(
      path,
      [
        ['general.architecture', { type: 'string', value: 'qwen2' }],
        ['x.count', { type: 'u32', value: 7 }],
        ['x.flag', { type: 'bool', value: true }],
        ['x.list', { type: 'string[]', value: ['a', 'bé'] }],
        ['x.scores', { type: 'f32[]', value: [0.5, -1] }],
      ],
      [
        { name: 'm.weight', ne: [32, 2], type: 'q8_0' },
        { name: 'v.weight', ne: [3], type: 'f32' },
      ],
      (i) => (i === 0 ? a : b),
    );
    const f = readGguf(path);
    assert.equal(f.version, 3);
    assert.deepEqual(
      [...f.metadata],
      [
        ['general.architecture', 'qwen2'],
        ['x.count', 7],
        ['x.flag', true],
        ['x.list', ['a', 'bé']],
        ['x.scores', [0.5, -1]],
        ['general.alignment', 32],
      ],
    );
    assert.deepEqual(f.tensors, [
      { name: 'm.weight', ne: [32, 2], type: 8, offset: 0 },
      { name: 'v.weight', ne: [3], type: 0, offset: 96 },
    ]);
    assert.equal(f.dataStart % 32, 0);
    assert.deepEqual(Buffer.from(f.bytes.subarray(f.dataStart, f.dataStart + 68)), Buffer.from(quantizeQ8_0(a)));
    assert.deepEqual(Array.from(new Float32Array(f.bytes.buffer.slice(f.bytes.byteOffset + f.dataStart + 96, f.bytes.byteOffset + f.dataStart + 108))), [1.5, -2, 3]);
    assert.equal(f.bytes.length, f.dataStart + 128);
  });

  it('refuses rows that do not fill whole blocks, and a tensor whose values miss its shape', async () => {
    assert.equal(fitsType('q4_0', 172), false);
    assert.equal(fitsType('q4_0', 64), true);
    await assert.rejects(
      writeGguf(join(dir, 'bad.gguf'), [], [{ name: 'w', ne: [172, 2], type: 'q4_0' }], () => new Float32Array(344)),
      /rows of 172/,
    );
    await assert.rejects(
      writeGguf(join(dir, 'bad2.gguf'), [], [{ name: 'w', ne: [4], type: 'f32' }], () => new Float32Array(3)),
      /3 values for a shape of 4/,
    );
  });
});

describe('ggml block quantisers', () => {
  const block = Float32Array.from({ length: 32 }, (_, i) => (i % 2 ? -1 : 1) * (i / 4) + 0.1);

  it('q8_0: d = max|x| / 127 as f16, values rounded half away from zero (quantize_row_q8_0_ref)', () => {
    const q = quantizeQ8_0(block);
    assert.equal(q.length, 34);
    const d = halfToFloat(q[0] | (q[1] << 8));
    const amax = Math.max(...block.map(Math.abs));
    assert.equal(d, halfToFloat(encodeTensor(Float32Array.of(amax / 127), 'f16')[0] | (encodeTensor(Float32Array.of(amax / 127), 'f16')[1] << 8)));
    const id = Math.fround(1 / Math.fround(amax / 127));
    const qs = Array.from(new Int8Array(q.buffer, 2, 32));
    assert.deepEqual(
      qs,
      Array.from(block, (x) => Math.sign(x) * Math.round(Math.abs(Math.fround(x * id)))),
    );
    // Dequantised, every value is within half a step (plus the scale's f16 rounding).
    qs.forEach((v, i) => assert.ok(Math.abs(v * d - block[i]) <= d / 2 + 1e-3 * amax, `element ${i}`));
    assert.deepEqual(Array.from(quantizeQ8_0(new Float32Array(32))), new Array(34).fill(0), 'an all-zero block has d = 0 and zeros');
  });

  it('q4_0: d = (signed value of largest magnitude) / -8, nibbles min(15, trunc(x/d + 8.5)), low half then high half', () => {
    const x = Float32Array.from({ length: 32 }, (_, i) => i - 16); // largest magnitude -16: d = 2
    const q = quantizeQ4_0(x);
    assert.equal(q.length, 18);
    assert.equal(halfToFloat(q[0] | (q[1] << 8)), 2);
    const nib = (j: number) => (j < 16 ? q[2 + j] & 15 : q[2 + j - 16] >> 4);
    // x/d = (i - 16) / 2; +8.5 then truncation: i=0 -> 0.5 -> 0, i=31 -> 16 -> 15 (clamped).
    assert.deepEqual(
      Array.from({ length: 32 }, (_, j) => nib(j)),
      Array.from({ length: 32 }, (_, i) => Math.min(15, Math.trunc((i - 16) / 2 + 8.5))),
    );
    // Dequantised as (q - 8) * d: within one step of the input.
    for (let j = 0; j < 32; j++) assert.ok(Math.abs((nib(j) - 8) * 2 - x[j]) <= 2, `element ${j}`);
  });

  it("permutes Llama's q/k rows from halves to interleaved pairs per head (convert_hf_to_gguf's permute)", () => {
    // Two heads of D = 4 rows, one column: rows h*4 + [0, 1, 2, 3] -> [0, 2, 1, 3].
    const w = Float32Array.from([0, 1, 2, 3, 10, 11, 12, 13]);
    assert.deepEqual(Array.from(permuteForRope(w, 8, 1, 2)), [0, 2, 1, 3, 10, 12, 11, 13]);
  });
});
