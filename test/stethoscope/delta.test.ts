/** Delta: numbers against a float64 recomputation, the CLI's outputs, and the charts in a real browser. */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { loadCheckpoint } from '../../src/model/checkpoint.ts';
import { parseName } from '../../src/model/names.ts';
import { extractPlugin } from '../../src/plugins/extract.ts';
import { binOf, checkpointSource, computeDelta, pluginSource } from '../../src/stethoscope/delta.ts';
import { fixtureDir, ROOT } from '../helpers/fixtures.ts';

const run = promisify(execFile);
const A = loadCheckpoint(fixtureDir('A'));
const B = loadCheckpoint(fixtureDir('B'));

/** Independent float64 recomputation of one module's numbers. */
function reference(kind: string, layer: number | null, bins: number) {
  let d2 = 0;
  let a2 = 0;
  const hist = new Array(bins).fill(0);
  const rs: number[] = [];
  for (const [name, t] of A.tensors) {
    const p = parseName(name)!;
    if (p.kind !== kind || p.layer !== layer) continue;
    const b = B.tensors.get(name)!.data;
    t.data.forEach((a, i) => {
      const d = b[i] - a;
      d2 += d * d;
      a2 += a * a;
      const r = Math.max(-1, Math.min(1, a === 0 ? (d === 0 ? 0 : Math.sign(d)) : d / a));
      rs.push(r);
      hist[Math.min(bins - 1, Math.floor(((r + 1) / 2) * bins))]++;
    });
  }
  return { l2: Math.sqrt(d2), rel: Math.sqrt(d2) / Math.sqrt(a2), hist, rs };
}

const close = (a: number, b: number, rel = 1e-9) => Math.abs(a - b) <= rel * Math.max(1, Math.abs(b));

