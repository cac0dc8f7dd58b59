import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Engine } from '../../src/engine/engine.ts';
import { KvCache } from '../../src/engine/kv-cache.ts';
import { argmax } from '../../src/engine/sampler.ts';
import { loadCheckpoint, type LoadedTensor } from '../../src/model/checkpoint.ts';
import { parseName } from '../../src/model/names.ts';
import { tensorOverlay, type Tensor } from '../../src/engine/view.ts';
import { fixtureDir, oracle } from '../helpers/fixtures.ts';
import { maxAbsDiff, referenceLogits } from '../helpers/reference.ts';

const TOL = 1e-4;

function pick(tensors: Map<string, LoadedTensor>, pred: (name: string) => boolean): Map<string, Tensor> {
  return new Map([...tensors].filter(([n]) => pred(n)).map(([n, t]) => [n, { shape: t.shape, data: t.data }]));
}

describe('engine on fixture A', () => {
  let A: Engine;
  const a = loadCheckpoint(fixtureDir('A'));
  const b = loadCheckpoint(fixtureDir('B'));
  const o = oracle('A');
  before(async () => {
    A = await Engine.load(fixtureDir('A'), { threads: 1 });
  });
  after(() => A.release());

  it('keeps the pluggable kinds swappable and the rest frozen', () => {
    const kinds = new Set([...A.swappable].map((n) => parseName(n)!.kind));
    assert.deepEqual([...kinds].sort(), ['embed_tokens', 'input_layernorm', 'lm_head', 'norm', 'o_proj', 'post_attention_layernorm']);
  });

  it('decoding with the KV cache gives the logits of a full recompute', async () => {
    const full = await A.logits(o.ids);
    const cache = new KvCache(A.spec, 1, 4, 4); // tiny capacity steps: the cache grows several times
    for (let t = 0; t < o.ids.length; t++) {
      const [[l]] = await A.forward(cache, [[o.ids[t]]]);
      assert.ok(maxAbsDiff(l, full[t]) < TOL, `position ${t}`);
    }
    assert.equal(cache.lengths[0], o.ids.length);
  });

  it('prefill in chunks equals prefill at once', async () => {
    const full = await A.logits(o.ids);
    const cache = A.newCache(1);
    await A.forward(cache, [o.ids.slice(0, 5)]);
    const rest = (await A.forward(cache, [o.ids.slice(5)], { logits: 'all' }))[0];
    rest.forEach((l, i) => assert.ok(maxAbsDiff(l, full[5 + i]) < TOL));
  });

  it('batches rows of different lengths exactly as if run alone', async () => {
    const p1 = o.ids.slice(0, 11);
    const p2 = o.ids.slice(3, 7);
    const alone1 = await A.logits(p1);
    const alone2 = await A.logits(p2);
    const cache = A.newCache(2);
    const [[l1], [l2]] = await A.forward(cache, [p1, p2]);
    assert.ok(maxAbsDiff(l1, alone1[10]) < TOL);
    assert.ok(maxAbsDiff(l2, alone2[3]) < TOL);
    // A decode step for row 2 only, then both together.
    const [none, [d2]] = await A.forward(cache, [[], [p1[7]]]);
    assert.equal(none.length, 0);
    assert.ok(maxAbsDiff(d2, (await A.logits([...p2, p1[7]]))[4]) < TOL);
    const [[e1], [e2]] = await A.forward(cache, [[5], [6]]);
    assert.ok(maxAbsDiff(e1, (await A.logits([...p1, 5]))[11]) < TOL);
    assert.ok(maxAbsDiff(e2, (await A.logits([...p2, p1[7], 6]))[5]) < TOL);
  });

  it('runs a contiguous subset of cache rows, and keeps a row intact when it is moved', async () => {
    const p1 = o.ids.slice(0, 9);
    const p2 = o.ids.slice(4, 10);
    const cache = A.newCache(3);
    const [[l1]] = await A.forward(cache, [p1], { firstRow: 1 });
    const [[l2]] = await A.forward(cache, [p2], { firstRow: 2 });
    assert.deepEqual(cache.lengths, [0, 9, 6]);
    assert.ok(maxAbsDiff(l1, (await A.logits(p1))[8]) < TOL);
    assert.ok(maxAbsDiff(l2, (await A.logits(p2))[5]) < TOL);
    cache.moveRow(2, 0);
    assert.deepEqual(cache.lengths, [6, 9, 0]);
    const [[d0], [d1]] = await A.forward(cache, [[7], [8]], { firstRow: 0 });
    assert.ok(maxAbsDiff(d0, (await A.logits([...p2, 7]))[6]) < TOL);
    assert.ok(maxAbsDiff(d1, (await A.logits([...p1, 8]))[9]) < TOL);
  });

  it("A with B's o_proj through an overlay gives M1's oracle logits", async () => {
    const m1 = oracle('M1_o_proj');
    const view = A.baseView.with(tensorOverlay(pick(b.tensors, (n) => n.includes('o_proj'))));
    const got = await A.logits(m1.ids, view);
    got.forEach((l, i) => assert.ok(maxAbsDiff(l, m1.logits[i]) < TOL, `position ${i}`));
    // and the backbone itself is untouched afterwards
    assert.ok(maxAbsDiff((await A.logits(o.ids))[3], o.logits[3]) < TOL);
  });

  it("swaps the head through a view, and goes back to the backbone's own (prepacked) head after it", async () => {
    const view = A.baseView.with(tensorOverlay(pick(b.tensors, (n) => n === 'lm_head.weight')));
    const got = await A.logits(o.ids, view);
    const ref = referenceLogits(a.spec, new Map([...a.tensors, ['lm_head.weight', b.tensors.get('lm_head.weight')!]]), o.ids);
    got.forEach((l, i) => assert.ok(maxAbsDiff(l, ref[i]) < TOL, `position ${i}`));
    assert.ok(maxAbsDiff(got[3], o.logits[3]) > 1e-3, 'the swapped head must change the logits');
    // A batch of the backbone and a decode step over it, right after the swapped run.
    const cache = A.newCache(2);
    const [[l1], [l2]] = await A.forward(cache, [o.ids.slice(0, 6), o.ids.slice(0, 4)]);
    assert.ok(maxAbsDiff(l1, o.logits[5]) < TOL);
    assert.ok(maxAbsDiff(l2, o.logits[3]) < TOL);
    const [[d1]] = await A.forward(cache, [[o.ids[6]], []]);
    assert.ok(maxAbsDiff(d1, o.logits[6]) < TOL);
  });

  it("A with o_proj zeroed over layers 1-2 gives D_zero's oracle logits", async () => {
    const dz = oracle('D_zero_o_proj_1-2');
    const zeros = new Map<string, Tensor>();
    for (const l of [1, 2]) zeros.set(`model.layers.${l}.self_attn.o_proj.weight`, { shape: [64, 64], data: new Float32Array(64 * 64) });
    const got = await A.logits(dz.ids, A.baseView.with(tensorOverlay(zeros)));
    got.forEach((l, i) => assert.ok(maxAbsDiff(l, dz.logits[i]) < TOL, `position ${i}`));
  });

  it('overrides a frozen module (q_proj, MLP) on the research session, matching a float64 reference', async () => {
    const swap = pick(b.tensors, (n) => n.startsWith('model.layers.2.self_attn.q_proj') || n.startsWith('model.layers.0.mlp.'));
    const view = A.baseView.with(tensorOverlay(swap));
    assert.equal((await A.sessionFor(view)).kind, 'research');
    const got = await A.logits(o.ids, view);
    const mixed = new Map<string, Tensor>([...a.tensors, ...swap]);
    const ref = referenceLogits(a.spec, mixed, o.ids);
    got.forEach((l, i) => assert.ok(maxAbsDiff(l, ref[i]) < TOL, `position ${i}`));
    assert.ok(maxAbsDiff(got[15], o.logits[15]) > 1e-3, 'the override must change the logits');
  });

  it('gates a layer off (destruction "Remove") as a reference that skips it', async () => {
    const view = A.baseView.with({ type: 'gates', id: 'remove-1', gates: new Map([[1, 0]]) });
    const got = await A.logits(o.ids, view);
    const ref = referenceLogits(a.spec, a.tensors, o.ids, new Set([1]));
    got.forEach((l, i) => assert.ok(maxAbsDiff(l, ref[i]) < TOL, `position ${i}`));
  });

  it('refuses overlays that do not fit the backbone', async () => {
    const bad = new Map<string, Tensor>([['model.layers.9.self_attn.o_proj.weight', { shape: [64, 64], data: new Float32Array(4096) }]]);
    await assert.rejects(A.logits(o.ids, A.baseView.with(tensorOverlay(bad))), /does not have/);
    const shape = new Map<string, Tensor>([['model.norm.weight', { shape: [32], data: new Float32Array(32) }]]);
    await assert.rejects(A.logits(o.ids, A.baseView.with(tensorOverlay(shape))), /shape \[32\]/);
    await assert.rejects(A.logits([1, 999]), /outside the vocabulary/);
  });

  it('gives views a stable fingerprint that depends on the overlays', () => {
    const ov = tensorOverlay(pick(b.tensors, (n) => n.includes('o_proj')));
    assert.equal(A.baseView.with(ov).fingerprint, A.baseView.with(tensorOverlay(pick(b.tensors, (n) => n.includes('o_proj')))).fingerprint);
    assert.notEqual(A.baseView.with(ov).fingerprint, A.baseView.fingerprint);
    assert.equal(A.baseView.fingerprint, A.fingerprint);
  });
});

