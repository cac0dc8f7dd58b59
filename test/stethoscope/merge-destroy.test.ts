/** Merges and destruction per request: through `sfn logits --merge/--destroy` and through HTTP. */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { loadCheckpoint } from '../../src/model/checkpoint.ts';
import { parseServerConfig } from '../../src/server/config.ts';
import { startServer, type RunningServer } from '../../src/server/serve.ts';
import { fnv1a, reinitTensor } from '../../src/views/build.ts';
import { fixtureDir, ORACLE_DIR, oracle, ROOT } from '../helpers/fixtures.ts';
import { expectPromptScores, maxAbsDiff, referenceLogits, type RefTensor } from '../helpers/reference.ts';

const run = promisify(execFile);
const A = loadCheckpoint(fixtureDir('A'));
const B = loadCheckpoint(fixtureDir('B'));
const o = oracle('A');

describe('sfn logits --merge / --destroy', () => {
  const logits = async (flag: string, json: unknown) => {
    const { stdout } = await run(process.execPath, ['bin/sfn.js', 'logits', '--model', fixtureDir('A'), '--ids', o.ids.join(','), '--greedy', '8', flag, JSON.stringify(json)], {
      cwd: ROOT,
      maxBuffer: 64 << 20,
    });
    return JSON.parse(stdout) as { logits: number[][]; greedy: number[] };
  };
  it("a merge of A with B's o_proj gives M1's oracle logits", async () => {
    const m1 = oracle('M1_o_proj');
    const got = await logits('--merge', [{ modules: ['M1'], layers: 'all', from: fixtureDir('B') }]);
    got.logits.forEach((r, i) => assert.ok(maxAbsDiff(r, m1.logits[i]) < 1e-4, `position ${i}`));
    assert.deepEqual(got.greedy, m1.greedy);
  });
  it("a Zero destruction of A's o_proj over layers 1-2 gives D_zero's oracle logits", async () => {
    const dz = oracle('D_zero_o_proj_1-2');
    const got = await logits('--destroy', [{ method: 'zero', modules: ['o_proj'], layers: '1-2' }]);
    got.logits.forEach((r, i) => assert.ok(maxAbsDiff(r, dz.logits[i]) < 1e-4, `position ${i}`));
    assert.deepEqual(got.greedy, dz.greedy);
  });
  it('refuses a bad spec with a usage error naming the field', async () => {
    await assert.rejects(logits('--destroy', [{ method: 'zero', modules: ['o_proj'], layers: '2-9' }]), (e: { code: number; stderr: string }) => e.code === 2 && /destroy\.0\.layers/.test(e.stderr));
  });
});

describe('sfn export', () => {
  const exportAndRead = async (flag: string, json: unknown) => {
    const out = mkdtempSync(join(tmpdir(), 'sfn-export-')) + '/model';
    await run(process.execPath, ['bin/sfn.js', 'export', '--model', fixtureDir('A'), flag, JSON.stringify(json), '--out', out], { cwd: ROOT });
    const { stdout } = await run(process.execPath, ['bin/sfn.js', 'logits', '--model', out, '--ids', o.ids.join(',')], { cwd: ROOT, maxBuffer: 64 << 20 });
    return { out, logits: (JSON.parse(stdout) as { logits: number[][] }).logits };
  };
  it("writes a merged view that, loaded back as a plain checkpoint, gives the view's logits", async () => {
    const { out, logits } = await exportAndRead('--merge', [{ modules: ['M1'], from: fixtureDir('B') }]);
    const m1 = oracle('M1_o_proj');
    logits.forEach((r, i) => assert.ok(maxAbsDiff(r, m1.logits[i]) < 1e-4, `position ${i}`));
    assert.ok(existsSync(join(out, 'tokenizer.json')) && existsSync(join(out, 'generation_config.json')));
  });
  it('writes removed layers as zeroed o_proj and down_proj, which compute the same', async () => {
    const { logits } = await exportAndRead('--destroy', [{ method: 'remove', layers: '1-2' }]);
    const ref = referenceLogits(A.spec, A.tensors, o.ids, new Set([1, 2]));
    logits.forEach((r, i) => assert.ok(maxAbsDiff(r, ref[i]) < 1e-4, `position ${i}`));
  });
});

