/**
 * Plugins end to end over HTTP: extraction from fixture B against A, upload, serving `A:plugin` with the
 * logits of A carrying B's modules, a corpus of malformed files that must leave no trace, and the store's
 * consistency across SIGKILLs in the middle of uploads.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { request } from 'node:http';
import { mkdtempSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadCheckpoint } from '../../src/model/checkpoint.ts';
import { fromFloat32 } from '../../src/model/dtype.ts';
import { parseName } from '../../src/model/names.ts';
import { writeSafetensors, type TensorToWrite } from '../../src/model/safetensors.ts';
import { extractPlugin } from '../../src/plugins/extract.ts';
import { parseServerConfig } from '../../src/server/config.ts';
import { startServer, type RunningServer } from '../../src/server/serve.ts';
import { fixtureDir, ORACLE_DIR, oracle, ROOT } from '../helpers/fixtures.ts';
import { expectPromptScores, referenceLogits } from '../helpers/reference.ts';

const ADMIN = 'admin-key-123456';
const USER = 'user-key-123456';
const tmp = mkdtempSync(join(tmpdir(), 'sfn-plugins-'));
const A = loadCheckpoint(fixtureDir('A'));
const B = loadCheckpoint(fixtureDir('B'));
const o = oracle('A');

/** Every file under a directory, with its size (a store's fingerprint for "left no trace"). */
function listing(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const n of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, n.name);
      if (n.isDirectory()) walk(p);
      else out.push(`${p.slice(dir.length)}:${statSync(p).size}`);
    }
  };
  walk(dir);
  return out.sort();
}

/** A plugin file built from tensors, in F32. */
function pluginFile(name: string, tensors: Map<string, { shape: number[]; data: Float32Array }>, metadata: Record<string, string> = {}): string {
  const path = join(tmp, name);
  const list: TensorToWrite[] = [...tensors].map(([n, t]) => ({ name: n, dtype: 'F32', shape: t.shape, data: fromFloat32(t.data, 'F32') }));
  writeSafetensors(path, list, metadata);
  return path;
}