describe('engine on a Llama-layout checkpoint (tied head, Llama-3 rope scaling)', () => {
  let L: Engine;
  const ckpt = loadCheckpoint(fixtureDir('L_llama3_tied'));
  const o = oracle('L_llama3_tied');
  before(async () => {
    L = await Engine.load(fixtureDir('L_llama3_tied'), { threads: 1 });
  });
  after(() => L.release());

  it('matches a float64 reference written from the transformers code', async () => {
    assert.equal(ckpt.spec.tieWordEmbeddings, true);
    assert.equal(ckpt.spec.rope.type, 'llama3');
    const got = await L.logits(o.ids);
    const ref = referenceLogits(ckpt.spec, ckpt.tensors, o.ids);
    got.forEach((l, i) => assert.ok(maxAbsDiff(l, ref[i]) < TOL, `position ${i}`));
  });

  it('generates greedily with the KV cache as the reference does by recomputation', async () => {
    const cache = L.newCache(1);
    let [[logits]] = await L.forward(cache, [o.ids]);
    const ids = [...o.ids];
    for (let i = 0; i < 8; i++) {
      const next = argmax(logits);
      const ref = referenceLogits(ckpt.spec, ckpt.tensors, ids);
      assert.equal(next, argmax(ref[ref.length - 1]), `step ${i}`);
      ids.push(next);
      [[logits]] = await L.forward(cache, [[next]]);
    }
    assert.deepEqual(ids.slice(o.ids.length), o.greedy);
  });

  it('swaps the tied embedding (which is also the head) through a view', async () => {
    const e = ckpt.tensors.get('model.embed_tokens.weight')!;
    const scaled = { shape: e.shape, data: e.data.map((x) => x * 0.5) };
    const view = L.baseView.with(tensorOverlay(new Map([['model.embed_tokens.weight', scaled]])));
    const got = await L.logits(o.ids, view);
    const ref = referenceLogits(ckpt.spec, new Map([...ckpt.tensors, ['model.embed_tokens.weight', { ...scaled, name: '' }]]), o.ids);
    got.forEach((l, i) => assert.ok(maxAbsDiff(l, ref[i]) < TOL, `position ${i}`));
  });
});