describe('delta', () => {
  it('equals a float64 recomputation for every module, and ranks o_proj and the norms first', async () => {
    const r = await computeDelta(checkpointSource(fixtureDir('A')), checkpointSource(fixtureDir('B')), { bins: 20 });
    assert.equal(r.modules.length, 4 * 9 + 3);
    for (const m of r.modules) {
      const ref = reference(m.kind, m.layer, 20);
      assert.ok(close(m.l2, ref.l2), `${m.kind}.${m.layer} l2`);
      assert.ok(close(m.rel_l2, ref.rel), `${m.kind}.${m.layer} rel`);
      assert.deepEqual(m.histogram, ref.hist, `${m.kind}.${m.layer} histogram`);
    }
    // The fixture's fine-tune moved o_proj and the norms most (see the fixtures' README).
    assert.deepEqual(new Set(r.kinds.slice(0, 4).map((k) => k.kind)), new Set(['o_proj', 'norm', 'input_layernorm', 'post_attention_layernorm']));
    // Bimodality coefficient of o_proj from its moments, recomputed.
    const rs = [0, 1, 2, 3].flatMap((l) => reference('o_proj', l, 20).rs);
    const n = rs.length;
    const mean = rs.reduce((a, x) => a + x, 0) / n;
    const m2 = rs.reduce((a, x) => a + (x - mean) ** 2, 0) / n;
    const m3 = rs.reduce((a, x) => a + (x - mean) ** 3, 0) / n;
    const m4 = rs.reduce((a, x) => a + (x - mean) ** 4, 0) / n;
    const g = m3 / m2 ** 1.5;
    const k = m4 / m2 ** 2 - 3;
    // The moment (uncorrected) form, as documented.
    const bc = (g * g + 1) / (k + 3);
    assert.ok(close(r.kinds.find((x) => x.kind === 'o_proj')!.bimodality!, bc, 1e-6));
  });

  it('puts a value on a histogram edge in the bin that edge starts', () => {
    for (const nb of [20, 50, 64, 100]) {
      for (let i = 0; i <= nb; i++) assert.equal(binOf(-1 + (2 * i) / nb, nb), Math.min(i, nb - 1), `edge ${i} of ${nb}`);
      assert.equal(binOf(-1e-300, nb), nb / 2 - 1, 'just below 0 is in the bin that ends at 0');
    }
  });

  it('ranks a kind that is zero in A and moved in B first, as its module rows say (relative change Infinity)', async () => {
    // Two in-memory sources: o_proj is zero in A; the norms moved a little.
    const tensors = (zero: boolean, bump: number) =>
      new Map([
        ['model.layers.0.self_attn.o_proj.weight', Float32Array.from({ length: 16 }, (_, i) => (zero ? 0 : 0.1 * (i + 1)))],
        ['model.layers.0.input_layernorm.weight', Float32Array.from({ length: 4 }, () => 1 + bump)],
      ]);
    const source = (label: string, t: Map<string, Float32Array>) => ({
      label,
      names: [...t.keys()],
      elements: (n: string) => t.get(n)!.length,
      readRange: (n: string, s: number, out: Float32Array) => (out.set(t.get(n)!.subarray(s, s + out.length)), out),
      close: () => {},
    });
    const r = await computeDelta(source('A', tensors(true, 0)), source('B', tensors(false, 0.01)), { bins: 10 });
    assert.equal(r.kinds[0].kind, 'o_proj');
    assert.equal(r.kinds[0].rel_l2, Infinity);
    assert.equal(r.modules.find((m) => m.kind === 'o_proj')!.rel_l2, Infinity);
  });

  it("compares a backbone with a plugin laid over it: only the plugin's modules move", async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'sfn-delta-')), 'p.safetensors');
    await extractPlugin(fixtureDir('A'), fixtureDir('B'), ['o_proj'], file);
    const r = await computeDelta(checkpointSource(fixtureDir('A')), pluginSource(fixtureDir('A'), file));
    for (const m of r.modules) {
      if (m.kind === 'o_proj') assert.ok(close(m.l2, reference('o_proj', m.layer, 50).l2));
      else assert.equal(m.l2, 0, `${m.kind}.${m.layer}`);
    }
  });

  it('reads sharded checkpoints: a sharded copy of a model has zero delta, another seed does not', async () => {
    const { makeModel } = await import('../../src/model/make-model.ts');
    const root = mkdtempSync(join(tmpdir(), 'sfn-delta-shards-'));
    makeModel(join(root, 'one'), { seed: 3, dtype: 'F32', config: { vocab_size: 512 } });
    makeModel(join(root, 'sharded'), { seed: 3, dtype: 'BF16', config: { vocab_size: 512 }, shardBytes: 60_000 });
    makeModel(join(root, 'other'), { seed: 4, dtype: 'F32', config: { vocab_size: 512 } });
    const same = await computeDelta(checkpointSource(join(root, 'one')), checkpointSource(join(root, 'sharded')));
    // BF16 rounding is the only difference: relative change within bf16's precision.
    for (const m of same.modules) assert.ok(m.rel_l2 < 2 ** -8, `${m.kind}.${m.layer}: ${m.rel_l2}`);
    const other = await computeDelta(checkpointSource(join(root, 'one')), checkpointSource(join(root, 'other')));
    assert.ok(other.modules.filter((m) => !m.kind.includes('norm')).every((m) => m.rel_l2 > 0.5));
  });

  it('sfn delta writes JSON, CSV, SVG charts and an HTML report', async () => {
    const out = mkdtempSync(join(tmpdir(), 'sfn-delta-out-'));
    await run(process.execPath, ['bin/sfn.js', 'delta', fixtureDir('A'), fixtureDir('B'), '--out', out, '--every', '2'], { cwd: ROOT });
    for (const f of ['delta.json', 'delta.csv', 'l2_by_layer.svg', 'histograms.svg', 'report.html']) assert.ok(statSync(join(out, f)).size > 0, f);
    const csv = readFileSync(join(out, 'delta.csv'), 'utf8').trim().split('\n');
    assert.equal(csv[0], 'kind,layer,elements,l2,a_l2,rel_l2');
    assert.equal(csv.length, 1 + 39);
    for (const f of ['l2_by_layer.svg', 'histograms.svg']) {
      const svg = readFileSync(join(out, f), 'utf8');
      assert.match(svg, /^<svg [^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
      assert.ok(svg.trimEnd().endsWith('</svg>'));
    }
    const hist = readFileSync(join(out, 'histograms.svg'), 'utf8');
    assert.ok(hist.includes('layer') && hist.includes('o_proj'));
  });

  const chromium = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
  it('renders the report page and its SVGs in headless Chromium', {
    skip: chromium ? false : "Debian's chromium is not installed (apt-get install chromium); the browser check is skipped",
  }, async () => {
    const out = mkdtempSync(join(tmpdir(), 'sfn-delta-web-'));
    await run(process.execPath, ['bin/sfn.js', 'delta', fixtureDir('A'), fixtureDir('B'), '--out', out], { cwd: ROOT });
    const browse = (file: string) =>
      execFileSync(
        chromium!,
        [
          '--headless',
          '--no-sandbox',
          '--disable-gpu',
          '--disable-quic',
          '--no-first-run',
          '--disable-background-networking',
          '--disable-component-update',
          '--disable-sync',
          `--user-data-dir=${mkdtempSync(join(tmpdir(), 'sfn-chrome-'))}`,
          '--dump-dom',
          `file://${file}`,
        ],
        { encoding: 'utf8', timeout: 60000, stdio: ['ignore', 'pipe', 'ignore'] },
      );
    // An SVG that is not well-formed XML renders as Chromium's parse-error page.
    for (const f of ['l2_by_layer.svg', 'histograms.svg']) {
      const dom = browse(join(out, f));
      assert.ok(!/parsererror|This page contains the following errors/.test(dom), `${f} is not valid SVG`);
      assert.match(dom, /<svg/);
    }
    const page = browse(join(out, 'report.html'));
    assert.match(page, /<table id="ranking">/);
    assert.equal((page.match(/<svg /g) ?? []).length, 2);
  });
});

