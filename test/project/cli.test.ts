/** The command line's help: every command documented in the usage text, and `sfn <command> --help` printing it. */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { COMMANDS, commandHelp } from '../../src/cli.ts';
import { ROOT } from '../helpers/fixtures.ts';

describe('sfn help', () => {
  it('has a usage section for every command', () => {
    for (const cmd of Object.keys(COMMANDS)) assert.match(commandHelp(cmd), new RegExp(`^${cmd}\\b.+`), cmd);
  });
  it('prints one command\'s options for `sfn <command> --help`, and exits 0', async () => {
    const { stdout } = await promisify(execFile)(process.execPath, ['bin/sfn.js', 'freeze', '--help'], { cwd: ROOT });
    assert.match(stdout, /^usage: sfn freeze /);
    assert.match(stdout, /--kinds/);
    assert.doesNotMatch(stdout, /merge-table/);
  });
});