describe('device selection', () => {
  it('SFN_DEVICE=cuda runs on CUDA where it can start, else warns and gives the CPU logits', async () => {
    const warnings: string[] = [];
    const cpu = await Engine.load(fixtureDir('A'), { threads: 1 });
    const cuda = await Engine.load(fixtureDir('A'), { threads: 1, device: 'cuda', warn: (m) => warnings.push(m) });
    try {
      const ids = oracle('A').ids;
      const [want, got] = [await cpu.logits(ids), await cuda.logits(ids)];
      if (cuda.device === 'cpu') {
        assert.equal(warnings.length, 1);
        assert.match(warnings[0], /CUDA execution provider could not start.*running on the CPU/);
        assert.deepEqual(got, want);
      } else {
        // A machine with a GPU and onnxruntime's CUDA files: the same logits up to kernel rounding.
        assert.equal(warnings.length, 0);
        for (let t = 0; t < ids.length; t++) assert.ok(maxAbsDiff(got[t], want[t]) < 1e-3, `position ${t}`);
      }
    } finally {
      cpu.release();
      cuda.release();
    }
  });
});

describe('rows of several plugins in one run', () => {
  it('gives every row the logits of its own view, on the serving session, for prefill and decode', async () => {
    const A = await Engine.load(fixtureDir('A'), { threads: 1 });
    try {
      const b = loadCheckpoint(fixtureDir('B'));
      const o = oracle('A');
      const oProj = A.baseView.with(tensorOverlay(pick(b.tensors, (n) => n.includes('o_proj'))));
      const norms = A.baseView.with(tensorOverlay(pick(b.tensors, (n) => n.includes('norm'))));
      const both = A.baseView.with(tensorOverlay(pick(b.tensors, (n) => n.includes('norm') || n.includes('o_proj'))));
      const views = [oProj, A.baseView, norms, oProj, both];
      assert.ok(views.every((v) => A.sharesRuns(v)));
      assert.ok(!A.sharesRuns(A.baseView.with(tensorOverlay(pick(b.tensors, (n) => n.includes('q_proj'))))));
      const ids = o.ids.slice(0, 6);
      const want = await Promise.all(views.map((v) => A.logits(ids, v)));
      // Prefill of all rows in one run (rows of different lengths), then decode steps, all mixed.
      const cache = A.newCache(views.length);
      const first = await A.forward(
        cache,
        views.map((_, i) => ids.slice(0, 3 + (i % 2))),
        { rowViews: views, logits: 'all' },
      );
      first.forEach((rows, i) => rows.forEach((l, t) => assert.ok(maxAbsDiff(l, want[i][t]) < TOL, `row ${i} position ${t}`)));
      // Decode: rows that prefilled 3 tokens take token 3 and then 4; rows with 4 take token 4 and then 5.
      const pos = views.map((_, i) => 3 + (i % 2));
      for (let s = 0; s < 2; s++) {
        const out = await A.forward(
          cache,
          views.map((_, i) => [ids[pos[i]]]),
          { rowViews: views },
        );
        out.forEach(([l], i) => assert.ok(maxAbsDiff(l, want[i][pos[i]]) < TOL, `decode row ${i} position ${pos[i]}`));
        for (let i = 0; i < pos.length; i++) pos[i]++;
      }
      // The expectation itself: the o_proj row matches M1's oracle, and the norm and o_proj rows differ from A.
      assert.ok(maxAbsDiff(want[0][5], oracle('M1_o_proj').logits[5]) < TOL);
      assert.ok(maxAbsDiff(want[2][5], want[1][5]) > 1e-3 && maxAbsDiff(want[0][5], want[1][5]) > 1e-3);
    } finally {
      await A.release();
    }
  });
});