describe('delta as a job over HTTP', () => {
  it('runs, reports progress and files, and is readable after a restart', async () => {
    const { parseServerConfig } = await import('../../src/server/config.ts');
    const { startServer } = await import('../../src/server/serve.ts');
    const { ORACLE_DIR } = await import('../helpers/fixtures.ts');
    const dataDir = mkdtempSync(join(tmpdir(), 'sfn-jobs-'));
    const cfg = parseServerConfig(
      ['--model', fixtureDir('A'), '--port', '0', '--admin-key', 'admin-key-123456', '--api-key', 'user-key-123456', '--model-root', ORACLE_DIR, '--data-dir', dataDir],
      {},
    );
    const admin = { authorization: 'Bearer admin-key-123456', 'content-type': 'application/json' };
    let srv = await startServer(cfg, () => {});
    try {
      await srv.host.ready;
      assert.equal((await fetch(`${srv.url}/v1/stethoscope/delta`, { method: 'POST', headers: { ...admin, authorization: 'Bearer user-key-123456' }, body: JSON.stringify({ b: 'B' }) })).status, 403);
      assert.equal((await fetch(`${srv.url}/v1/stethoscope/delta`, { method: 'POST', headers: admin, body: JSON.stringify({ plugin: 'nope' }) })).status, 404);
      assert.equal((await fetch(`${srv.url}/v1/stethoscope/delta`, { method: 'POST', headers: admin, body: JSON.stringify({ b: '../../..' }) })).status, 400);
      const r = await fetch(`${srv.url}/v1/stethoscope/delta`, { method: 'POST', headers: admin, body: JSON.stringify({ b: 'B', bins: 10 }) });
      assert.equal(r.status, 202);
      const { id } = (await r.json()) as { id: string };
      let job: { status: string; progress: { done: number; total: number }; files: string[]; result: { kinds: { kind: string }[] } };
      const t0 = Date.now();
      do {
        await new Promise((res) => setTimeout(res, 50));
        job = (await (await fetch(`${srv.url}/v1/stethoscope/jobs/${id}`, { headers: admin })).json()) as typeof job;
      } while (job.status !== 'succeeded' && job.status !== 'failed' && Date.now() - t0 < 30000);
      assert.equal(job.status, 'succeeded');
      assert.equal(job.progress.done, job.progress.total);
      assert.deepEqual(job.files, ['delta.csv', 'delta.json', 'histograms.svg', 'l2_by_layer.svg', 'report.html']);
      assert.equal(job.result.kinds[0].kind, 'o_proj');
      const svg = await fetch(`${srv.url}/v1/stethoscope/jobs/${id}/files/l2_by_layer.svg`, { headers: admin });
      assert.equal(svg.headers.get('content-type'), 'image/svg+xml');
      assert.match(await svg.text(), /^<svg/);
      assert.equal((await fetch(`${srv.url}/v1/stethoscope/jobs/${id}/files/..%2Fx`, { headers: admin })).status, 404);
      await srv.close();
      srv = await startServer(cfg, () => {});
      const again = (await (await fetch(`${srv.url}/v1/stethoscope/jobs/${id}`, { headers: admin })).json()) as typeof job;
      assert.equal(again.status, 'succeeded');
      assert.equal(again.files.length, 5);
    } finally {
      await srv.close();
    }
  });
});
