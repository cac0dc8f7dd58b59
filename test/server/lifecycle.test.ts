/** The server as a process: graceful shutdown on SIGTERM, and the auth scopes. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
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