describe('positions', () => {
  it("refuses to run past the model's max_position_embeddings (RoPE tables end there)", async () => {
    const A = await Engine.load(fixtureDir('A'), { threads: 1 });
    try {
      const max = A.spec.maxPositionEmbeddings;
      const cache = A.newCache(1);
      await assert.rejects(A.forward(cache, [Array.from({ length: max + 1 }, (_, i) => i % 50)]), /position/);
      assert.equal(cache.lengths[0], 0, 'nothing was appended');
    } finally {
      await A.release();
    }
  });
});

describe('frozen weights are held by onnxruntime alone', () => {
  it("drops the JS copy of q/k/v, the MLP, the embedding and the head once served, and reads them back as loaded, even after the checkpoint's files are replaced", async () => {
    const { cpSync, mkdtempSync, renameSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const { writeSafetensors } = await import('../../src/model/safetensors.ts');
    const dir = mkdtempSync(join(tmpdir(), 'sfn-frozen-'));
    cpSync(fixtureDir('A'), dir, { recursive: true });
    const A = loadCheckpoint(dir);
    const engine = await Engine.load(dir, { threads: 1 });
    try {
      const bytes = (kinds: (n: string) => boolean) => [...A.tensors].filter(([n]) => kinds(n)).reduce((a, [, t]) => a + t.data.byteLength, 0);
      // The embedding's rows are read from the checkpoint per run, and onnxruntime holds a copy of the head.
      const held = (n: string) => ['o_proj', 'input_layernorm', 'post_attention_layernorm', 'norm'].includes(parseName(n)!.kind);
      assert.equal(engine.heldWeightBytes, bytes(held), 'only the swappable weights stay in JS, the embedding and head not');
      const before = await engine.logits(oracle('A').ids);
      // Replace the weights file with zeros, as a new download would (a new file renamed over the old one).
      const zeros = [...A.tensors].map(([name, t]) => ({ name, dtype: 'F32' as const, shape: t.shape, data: new Uint8Array(t.data.byteLength) }));
      writeSafetensors(join(dir, 'new.safetensors'), zeros);
      renameSync(join(dir, 'new.safetensors'), join(dir, 'model.safetensors'));
      const name = 'model.layers.1.mlp.up_proj.weight';
      assert.deepEqual(Array.from(engine.parameter(name).data), Array.from(A.tensors.get(name)!.data), 'read back as loaded');
      // The embedding's rows too: the files opened at load, not the new ones.
      assert.deepEqual(await engine.logits(oracle('A').ids), before);
      // A merge of a frozen kind needs the research session: it holds every weight again, read back as loaded.
      const view = engine.baseView.with(tensorOverlay(new Map([[name, { shape: A.tensors.get(name)!.shape, data: A.tensors.get(name)!.data }]]), 'noop'));
      const merged = await engine.logits(oracle('A').ids, view);
      merged.forEach((row, i) => assert.ok(maxAbsDiff(row, before[i]) < 1e-4, `position ${i}`));
      assert.equal(
        engine.heldWeightBytes,
        bytes(() => true),
      );
    } finally {
      await engine.release();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
