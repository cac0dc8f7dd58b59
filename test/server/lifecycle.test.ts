/** The server as a process: graceful shutdown on SIGTERM, and the auth scopes. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Hono } from 'hono';
import { requireKey } from '../../src/server/auth.ts';
import { fixtureDir, ROOT } from '../helpers/fixtures.ts';

describe('sfn serve as a process', () => {
  it('finishes requests in flight on SIGTERM, then exits 0 and stops accepting', async () => {
    const child = spawn(process.execPath, ['bin/sfn.js', 'serve', '--model', fixtureDir('A'), '--port', '0'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    try {
      const t0 = Date.now();
      while (!/ready/.test(out) && Date.now() - t0 < 30000) await new Promise((r) => setTimeout(r, 50));
      const url = /listening on (http:\/\/\S+),/.exec(out)![1];
      const res = await fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'A', prompt: 'Hello', max_tokens: 400, temperature: 0, ignore_eos: true, stream: true, logprobs: 5 }),
      });
      const reader = res.body!.getReader();
      let text = new TextDecoder().decode((await reader.read()).value);
      child.kill('SIGTERM');
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      assert.ok(text.trimEnd().endsWith('data: [DONE]'), 'the stream in flight completes');
      assert.ok(text.includes('"finish_reason":"length"'));
      const [code] = await once(child, 'exit');
      assert.equal(code, 0);
      assert.match(out, /SIGTERM: draining 1 request/);
      await assert.rejects(fetch(`${url}/health`));
    } finally {
      child.kill('SIGKILL');
    }
  });
});

describe('shutdown with an upload and a job in flight', () => {
  it('refuses a job past the queue, cuts the upload and interrupts the job at the grace, and exits 0 within grace + 5 s', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'sfn-sigterm-'));
    const child = spawn(process.execPath, ['bin/sfn.js', 'serve', '--port', '0', '--data-dir', dataDir, '--shutdown-grace-s', '2', '--max-jobs', '1', '--max-queued-jobs', '0'], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    try {
      const t0 = Date.now();
      while (!/ready/.test(out) && Date.now() - t0 < 60000) await new Promise((r) => setTimeout(r, 50));
      const url = new URL(/listening on (http:\/\/\S+),/.exec(out)![1]);
      // A Freeze run far longer than the grace.
      const r = await fetch(`${url.origin}/v1/stethoscope/freeze`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ kinds: ['o_proj'], ids: [1, 403, 407, 261, 378], steps: 1_000_000 }),
      });
      assert.equal(r.status, 202, await r.clone().text());
      const { id } = (await r.json()) as { id: string };
      // One job at a time and no queue: the next is refused with a 429, not queued without bound.
      const more = await fetch(`${url.origin}/v1/stethoscope/freeze`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ kinds: ['o_proj'], ids: [1, 403, 407], steps: 1 }),
      });
      assert.equal(more.status, 429);
      assert.equal(((await more.json()) as { error: { code: string } }).error.code, 'queue_full');
      // An upload that sends a little and then nothing.
      const upload = request({
        host: url.hostname,
        port: url.port,
        method: 'POST',
        path: '/v1/plugins?id=slow',
        headers: { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' },
      });
      const uploadEnded = new Promise<string>((resolve) => {
        upload.on('response', (res) => resolve(`status ${res.statusCode}`));
        upload.on('error', (e) => resolve(`error ${(e as NodeJS.ErrnoException).code}`));
      });
      upload.write(Buffer.alloc(1000));
      await new Promise((res) => setTimeout(res, 300));
      const sent = Date.now();
      child.kill('SIGTERM');
      const [code] = await once(child, 'exit');
      const took = (Date.now() - sent) / 1000;
      assert.equal(code, 0, out);
      // Generous against a busy machine: the promise is grace + 5 s.
      assert.ok(took < 2 + 5 + 10, `exited after ${took} s`);
      assert.match(await uploadEnded, /error|status/);
      const job = JSON.parse(readFileSync(join(dataDir, 'jobs', `${id}.json`), 'utf8')) as { status: string; error: string };
      assert.equal(job.status, 'interrupted', JSON.stringify(job));
      assert.match(job.error, /interrupted: the server shut down/);
      assert.deepEqual(readdirSync(join(dataDir, 'tmp')), [], 'the cut upload left no temporary file');
    } finally {
      child.kill('SIGKILL');
    }
  });
});

describe('API key scopes', () => {
  const app = new Hono();
  const cfg = { apiKeys: ['user-key-123456'], adminKeys: ['admin-key-123456'] };
  app.get('/user', requireKey(cfg, 'user'), (c) => c.text('ok'));
  app.get('/admin', requireKey(cfg, 'admin'), (c) => c.text('ok'));
  const open = new Hono();
  open.get('/admin', requireKey({ apiKeys: [], adminKeys: [] }, 'admin'), (c) => c.text('ok'));
  const get = (a: Hono, path: string, key?: string) => a.request(path, { headers: key ? { authorization: `Bearer ${key}` } : {} });

  it('lets user and admin keys generate', async () => {
    assert.equal((await get(app, '/user', 'user-key-123456')).status, 200);
    assert.equal((await get(app, '/user', 'admin-key-123456')).status, 200);
  });
  it('answers 403 to a user key on an admin endpoint, 401 to none', async () => {
    const r = await get(app, '/admin', 'user-key-123456');
    assert.equal(r.status, 403);
    assert.equal(((await r.json()) as { error: { code: string } }).error.code, 'insufficient_scope');
    assert.equal((await get(app, '/admin')).status, 401);
    assert.equal((await get(app, '/admin', 'admin-key-123456')).status, 200);
  });
  it('is open when no keys are configured', async () => {
    assert.equal((await get(open, '/admin')).status, 200);
  });
});
