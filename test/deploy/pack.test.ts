/**
 * The package as users get it: `npm pack`, installed into an empty folder (onnxruntime-node's download skipped
 * by ONNXRUNTIME_NODE_INSTALL=skip, since .npmrc does not travel with a package), then `sfn` from there on the
 * built-in model with `npx sfn` on Node 20 (through tsx) and Node 24 (which strips types, though not under
 * node_modules: tsx again), giving the same tokens as the repository's own command.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { ROOT } from '../helpers/fixtures.ts';
import { pathWithNode24 } from '../helpers/node24.ts';

const run = promisify(execFile);
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

describe('npm pack', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sfn-pack-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('installs into an empty folder and runs sfn logits on the built-in model', { timeout: 300_000 }, async () => {
    const env = { ...process.env, ONNXRUNTIME_NODE_INSTALL: 'skip', npm_config_prefer_offline: 'true', npm_config_audit: 'false', npm_config_fund: 'false' };
    await run(npm, ['pack', '--pack-destination', dir], { cwd: ROOT, env });
    const tarball = readdirSync(dir).find((f) => f.endsWith('.tgz'))!;
    const app = join(dir, 'app');
    await run('mkdir', ['-p', app]);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true }));
    await run(npm, ['install', join(dir, tarball)], { cwd: app, env, maxBuffer: 16 << 20 });
    const ids = '1,403,407,261,378';
    const local = JSON.parse((await run(process.execPath, ['bin/sfn.js', 'logits', '--ids', ids, '--greedy', '4'], { cwd: ROOT, maxBuffer: 64 << 20 })).stdout);
    // This Node (20 in CI), then Node 24.
    const paths = [`${dirname(process.execPath)}:${process.env.PATH}`, await pathWithNode24()];
    const versions = new Set<string>();
    for (const PATH of paths) {
      const node = (await run('node', ['--version'], { env: { PATH } })).stdout.trim();
      versions.add(node.split('.')[0]);
      const npx = (args: string[]) => run('npx', ['--no-install', 'sfn', ...args], { cwd: app, env: { ...env, PATH }, maxBuffer: 64 << 20 });
      const installed = JSON.parse((await npx(['logits', '--ids', ids, '--greedy', '4'])).stdout);
      assert.deepEqual(installed.greedy, local.greedy, `npx sfn logits on Node ${node}`);
      assert.match((await npx(['--help'])).stdout, /usage: sfn <command>/);
    }
    assert.ok(versions.has('v24'), `ran on ${[...versions]}`);
    // Only what users need ships: no tests or fixtures.
    const listed = (await run('tar', ['tzf', join(dir, tarball)])).stdout;
    assert.ok(!listed.includes('package/test/'), 'the tarball ships no tests');
    assert.ok(listed.includes('package/models/stories260K/model.safetensors') && listed.includes('package/LICENSE'));
  });
});
