/**
 * What a request can name stays inside: checkpoint directories under the model roots, compared as the filesystem
 * resolves them (symbolic links included); errors name no server path; and uploaded plugin bytes reach the disk
 * before the store commits them.
 */
import assert from 'node:assert/strict';
import fs, { cpSync, mkdirSync, mkdtempSync, symlinkSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PluginStore } from '../../src/plugins/store.ts';
import { parseServerConfig } from '../../src/server/config.ts';
import { redactPaths, setErrorRoots } from '../../src/server/errors.ts';
import { findUnderRoots } from '../../src/server/roots.ts';
import { startServer } from '../../src/server/serve.ts';
import { fixtureDir } from '../helpers/fixtures.ts';

describe('containment by real path', () => {
  const base = mkdtempSync(join(tmpdir(), 'sfn-roots-'));
  const root = join(base, 'root');
  const outside = join(base, 'outside');
  mkdirSync(root);
  cpSync(fixtureDir('A'), join(root, 'A'), { recursive: true });
  cpSync(fixtureDir('B'), join(outside, 'B'), { recursive: true });
  symlinkSync(join(outside, 'B'), join(root, 'link-to-B'));
  mkdirSync(join(root, 'C'));
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) cpSync(join(fixtureDir('A'), f), join(root, 'C', f));
  symlinkSync(join(outside, 'B', 'model.safetensors'), join(root, 'C', 'model.safetensors'));
  mkdirSync(join(root, 'blobs'));
  cpSync(join(fixtureDir('A'), 'model.safetensors'), join(root, 'blobs', 'weights'));
  mkdirSync(join(root, 'D'));
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) cpSync(join(fixtureDir('A'), f), join(root, 'D', f));
  symlinkSync('../blobs/weights', join(root, 'D', 'model.safetensors'));

  it('finds a directory in the root, and one whose files link elsewhere in the root (a Hugging Face cache)', () => {
    assert.equal(findUnderRoots([root], 'A'), fs.realpathSync(join(root, 'A')));
    assert.equal(findUnderRoots([root], 'D'), fs.realpathSync(join(root, 'D')));
  });
  it('refuses a linked directory or a linked weights file that leads out of the root', () => {
    assert.equal(findUnderRoots([root], 'link-to-B'), undefined);
    assert.equal(findUnderRoots([root], 'C'), undefined);
    assert.equal(findUnderRoots([root], '../outside/B'), undefined);
  });
});

describe('plugin store durability', () => {
  it('fsyncs an uploaded blob before renaming it in, and renames it before the manifest is written', async () => {
    const store = new PluginStore(mkdtempSync(join(tmpdir(), 'sfn-fsync-')), () => {});
    await store.scan();
    const tmp = store.tempPath();
    fs.writeFileSync(tmp, 'bytes of a plugin');
    const events: string[] = [];
    const paths = new Map<number, string>();
    const orig = { openSync: fs.openSync, fsyncSync: fs.fsyncSync, renameSync: fs.renameSync, open: fs.open, fsync: fs.fsync };
    fs.openSync = ((p: fs.PathLike, ...rest: unknown[]) => {
      const fd = (orig.openSync as (...a: unknown[]) => number)(p, ...rest);
      paths.set(fd, String(p));
      return fd;
    }) as typeof fs.openSync;
    fs.fsyncSync = ((fd: number) => (events.push(`fsync ${paths.get(fd)}`), orig.fsyncSync(fd))) as typeof fs.fsyncSync;
    // The blob is flushed asynchronously (off the HTTP thread): the callback forms are watched too.
    fs.open = ((p: fs.PathLike, flags: string, cb: (e: Error | null, fd: number) => void) =>
      orig.open(p, flags, (e, fd) => {
        if (!e) paths.set(fd, String(p));
        cb(e, fd);
      })) as typeof fs.open;
    fs.fsync = ((fd: number, cb: (e: Error | null) => void) => (events.push(`fsync ${paths.get(fd)}`), orig.fsync(fd, cb))) as typeof fs.fsync;
    fs.renameSync = ((a: fs.PathLike, b: fs.PathLike) => (events.push(`rename ${a} -> ${b}`), orig.renameSync(a, b))) as typeof fs.renameSync;
    syncBuiltinESMExports();
    try {
      await store.commit(tmp, 'p1', 'ab'.repeat(32), 17, { modules: [], layers: [], tensors: 0, tensorBytes: 0 } as never, '', false);
    } finally {
      Object.assign(fs, orig);
      syncBuiltinESMExports();
    }
    const fsyncBlob = events.indexOf(`fsync ${tmp}`);
    const renameBlob = events.findIndex((e) => e.startsWith(`rename ${tmp} -> `) && e.includes('blobs'));
    const renameManifest = events.findIndex((e) => e.startsWith('rename ') && e.endsWith('p1.json'));
    assert.ok(fsyncBlob >= 0, events.join('\n'));
    assert.ok(fsyncBlob < renameBlob && renameBlob < renameManifest, events.join('\n'));
  });
});