describe('ReInit', () => {
  it('draws N(0, 0.02) weights and zero biases, the same for a seed on every machine', () => {
    const w = reinitTensor('model.layers.0.mlp.up_proj.weight', [256, 256], 7);
    const mean = w.reduce((a, x) => a + x, 0) / w.length;
    const std = Math.sqrt(w.reduce((a, x) => a + (x - mean) ** 2, 0) / w.length);
    assert.ok(Math.abs(mean) < 0.001 && Math.abs(std - 0.02) < 0.0005);
    assert.deepEqual(reinitTensor('model.layers.0.self_attn.q_proj.bias', [4], 7), new Float32Array(4));
    assert.deepEqual(reinitTensor('model.layers.0.mlp.up_proj.weight', [256, 256], 7), w);
    assert.notDeepEqual(reinitTensor('model.layers.0.mlp.up_proj.weight', [256, 256], 8), w);
    // Pinned: the generator (sfc32 via splitmix32, Box-Muller) and the seed mixing are part of the contract.
    assert.equal(fnv1a('a'), 0xe40c292c); // FNV-1a's published test vectors
    assert.equal(fnv1a('foobar'), 0xbf9cf968);
    assert.deepEqual(
      Array.from(w.slice(0, 3), (x) => +x.toFixed(6)),
      PINNED_REINIT,
    );
  });
});
const PINNED_REINIT = [0.007763, -0.029786, -0.016289];

