/**
 * The command line: every command's options declared once (parsing, `sfn <command> --help`, the docs' tables),
 * values from the flag, else the variable, else the default, and errors that name where a bad value came from.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { COMMANDS, commandHelp } from '../../src/cli.ts';
import { COMMAND_DECLARATIONS, declaration } from '../../src/cli/declarations.ts';
import { PRESETS } from '../../src/model/make-model.ts';
import { REASONING_FORMATS } from '../../src/engine/prompt.ts';
import { SCORERS } from '../../src/stethoscope/probe.ts';
import { TRAIN_SETS } from '../../src/stethoscope/freeze-sets.ts';
import { MODULE_SETS } from '../../src/plugins/extract.ts';
import { command, OptionError, parseOptions, type Command } from '../../src/util/options.ts';
import { ROOT } from '../helpers/fixtures.ts';

const run = promisify(execFile);
const DECLARED: readonly Command[] = COMMAND_DECLARATIONS;

describe('sfn help', () => {
  it('declares every command it runs, and its help lists every option', () => {
    assert.deepEqual(DECLARED.map((c) => c.name).sort(), Object.keys(COMMANDS).sort());
    for (const c of DECLARED) {
      const help = commandHelp(c.name);
      assert.match(help, new RegExp(`^usage: sfn ${c.name}\\b`), c.name);
      for (const flag of Object.keys(c.options)) assert.match(help, new RegExp(`--${flag}\\b`), `${c.name} --help lacks --${flag}`);
    }
  });

  it("prints one command's options for `sfn <command> --help`, and exits 0", async () => {
    const { stdout } = await run(process.execPath, ['bin/sfn.js', 'freeze', '--help'], { cwd: ROOT });
    assert.match(stdout, /^usage: sfn freeze /);
    assert.match(stdout, /--kinds A,B +module sets/);
    assert.match(stdout, /--lr X +learning rate \(default 0\.0001\)/);
    assert.doesNotMatch(stdout, /merge-table/);
  });

  it('copies its choices from the modules that define them', () => {
    assert.deepEqual(declaration('make-model').options.preset.choices, Object.keys(PRESETS));
    assert.deepEqual(declaration('serve').options['reasoning-format'].choices, REASONING_FORMATS);
    assert.deepEqual(declaration('merge-table').options.scorer.choices, SCORERS);
    assert.deepEqual(declaration('destruction-table').options.scorer.choices, SCORERS);
    for (const set of Object.keys(TRAIN_SETS)) assert.match(declaration('freeze').options.kinds.help, new RegExp(`\\b${set}\\b`));
    for (const set of Object.keys(MODULE_SETS)) assert.match(declaration('extract').options.modules.help, new RegExp(`\\b${set}\\b`));
  });

  it("answers a bad option with the command's help and exit code 2", async () => {
    const err = await run(process.execPath, ['bin/sfn.js', 'logits', '--ids', '1,x'], { cwd: ROOT }).catch((e) => e);
    assert.equal(err.code, 2);
    assert.match(err.stderr, /^sfn: --ids: "x" is not a token id\n\nusage: sfn logits/);
  });
});

describe('option parsing', () => {
  const cmd = command({
    name: 'demo',
    summary: 'a demo',
    options: {
      steps: { kind: 'int', min: 1, default: 100, env: 'DEMO_STEPS', help: 'steps' },
      lr: { kind: 'number', help: 'lr' },
      mode: { kind: 'string', choices: ['a', 'b'], default: 'a', env: 'DEMO_MODE', help: 'mode' },
      key: { kind: 'string', repeat: true, env: 'DEMO_KEYS', help: 'keys' },
      out: { kind: 'string', required: true, help: 'out' },
      ids: { kind: 'ids', help: 'ids' },
      quiet: { kind: 'boolean', env: 'DEMO_QUIET', help: 'quiet' },
      kinds: { kind: 'list', default: 'x,y', help: 'kinds' },
    },
  });

  it('takes the flag, else the variable, else the default', () => {
    const a = parseOptions(cmd, ['--out', 'o'], {}).values;
    assert.deepEqual(a, { steps: 100, lr: undefined, mode: 'a', key: [], out: 'o', ids: undefined, quiet: false, kinds: ['x', 'y'] });
    const b = parseOptions(cmd, ['--out', 'o', '--steps', '7', '--key', 'k1', '--key', 'k2', '--ids', '1, 2,3', '--quiet', '--kinds', 'p'], {
      DEMO_STEPS: '9',
      DEMO_KEYS: 'e1,e2',
      DEMO_MODE: 'b',
    }).values;
    assert.deepEqual(b, { steps: 7, lr: undefined, mode: 'b', key: ['k1', 'k2'], out: 'o', ids: [1, 2, 3], quiet: true, kinds: ['p'] });
    const c = parseOptions(cmd, ['--out', 'o'], { DEMO_STEPS: '9', DEMO_KEYS: 'e1, e2', DEMO_QUIET: 'true' }).values;
    assert.deepEqual([c.steps, c.key, c.quiet], [9, ['e1', 'e2'], true]);
  });

  it('names where a bad value came from', () => {
    assert.throws(
      () => parseOptions(cmd, ['--out', 'o', '--steps', '1.5'], {}),
      (e: Error) => e instanceof OptionError && e.message === '--steps: must be an integer, got "1.5"',
    );
    assert.throws(() => parseOptions(cmd, ['--out', 'o'], { DEMO_STEPS: '0' }), /^OptionError: DEMO_STEPS: must be at least 1, got "0"$/);
    assert.throws(() => parseOptions(cmd, ['--out', 'o', '--mode', 'c'], {}), /--mode: must be a or b, got "c"/);
    assert.throws(() => parseOptions(cmd, ['--out', 'o', '--lr', 'fast'], {}), /--lr: must be a number/);
    assert.throws(() => parseOptions(cmd, [], {}), /demo needs --out TEXT/);
    assert.throws(() => parseOptions(cmd, ['--out', 'o', '--nope'], {}), /demo: Unknown option '--nope'/);
    assert.throws(() => parseOptions(cmd, ['--out', 'o', 'stray'], {}), /demo: Unexpected argument 'stray'/);
  });
});

describe('sfn make-model', () => {
  it('reports its progress by tenths of the parameters on stderr, then what it wrote', async () => {
    const { mkdtempSync, rmSync, existsSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const dir = `${mkdtempSync(`${tmpdir()}/sfn-make-`)}/m`;
    try {
      const { stderr } = await run(process.execPath, ['bin/sfn.js', 'make-model', dir, '--preset', 'tiny'], { cwd: ROOT });
      const percents = [...stderr.matchAll(/^sfn: make-model: (\d+)% \([\d.]+M of [\d.]+M parameters\)$/gm)].map((m) => Number(m[1]));
      // The tiny preset's embedding is 99% of it: the first tensor jumps to 90%.
      assert.deepEqual(percents, [90, 100], stderr);
      assert.match(stderr, /wrote a random tiny checkpoint/);
      assert.ok(existsSync(`${dir}/config.json`));
    } finally {
      rmSync(dir.slice(0, -2), { recursive: true, force: true });
    }
  });
});