describe('errors name no server path', () => {
  it('redacts absolute paths to their name under a root, or their base name, and leaves URL paths alone', () => {
    setErrorRoots(['/srv/models', '/var/lib/sfn']);
    try {
      assert.equal(redactPaths('cannot read /srv/models/broken/config.json: bad'), 'cannot read broken/config.json: bad');
      assert.equal(redactPaths('/var/lib/sfn/blobs/ab.safetensors: truncated.'), 'blobs/ab.safetensors: truncated.');
      assert.equal(redactPaths(`open ${tmpdir()}/x/secret.json failed`), 'open secret.json failed');
      assert.equal(redactPaths('PUT is not allowed on /v1/completions; see https://example.com/a/b'), 'PUT is not allowed on /v1/completions; see https://example.com/a/b');
    } finally {
      setErrorRoots([]);
    }
  });

  it("over HTTP: a broken or weightless checkpoint under a root, named by a user key, is a 400 without the root's path", async () => {
    const base = mkdtempSync(join(tmpdir(), 'sfn-leak-'));
    const root = join(base, 'models');
    mkdirSync(join(root, 'broken'), { recursive: true });
    fs.writeFileSync(join(root, 'broken', 'config.json'), '{bad');
    mkdirSync(join(root, 'noweights'));
    cpSync(join(fixtureDir('A'), 'config.json'), join(root, 'noweights', 'config.json'));
    const srv = await startServer(parseServerConfig(['--model', fixtureDir('A'), '--port', '0', '--data-dir', join(base, 'data'), '--model-root', root, '--api-key', 'user-key-123456'], {}), () => {});
    try {
      await srv.host.ready;
      const headers = { authorization: 'Bearer user-key-123456', 'content-type': 'application/json' };
      const bodies: string[] = [];
      for (const from of ['broken', 'noweights']) {
        const r = await fetch(`${srv.url}/v1/completions`, {
          method: 'POST',
          headers,
          body: JSON.stringify({ model: 'A', prompt: 'hi', max_tokens: 2, merge: [{ modules: ['o_proj'], layers: 'all', from }] }),
        });
        assert.equal(r.status, 400);
        const b = (await r.json()) as { error: { param: string; code: string } };
        assert.equal(b.error.param, 'merge.0.from');
        bodies.push(JSON.stringify(b));
      }
      const plan = await fetch(`${srv.url}/v1/stethoscope/freeze-plan?model=broken`, { headers });
      assert.equal(plan.status, 400);
      const text = await plan.text();
      assert.match(text, /broken\/config\.json/);
      bodies.push(text);
      for (const b of bodies) assert.ok(!b.includes(base), `leaks ${base}: ${b}`);
    } finally {
      await srv.close();
    }
  });
});