describe('merges and destruction over HTTP', () => {
  let srv: RunningServer;
  const score = async (body: Record<string, unknown>, expectStatus = 200) => {
    const r = await fetch(`${srv.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'A', prompt: o.ids, max_tokens: 0, echo: true, logprobs: 0, ...body }),
    });
    const json = (await r.json()) as { choices: { logprobs: { token_logprobs: number[] } }[]; error: { param: string } };
    assert.equal(r.status, expectStatus, JSON.stringify(json));
    return json;
  };
  const expectScores = (got: (number | null)[], logits: ArrayLike<number>[]) => expectPromptScores(got, o.ids, logits);
  before(async () => {
    srv = await startServer(parseServerConfig(['--model', fixtureDir('A'), '--port', '0', '--model-root', ORACLE_DIR, '--data-dir', `${ROOT}/.scratch-test-data-${process.pid}`], {}), () => {});
    await srv.host.ready;
  });
  after(async () => {
    await srv.close();
    const { rmSync } = await import('node:fs');
    rmSync(`${ROOT}/.scratch-test-data-${process.pid}`, { recursive: true, force: true });
  });

  it("merge M1 per request gives M1's oracle logits; Zero over 1-2 gives D_zero's", async () => {
    expectScores((await score({ merge: [{ modules: ['o_proj'], layers: '0-3', from: 'B' }] })).choices[0].logprobs.token_logprobs, oracle('M1_o_proj').logits);
    expectScores((await score({ destroy: [{ method: 'zero', modules: ['o_proj'], layers: '1-2' }] })).choices[0].logprobs.token_logprobs, oracle('D_zero_o_proj_1-2').logits);
    expectScores((await score({})).choices[0].logprobs.token_logprobs, o.logits);
  });

  it('interpolates with alpha and merges frozen kinds (M2) on the research session, as a float64 reference', async () => {
    const mixed = new Map<string, RefTensor>(A.tensors);
    for (const [n, t] of B.tensors) {
      if (/self_attn\.(q|k|v)_proj/.test(n) && /layers\.[12]\./.test(n)) {
        const a = A.tensors.get(n)!.data;
        mixed.set(n, { shape: t.shape, data: a.map((x, i) => 0.75 * x + 0.25 * t.data[i]) });
      }
    }
    const got = (await score({ merge: [{ modules: ['M2'], layers: '1-2', from: 'B', alpha: 0.25 }] })).choices[0].logprobs.token_logprobs;
    expectScores(got, referenceLogits(A.spec, mixed, o.ids));
  });

  it('removes layers and re-initialises modules reproducibly', async () => {
    const removed = (await score({ destroy: [{ method: 'remove', layers: '1-2' }] })).choices[0].logprobs.token_logprobs;
    expectScores(removed, referenceLogits(A.spec, A.tensors, o.ids, new Set([1, 2])));
    const r1 = (await score({ destroy: [{ method: 'reinit', modules: ['M3'], layers: '0', seed: 3 }] })).choices[0].logprobs.token_logprobs;
    const r2 = (await score({ destroy: [{ method: 'reinit', modules: ['M3'], layers: '0', seed: 3 }] })).choices[0].logprobs.token_logprobs;
    const r3 = (await score({ destroy: [{ method: 'reinit', modules: ['M3'], layers: '0', seed: 4 }] })).choices[0].logprobs.token_logprobs;
    assert.deepEqual(r1, r2);
    assert.notDeepEqual(r1, r3);
    const re = new Map<string, RefTensor>(A.tensors);
    for (const k of ['gate_proj', 'up_proj', 'down_proj']) {
      const n = `model.layers.0.mlp.${k}.weight`;
      re.set(n, { shape: A.tensors.get(n)!.shape, data: reinitTensor(n, A.tensors.get(n)!.shape, 3) });
    }
    expectScores(r1, referenceLogits(A.spec, re, o.ids));
  });

  it("exports a view over HTTP as a checkpoint that loads back with the view's logits", async () => {
    const r = await fetch(`${srv.url}/v1/stethoscope/export`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'dzero', model: 'A', destroy: [{ method: 'zero', modules: ['o_proj'], layers: '1-2' }] }),
    });
    assert.equal(r.status, 201, await r.clone().text());
    const { path } = (await r.json()) as { path: string };
    const { stdout } = await run(process.execPath, ['bin/sfn.js', 'logits', '--model', path, '--ids', o.ids.join(',')], { cwd: ROOT, maxBuffer: 64 << 20 });
    const dz = oracle('D_zero_o_proj_1-2');
    (JSON.parse(stdout) as { logits: number[][] }).logits.forEach((row, i) => assert.ok(maxAbsDiff(row, dz.logits[i]) < 1e-4));
    const again = await fetch(`${srv.url}/v1/stethoscope/export`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'dzero', model: 'A' }) });
    assert.equal(again.status, 409);
  });

  it('saves a merge of pluggable kinds as a plugin that serves the merged logits, and probes prompts', async () => {
    const post = (body: unknown) => fetch(`${srv.url}/v1/stethoscope/merge`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const r = await post({ merge: [{ modules: ['M1'], from: 'B' }], save_as: 'm1-saved', prompts: [{ prompt: 'Hello' }], max_tokens: 6 });
    assert.equal(r.status, 201, await r.clone().text());
    const body = (await r.json()) as { plugin: { model: string; modules: string[] }; results: { intact: { level: string }; merged: { level: string; text: string } }[] };
    assert.equal(body.plugin.model, 'A:m1-saved');
    assert.deepEqual(body.plugin.modules, ['o_proj']);
    assert.equal(body.results.length, 1);
    assert.ok(body.results[0].merged.level);
    expectScores((await score({ model: 'A:m1-saved' })).choices[0].logprobs.token_logprobs, oracle('M1_o_proj').logits);
    // alpha: the saved tensors are (1-alpha)*A + alpha*B
    assert.equal((await post({ merge: [{ modules: ['o_proj'], from: 'B', alpha: 0.5 }], save_as: 'half' })).status, 201);
    const mixed = new Map<string, RefTensor>(A.tensors);
    for (const [n, t] of B.tensors) if (n.includes('o_proj')) mixed.set(n, { shape: t.shape, data: A.tensors.get(n)!.data.map((x, i) => 0.5 * x + 0.5 * t.data[i]) });
    expectScores((await score({ model: 'A:half' })).choices[0].logprobs.token_logprobs, referenceLogits(A.spec, mixed, o.ids));
    const frozen = await post({ merge: [{ modules: ['M2'], from: 'B' }], save_as: 'nope' });
    assert.equal(frozen.status, 400);
    assert.equal(((await frozen.json()) as { error: { param: string } }).error.param, 'merge.0.modules');
  });

  it('registers donor checkpoints by name, and merges name them in "from"', async () => {
    const reg = await fetch(`${srv.url}/v1/stethoscope/checkpoints`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'tuned-b', path: 'B' }) });
    assert.equal(reg.status, 201, await reg.clone().text());
    const list = (await (await fetch(`${srv.url}/v1/stethoscope/checkpoints`)).json()) as { data: { name: string }[] };
    assert.deepEqual(
      list.data.map((x) => x.name),
      ['tuned-b'],
    );
    expectScores((await score({ merge: [{ modules: ['o_proj'], from: 'tuned-b' }] })).choices[0].logprobs.token_logprobs, oracle('M1_o_proj').logits);
    const outside = await fetch(`${srv.url}/v1/stethoscope/checkpoints`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'x', path: '/etc' }) });
    assert.equal(outside.status, 400);
    assert.equal((await fetch(`${srv.url}/v1/stethoscope/checkpoints/tuned-b`, { method: 'DELETE' })).status, 200);
    assert.equal((await score({ merge: [{ modules: ['o_proj'], from: 'tuned-b' }] }, 400)).error.param, 'merge.0.from');
  });

  it('answers 400 naming the field for a bad spec', async () => {
    assert.equal((await score({ destroy: [{ method: 'zero', modules: ['o_proj'], layers: '3-7' }] }, 400)).error.param, 'destroy.0.layers');
    assert.equal((await score({ merge: [{ modules: ['o_proj'], from: 'nowhere' }] }, 400)).error.param, 'merge.0.from');
    assert.equal((await score({ merge: [{ modules: ['wings'], from: 'B' }] }, 400)).error.param, 'merge.0.modules.0');
    assert.equal((await score({ destroy: [{ method: 'remove', modules: ['o_proj'], layers: '1' }] }, 400)).error.param, 'destroy.0.modules');
  });
});