describe('plugins over HTTP', () => {
  let srv: RunningServer;
  const dataDir = join(tmp, 'data');
  const headers = (key = ADMIN) => ({ authorization: `Bearer ${key}` });
  const upload = (id: string, bytes: Uint8Array, query = '', key = ADMIN) =>
    fetch(`${srv.url}/v1/plugins?id=${encodeURIComponent(id)}${query}`, {
      method: 'POST',
      headers: { ...headers(key), 'content-type': 'application/octet-stream' },
      body: bytes as Uint8Array<ArrayBuffer>,
    });
  const score = async (model: string) => {
    const r = await fetch(`${srv.url}/v1/completions`, {
      method: 'POST',
      headers: { ...headers(USER), 'content-type': 'application/json' },
      body: JSON.stringify({ model, prompt: o.ids, max_tokens: 0, echo: true, logprobs: 0 }),
    });
    assert.equal(r.status, 200, await r.clone().text());
    return ((await r.json()) as { choices: { logprobs: { token_logprobs: (number | null)[] } }[] }).choices[0].logprobs.token_logprobs;
  };
  const expectScores = (got: (number | null)[], logits: ArrayLike<number>[]) => expectPromptScores(got, o.ids, logits);

  before(async () => {
    const config = parseServerConfig(
      ['--model', fixtureDir('A'), '--port', '0', '--api-key', USER, '--admin-key', ADMIN, '--data-dir', dataDir, '--model-root', ORACLE_DIR, '--max-plugin-mb', '1'],
      {},
    );
    srv = await startServer(config, () => {});
    await srv.host.ready;
  });
  after(() => srv.close());

  it("extracts a plugin from B against A, then serves A:plugin with exactly A + B's o_proj/norms/embed/head", async () => {
    const r = await fetch(`${srv.url}/v1/plugins/extract`, {
      method: 'POST',
      headers: { ...headers(), 'content-type': 'application/json' },
      body: JSON.stringify({ id: 'b-freeze', base: 'A', tuned: 'B', modules: ['o_proj', 'norms', 'embed', 'head'] }),
    });
    assert.equal(r.status, 201, await r.clone().text());
    const { plugin, audit } = (await r.json()) as { plugin: { model: string; modules: string[] }; audit: { exact: boolean; not_extracted: { kind: string; max_abs_diff: number }[] } };
    assert.equal(plugin.model, 'A:b-freeze');
    assert.deepEqual(plugin.modules, ['embed_tokens', 'input_layernorm', 'lm_head', 'norm', 'o_proj', 'post_attention_layernorm']);
    assert.equal(audit.exact, false, 'B also changed q/k/v and the MLP a little');
    assert.ok(audit.not_extracted.find((k) => k.kind === 'q_proj')!.max_abs_diff > 0);
    // The expectation, built from the fixtures: A with B's pluggable tensors, through the float64 reference.
    const mixed = new Map(A.tensors);
    for (const [n, t] of B.tensors) if (['o_proj', 'input_layernorm', 'post_attention_layernorm', 'norm', 'embed_tokens', 'lm_head'].includes(parseName(n)!.kind)) mixed.set(n, t);
    expectScores(await score('A:b-freeze'), referenceLogits(A.spec, mixed, o.ids));
    expectScores(await score('A'), o.logits);
  });

  it("serves M1's logits through an o_proj-only plugin made with `sfn extract` and uploaded", async () => {
    const file = join(tmp, 'm1.safetensors');
    const audit = await extractPlugin(fixtureDir('A'), fixtureDir('B'), ['o_proj'], file);
    assert.equal(audit.tensors, 4);
    const r = await upload('m1', readFileSync(file), '&description=M1');
    assert.equal(r.status, 201, await r.clone().text());
    expectScores(await score('A:m1'), oracle('M1_o_proj').logits);
    const models = (await (await fetch(`${srv.url}/v1/models`, { headers: headers(USER) })).json()) as { data: { id: string; parent: string | null }[] };
    assert.ok(models.data.some((m) => m.id === 'A:m1' && m.parent === 'A'));
  });

  it('counts plugin cache hits and misses as Prometheus counters', async () => {
    const scrape = async () => {
      const text = await (await fetch(`${srv.url}/metrics`)).text();
      const value = (name: string) => {
        assert.match(text, new RegExp(`^# TYPE ${name} counter$`, 'm'));
        return Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)![1]);
      };
      return { hits: value('sfn_plugin_cache_hits_total'), misses: value('sfn_plugin_cache_misses_total'), steps: value('sfn_engine_steps_total') };
    };
    const before = await scrape();
    assert.ok(before.misses >= 1, 'the plugins above were loaded from disk');
    await score('A:m1');
    const after = await scrape();
    assert.ok(after.hits > before.hits, 'a cached plugin is a hit');
    assert.equal(after.misses, before.misses);
    assert.ok(after.steps > before.steps);
  });

  it('lists the plugin a running request named, not every plugin with the same bytes (vllm:lora_requests_info)', async () => {
    assert.equal((await upload('m1-twin', readFileSync(join(tmp, 'm1.safetensors')))).status, 201);
    const ac = new AbortController();
    const r = await fetch(`${srv.url}/v1/completions`, {
      method: 'POST',
      headers: { ...headers(USER), 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'A:m1-twin', prompt: o.ids, max_tokens: 2000, ignore_eos: true, stream: true }),
      signal: ac.signal,
    });
    const reader = r.body!.getReader();
    await reader.read();
    const text = await (await fetch(`${srv.url}/metrics`)).text();
    ac.abort();
    await reader.cancel().catch(() => {});
    assert.match(text, /^vllm:lora_requests_info\{running_lora_adapters="A:m1-twin",waiting_lora_adapters="",max_lora="4"\} /m);
    assert.equal((await fetch(`${srv.url}/v1/plugins/m1-twin`, { method: 'DELETE', headers: headers() })).status, 200);
  });

  it('is idempotent for identical bytes, 409 for different bytes, replaced with overwrite', async () => {
    const file = join(tmp, 'm1.safetensors');
    assert.equal((await upload('m1', readFileSync(file))).status, 200);
    const zeros = new Map([
      ['model.layers.1.self_attn.o_proj.weight', { shape: [64, 64], data: new Float32Array(4096) }],
      ['model.layers.2.self_attn.o_proj.weight', { shape: [64, 64], data: new Float32Array(4096) }],
    ]);
    const dz = readFileSync(pluginFile('dzero.safetensors', zeros));
    const conflict = await upload('m1', dz);
    assert.equal(conflict.status, 409);
    assert.equal(((await conflict.json()) as { error: { code: string } }).error.code, 'plugin_exists');
    expectScores(await score('A:m1'), oracle('M1_o_proj').logits);
    assert.equal((await upload('m1', dz, '&overwrite=true')).status, 201);
    expectScores(await score('A:m1'), oracle('D_zero_o_proj_1-2').logits);
  });

  it('refuses a plugin id that names a registered checkpoint (both are merges\' "from"), and the reverse', async () => {
    const reg = await fetch(`${srv.url}/v1/stethoscope/checkpoints`, {
      method: 'POST',
      headers: { ...headers(), 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'donor-b', path: 'B' }),
    });
    assert.equal(reg.status, 201, await reg.clone().text());
    const name = 'model.layers.0.self_attn.o_proj.weight';
    const r = await upload('donor-b', readFileSync(pluginFile('taken.safetensors', new Map([[name, { shape: [64, 64], data: A.tensors.get(name)!.data.slice() }]]))));
    const body = (await r.json()) as { error: { code: string; param: string } };
    assert.equal(r.status, 409);
    assert.deepEqual([body.error.code, body.error.param], ['name_taken', 'id']);
    assert.equal((await upload('not-a-donor', readFileSync(join(tmp, 'taken.safetensors')))).status, 201);
    const back = await fetch(`${srv.url}/v1/stethoscope/checkpoints`, {
      method: 'POST',
      headers: { ...headers(), 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'not-a-donor', path: 'B' }),
    });
    assert.equal(back.status, 409);
    assert.equal(((await back.json()) as { error: { code: string } }).error.code, 'name_taken');
    assert.equal((await fetch(`${srv.url}/v1/plugins/not-a-donor`, { method: 'DELETE', headers: headers() })).status, 200);
    assert.equal((await fetch(`${srv.url}/v1/stethoscope/checkpoints/donor-b`, { method: 'DELETE', headers: headers() })).status, 200);
  });

  it('lists, gets and deletes (admin), and a deleted plugin is a 404 model', async () => {
    const list = (await (await fetch(`${srv.url}/v1/plugins`, { headers: headers(USER) })).json()) as { data: { id: string }[] };
    assert.deepEqual(
      list.data.map((p) => p.id),
      ['b-freeze', 'm1'],
    );
    const one = (await (await fetch(`${srv.url}/v1/plugins/m1`, { headers: headers(USER) })).json()) as { sha256: string; size: number };
    assert.match(one.sha256, /^[0-9a-f]{64}$/);
    assert.equal((await fetch(`${srv.url}/v1/plugins/m1`, { method: 'DELETE', headers: headers(USER) })).status, 403);
    assert.equal((await fetch(`${srv.url}/v1/plugins/m1`, { method: 'DELETE', headers: headers() })).status, 200);
    assert.equal((await fetch(`${srv.url}/v1/plugins/m1`, { headers: headers() })).status, 404);
    const r = await fetch(`${srv.url}/v1/completions`, { method: 'POST', headers: { ...headers(USER), 'content-type': 'application/json' }, body: JSON.stringify({ model: 'A:m1', prompt: 'x' }) });
    assert.equal(r.status, 404);
    assert.ok(!listing(dataDir).some((f) => f.includes(one.sha256)), 'the unused blob is gone');
  });

  it('gives the Freeze plan', async () => {
    const r = (await (await fetch(`${srv.url}/v1/stethoscope/freeze-plan`, { headers: headers(USER) })).json()) as { total_parameters: number; sets: { name: string; trainable: number }[] };
    assert.equal(
      r.total_parameters,
      [...A.tensors.values()].reduce((a, t) => a + t.data.length, 0),
    );
    assert.deepEqual(
      r.sets.map((s) => s.name),
      ['Emb+Head', 'Emb+Head+o_proj', 'Emb+Head+{q,k,v,o}_proj', 'All'],
    );
    assert.equal(r.sets[1].trainable - r.sets[0].trainable, 4 * 64 * 64);
  });

  it('documents every operation with an operationId, bearer security and the scope the server enforces', async () => {
    const doc = (await (await fetch(`${srv.url}/openapi.json`)).json()) as {
      paths: Record<string, Record<string, { operationId: string; security: unknown[]; 'x-sfn-scope': string }>>;
      components: { securitySchemes: Record<string, unknown> };
    };
    assert.ok(doc.components.securitySchemes.bearerAuth);
    const ids = new Set<string>();
    for (const [path, item] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(item)) {
        assert.ok(op.operationId && !ids.has(op.operationId), `${method} ${path}: operationId`);
        ids.add(op.operationId);
        const scope = op['x-sfn-scope'];
        assert.deepEqual(op.security, scope === 'none' ? [] : [{ bearerAuth: [] }], `${method} ${path}`);
        const url = srv.url + path.replace(/\{[^}]+\}/g, 'no-such-thing');
        const send = (key?: string) =>
          fetch(url, { method: method.toUpperCase(), headers: { ...(key ? headers(key) : {}), 'content-type': 'application/json' }, body: method === 'get' ? undefined : '{}' });
        if (method === 'delete' && path.startsWith('/v1/plugins')) continue; // a real delete with the admin key is tested above
        const asUser = (await send(USER)).status;
        if (scope === 'admin') assert.equal(asUser, 403, `${method} ${path} should need an admin key`);
        else assert.ok(asUser !== 401 && asUser !== 403, `${method} ${path}: a user key got ${asUser}`);
        if (scope === 'none') assert.ok(![401, 403].includes((await send()).status), `${method} ${path} should be open`);
        else assert.equal((await send()).status, 401, `${method} ${path} should need a key`);
      }
    }
  });

  it('needs an admin key everywhere else under /v1/stethoscope, routes that do not exist included', async () => {
    const post = (path: string, key: string) => fetch(`${srv.url}${path}`, { method: 'POST', headers: { ...headers(key), 'content-type': 'application/json' }, body: '{}' });
    for (const path of ['/v1/stethoscope/levels', '/v1/stethoscope/freeze', '/v1/stethoscope/eval', '/v1/stethoscope/merge', '/v1/stethoscope/no-such-route']) {
      assert.equal((await post(path, USER)).status, 403, path);
    }
    assert.equal((await fetch(`${srv.url}/v1/stethoscope/jobs`, { headers: headers(USER) })).status, 403);
    assert.equal((await post('/v1/stethoscope/levels', ADMIN)).status, 400, 'an admin gets through to validation');
    assert.equal((await fetch(`${srv.url}/v1/stethoscope/freeze-plan`, { method: 'POST', headers: headers(USER) })).status, 403, 'user scope is per method');
  });

  describe('malformed and mismatched uploads get a 4xx and leave no trace', () => {
    const oProj = (l: number) => `model.layers.${l}.self_attn.o_proj.weight`;
    const good = () => new Map([[oProj(0), { shape: [64, 64], data: A.tensors.get(oProj(0))!.data.slice() }]]);
    const raw = (header: unknown, data: number, lenOverride?: bigint) => {
      const h = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(lenOverride ?? BigInt(h.length));
      return Buffer.concat([len, h, Buffer.alloc(data)]);
    };
    const file = (name: string, t: Map<string, { shape: number[]; data: Float32Array }>, meta?: Record<string, string>) => readFileSync(pluginFile(name, t, meta));
    const withData = (f: (d: Float32Array) => void) => {
      const t = good();
      f(t.get(oProj(0))!.data);
      return t;
    };
    const okBytes = () => file('good.safetensors', good());
    const cases: [string, () => Uint8Array, number, RegExp][] = [
      ['empty', () => new Uint8Array(0), 400, /safetensors\.too_small/],
      ['not safetensors at all', () => Buffer.from('{"this": "is json, not safetensors"}'), 400, /safetensors/],
      ['truncated', () => okBytes().subarray(0, 2000), 400, /safetensors\.truncated/],
      ['oversized header length', () => raw({}, 0, 500_000_000n), 400, /header_too_large/],
      ['header not an object', () => raw([1, 2], 0), 400, /header_object/],
      ['overlapping offsets', () => raw({ [oProj(0)]: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, [oProj(1)]: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, 12), 400, /overlap/],
      ['gapped offsets', () => raw({ [oProj(0)]: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, [oProj(1)]: { dtype: 'F32', shape: [1], data_offsets: [8, 12] } }, 12), 400, /gap/],
      ['unknown dtype', () => raw({ [oProj(0)]: { dtype: 'Q4', shape: [1], data_offsets: [0, 4] } }, 4), 400, /dtype/],
      ['duplicate names', () => raw(`{"${oProj(0)}":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"${oProj(0)}":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), 400, /duplicate_name/],
      ['integer dtype', () => raw({ [oProj(0)]: { dtype: 'I32', shape: [64, 64], data_offsets: [0, 16384] } }, 16384), 400, /invalid_plugin\.dtype/],
      ['wrong shape', () => file('shape.safetensors', new Map([[oProj(0), { shape: [32, 128], data: new Float32Array(4096) }]])), 400, /invalid_plugin\.shape/],
      ['unknown name', () => file('name.safetensors', new Map([['model.layers.0.self_attn.rotary.weight', { shape: [4], data: new Float32Array(4) }]])), 400, /unknown_name/],
      ['layer the backbone lacks', () => file('layer.safetensors', new Map([[oProj(9), { shape: [64, 64], data: new Float32Array(4096) }]])), 400, /not_in_backbone/],
      ['frozen-module name', () => file('frozen.safetensors', new Map([['model.layers.0.self_attn.q_proj.weight', { shape: [64, 64], data: new Float32Array(4096) }]])), 400, /frozen_module/],
      [
        'NaN',
        () =>
          file(
            'nan.safetensors',
            withData((d) => (d[77] = NaN)),
          ),
        400,
        /non_finite/,
      ],
      [
        'Infinity',
        () =>
          file(
            'inf.safetensors',
            withData((d) => (d[5] = -Infinity)),
          ),
        400,
        /non_finite/,
      ],
      [
        'an o_proj value of 3e38 (finite, absurd)',
        () =>
          file(
            'huge.safetensors',
            withData((d) => (d[3] = 3e38)),
          ),
        400,
        /invalid_plugin\.magnitude .*o_proj.*--max-plugin-scale/,
      ],
      [
        'a norm of 1e30',
        () => file('norm.safetensors', new Map([['model.layers.1.input_layernorm.weight', { shape: [64], data: new Float32Array(64).fill(1e30) }]])),
        400,
        /invalid_plugin\.magnitude .*input_layernorm/,
      ],
      ['wrong base', () => file('base.safetensors', good(), { 'sfn.base_fingerprint': '0'.repeat(32) }), 400, /base_mismatch/],
      ['no tensors', () => raw({ __metadata__: { a: 'b' } }, 0), 400, /invalid_plugin\.empty/],
      ['over the size limit', () => Buffer.alloc(1024 * 1024 + 10, 1), 413, /payload_too_large/],
    ];
    for (const [name, make, status, code] of cases) {
      it(name, async () => {
        const before = listing(dataDir);
        const r = await upload('corpus', make());
        const body = (await r.json()) as { error: { code: string; message: string } };
        assert.equal(r.status, status, JSON.stringify(body));
        assert.match(`${body.error.code} ${body.error.message}`, code);
        assert.deepEqual(listing(dataDir), before);
      });
    }
    it('rejects ids with path tricks', async () => {
      const before = listing(dataDir);
      for (const id of ['../evil', 'a/b', '.hidden', '', 'x'.repeat(65), 'a..b']) {
        const r = await upload(id, okBytes());
        assert.equal(r.status, 400, id);
      }
      assert.deepEqual(listing(dataDir), before);
    });
    it('needs an admin key to upload', async () => {
      assert.equal((await upload('x', okBytes(), '', USER)).status, 403);
    });
    it('refuses extraction outside the model roots', async () => {
      const r = await fetch(`${srv.url}/v1/plugins/extract`, {
        method: 'POST',
        headers: { ...headers(), 'content-type': 'application/json' },
        body: JSON.stringify({ id: 'x', base: '../../..', tuned: 'B' }),
      });
      assert.equal(r.status, 400);
    });
  });
});

describe('the store survives SIGKILL in the middle of uploads', () => {
  it('holds the old version or nothing, never a partial plugin, across kills', async () => {
    const dataDir = mkdtempSync(join(tmp, 'kill-'));
    // Versions: A's o_proj of layer 0 scaled by k; each ~16 KB, sent slowly in small chunks.
    const versions = [1, 2, 3, 4, 5, 6].map((k) => {
      const t = new Map([['model.layers.0.self_attn.o_proj.weight', { shape: [64, 64], data: A.tensors.get('model.layers.0.self_attn.o_proj.weight')!.data.map((x) => x * k) }]]);
      return readFileSync(pluginFile(`v${k}.safetensors`, t));
    });
    const { createHash } = await import('node:crypto');
    const shas = versions.map((v) => createHash('sha256').update(v).digest('hex'));
    let lastCommitted: string | null = null;

    async function start(): Promise<{ child: ChildProcess; url: string }> {
      const child = spawn(process.execPath, ['bin/sfn.js', 'serve', '--model', fixtureDir('A'), '--port', '0', '--data-dir', dataDir], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout!.on('data', (d) => (out += d));
      child.stderr!.on('data', (d) => (out += d));
      const t0 = Date.now();
      while (!/model loaded/.test(out)) {
        if (Date.now() - t0 > 30000) throw new Error(`server did not start: ${out}`);
        await new Promise((r) => setTimeout(r, 25));
      }
      return { child, url: /listening on (http:\/\/\S+),/.exec(out)![1] };
    }

    for (let round = 0; round < versions.length; round++) {
      const { child, url } = await start();
      // The store as the restarted server sees it: nothing, or a version that was completely sent.
      const r = await fetch(`${url}/v1/plugins/p`);
      if (r.status === 200) {
        const m = (await r.json()) as { sha256: string };
        // A killed upload leaves the previous version in place; a completed one replaced it.
        assert.equal(m.sha256, lastCommitted, `round ${round}`);
        const gen = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'A:p', prompt: 'hi', max_tokens: 2 }) });
        assert.equal(gen.status, 200);
      } else {
        assert.equal(r.status, 404);
        assert.equal(lastCommitted, null, `round ${round}: the committed version vanished`);
      }
      // Upload the next version slowly and kill the server at a point that moves through the upload.
      const bytes = versions[round];
      const killAfterChunks = [2, 100, 1000, 6, 1000, 40][round];
      const chunk = 512;
      let sent = 0;
      const body = new ReadableStream<Uint8Array>({
        async pull(ctrl) {
          if (sent >= bytes.length) return ctrl.close();
          ctrl.enqueue(bytes.subarray(sent, sent + chunk));
          sent += chunk;
          if (sent / chunk === killAfterChunks) child.kill('SIGKILL');
          await new Promise((res) => setTimeout(res, 2));
        },
      });
      try {
        const res = await fetch(`${url}/v1/plugins?id=p&overwrite=true`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body, duplex: 'half' } as RequestInit);
        if (res.status === 201 || res.status === 200) lastCommitted = shas[round];
      } catch {
        /* the server died under us */
      }
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((res) => child.once('exit', res));
        child.kill('SIGKILL');
        await exited;
      }
    }
    // After the last round: one more start must find a consistent store, with leftovers quarantined.
    const { child, url } = await start();
    const list = (await (await fetch(`${url}/v1/plugins`)).json()) as { data: { sha256: string }[] };
    for (const p of list.data) assert.ok(shas.includes(p.sha256));
    assert.deepEqual(readdirSync(join(dataDir, 'tmp')), []);
    child.kill('SIGKILL');
  });
});

describe('two servers sharing one plugin store (replicas on a ReadWriteMany volume)', () => {
  const dataDir = mkdtempSync(join(tmp, 'shared-'));
  let one: RunningServer;
  let two: RunningServer;
  const h = { authorization: `Bearer ${ADMIN}` };
  const start = () => startServer(parseServerConfig(['--model', fixtureDir('A'), '--port', '0', '--admin-key', ADMIN, '--data-dir', dataDir], {}), () => {});
  const version = (k: number) => {
    const name = 'model.layers.0.self_attn.o_proj.weight';
    return readFileSync(pluginFile(`shared-v${k}.safetensors`, new Map([[name, { shape: [64, 64], data: A.tensors.get(name)!.data.map((x) => x * k) }]])));
  };
  const upload = (srv: RunningServer, id: string, bytes: Uint8Array, query = '') =>
    fetch(`${srv.url}/v1/plugins?id=${id}${query}`, { method: 'POST', headers: { ...h, 'content-type': 'application/octet-stream' }, body: bytes as Uint8Array<ArrayBuffer> });

  before(async () => {
    [one, two] = await Promise.all([start(), start()]);
    await Promise.all([one.host.ready, two.host.ready]);
  });
  after(() => Promise.all([one.close(), two.close()]));

  it('sees, serves, refuses to clobber and deletes what the other server committed', async () => {
    assert.equal((await upload(one, 'p', version(2))).status, 201);
    const seen = await fetch(`${two.url}/v1/plugins/p`, { headers: h });
    assert.equal(seen.status, 200, 'a plugin uploaded to one replica is visible on the other');
    const gen = await fetch(`${two.url}/v1/completions`, {
      method: 'POST',
      headers: { ...h, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'A:p', prompt: 'hi', max_tokens: 2 }),
    });
    assert.equal(gen.status, 200);
    assert.equal((await upload(two, 'p', version(2))).status, 200, 'identical bytes: idempotent across replicas');
    assert.equal((await upload(two, 'p', version(3))).status, 409, 'other bytes without overwrite: 409 across replicas');
    assert.equal((await upload(two, 'p', version(3), '&overwrite=true')).status, 201);
    const m = (await (await fetch(`${one.url}/v1/plugins/p`, { headers: h })).json()) as { sha256: string };
    const { createHash } = await import('node:crypto');
    assert.equal(m.sha256, createHash('sha256').update(version(3)).digest('hex'), 'the overwrite is seen by the first replica');
    assert.equal((await fetch(`${one.url}/v1/plugins/p`, { method: 'DELETE', headers: h })).status, 200);
    assert.equal((await fetch(`${two.url}/v1/plugins/p`, { headers: h })).status, 404);
    assert.deepEqual(readdirSync(join(dataDir, 'blobs')), [], "the deleted plugin's blob went with it");
  });

  it('commits concurrent uploads of different plugins from both servers, all of them visible to both', async () => {
    const ids = [4, 5, 6, 7, 8, 9].map((k) => ({ id: `c${k}`, bytes: version(k), srv: k % 2 ? one : two }));
    const statuses = await Promise.all(ids.map((x) => upload(x.srv, x.id, x.bytes).then((r) => r.status)));
    assert.deepEqual(
      statuses,
      ids.map(() => 201),
    );
    for (const srv of [one, two]) {
      const list = (await (await fetch(`${srv.url}/v1/plugins`, { headers: h })).json()) as { data: { id: string }[] };
      assert.deepEqual(list.data.map((p) => p.id).sort(), ids.map((x) => x.id).sort());
    }
    assert.equal(readdirSync(join(dataDir, 'blobs')).length, ids.length);
    assert.ok(!readdirSync(dataDir).includes('store.lock'), 'no lock left behind');
  });

  it("a starting server leaves another live writer's temporary file alone, quarantines a dead one's and breaks its lock", async () => {
    const { hostname } = await import('node:os');
    const { writeFileSync } = await import('node:fs');
    const host = hostname().replace(/[^A-Za-z0-9.-]/g, '_');
    // A pid that no process has: spawn one and wait for it to exit.
    const dead = await new Promise<number>((resolve) => {
      const c = spawn(process.execPath, ['-e', '0']);
      c.once('exit', () => resolve(c.pid!));
    });
    writeFileSync(join(dataDir, 'tmp', `other-host~1~${Date.now()}~x.tmp`), 'uploading elsewhere');
    writeFileSync(join(dataDir, 'tmp', `${host}~${dead}~${Date.now()}~y.tmp`), 'left by a killed upload');
    writeFileSync(join(dataDir, 'store.lock'), `${host}~${dead}`);
    const three = await start();
    try {
      assert.deepEqual(readdirSync(join(dataDir, 'tmp')).filter((n) => n.startsWith('other-host')).length, 1);
      assert.ok(!readdirSync(join(dataDir, 'tmp')).some((n) => n.includes(`~${dead}~`)));
      assert.ok(readdirSync(join(dataDir, 'quarantine')).some((n) => n.includes(`~${dead}~`)));
      assert.ok(!readdirSync(dataDir).includes('store.lock'));
      const list = (await (await fetch(`${three.url}/v1/plugins`, { headers: h })).json()) as { data: unknown[] };
      assert.equal(list.data.length, 6, "the other servers' plugins are intact");
    } finally {
      await three.close();
    }
  });
});

describe('a view whose weights overflow', () => {
  let srv: RunningServer;
  before(async () => {
    // The magnitude bound off, so that an absurd plugin reaches generation.
    const config = parseServerConfig(['--model', fixtureDir('A'), '--port', '0', '--data-dir', mkdtempSync(join(tmp, 'overflow-')), '--max-plugin-scale', '0'], {});
    srv = await startServer(config, () => {});
    await srv.host.ready;
  });
  after(() => srv.close());

  it('gets an OpenAI error naming the non-finite logits, never a 200 with empty text; streamed, an error event and [DONE]', async () => {
    const norms = new Map([0, 1, 2, 3].map((l) => [`model.layers.${l}.input_layernorm.weight`, { shape: [64], data: new Float32Array(64).fill(1e30) }]));
    const up = await fetch(`${srv.url}/v1/plugins?id=huge`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: readFileSync(pluginFile('overflow.safetensors', norms)) });
    assert.equal(up.status, 201, await up.clone().text());
    const ask = (stream: boolean) =>
      fetch(`${srv.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'A:huge', prompt: 'Hello', max_tokens: 4, stream }) });
    const r = await ask(false);
    const body = (await r.json()) as { error: { code: string; message: string; type: string } };
    assert.equal(r.status, 500, JSON.stringify(body));
    assert.equal(body.error.code, 'non_finite_logits');
    assert.match(body.error.message, /non-finite logit .*plugin or merge/);
    const s = await ask(true);
    const text = await s.text();
    assert.match(text, /"code":"non_finite_logits"/);
    assert.match(text.trimEnd(), /data: \[DONE\]$/);
    // The backbone itself still serves.
    const ok = await fetch(`${srv.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'A', prompt: 'Hello', max_tokens: 2 }) });
    assert.equal(ok.status, 200);
  });
});

describe('an upload slower than --upload-timeout-s', () => {
  it('gets an OpenAI-style 408 and leaves no temporary file; the server keeps serving', async () => {
    const dataDir = mkdtempSync(join(tmp, 'timeout-'));
    const srv = await startServer(parseServerConfig(['--model', fixtureDir('A'), '--port', '0', '--data-dir', dataDir, '--upload-timeout-s', '1'], {}), () => {});
    try {
      await srv.host.ready;
      const u = new URL(srv.url);
      const req = request({ host: u.hostname, port: u.port, method: 'POST', path: '/v1/plugins?id=slow', headers: { 'content-type': 'application/octet-stream', 'content-length': '100000' } });
      const answer = new Promise<{ status: number; body: string }>((resolve, reject) => {
        req.on('response', (res) => {
          let body = '';
          res.on('data', (d) => (body += d));
          res.on('end', () => resolve({ status: res.statusCode!, body }));
        });
        req.on('error', reject);
      });
      req.write(Buffer.alloc(1000));
      const { status, body } = await answer;
      assert.equal(status, 408);
      const e = JSON.parse(body) as { error: { code: string; message: string; type: string } };
      assert.equal(e.error.code, 'request_timeout');
      assert.match(e.error.message, /--upload-timeout-s/);
      for (let i = 0; i < 50 && readdirSync(join(dataDir, 'tmp')).length; i++) await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(readdirSync(join(dataDir, 'tmp')), []);
      assert.equal((await fetch(`${srv.url}/health`)).status, 200);
    } finally {
      await srv.close();
    }
  });
});
