/**
 * What a request can name stays inside: checkpoint directories under the model roots, compared as the filesystem
 * resolves them (symbolic links included); and uploaded plugin bytes reach the disk before the store commits them.
 */
import assert from 'node:assert/strict';
import fs, { cpSync, mkdirSync, mkdtempSync, symlinkSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PluginStore } from '../../src/plugins/store.ts';
import { findUnderRoots } from '../../src/server/roots.ts';
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
    const orig = { openSync: fs.openSync, fsyncSync: fs.fsyncSync, renameSync: fs.renameSync };
    fs.openSync = ((p: fs.PathLike, ...rest: unknown[]) => {
      const fd = (orig.openSync as (...a: unknown[]) => number)(p, ...rest);
      paths.set(fd, String(p));
      return fd;
    }) as typeof fs.openSync;
    fs.fsyncSync = ((fd: number) => (events.push(`fsync ${paths.get(fd)}`), orig.fsyncSync(fd))) as typeof fs.fsyncSync;
    fs.renameSync = ((a: fs.PathLike, b: fs.PathLike) => (events.push(`rename ${a} -> ${b}`), orig.renameSync(a, b))) as typeof fs.renameSync;
    syncBuiltinESMExports();
    try {
      store.commit(tmp, 'p1', 'ab'.repeat(32), 17, { modules: [], layers: [], tensors: 0, tensorBytes: 0 } as never, '', false);
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
