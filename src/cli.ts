#!/usr/bin/env node
/**
 * `sfn`: the command line. `make-model`, `generate` and `logits` work on any HF-layout model directory;
 * with no `--model` (and no SFN_MODEL) they use the built-in model stories260K (models/, shipped in the repository).
 */
import { UsageError } from './cli/common.ts';
import { COMMAND_DECLARATIONS } from './cli/declarations.ts';
import { commandUsage, OptionError, type Command } from './util/options.ts';

const DECLARED: readonly Command[] = COMMAND_DECLARATIONS;

/** The usage text: every command with its summary (`sfn <command> --help` prints its options). */
function usage(): string {
  const heads = DECLARED.map((c) => `${c.name}${c.args ? ` ${c.args}` : ''}`);
  const w = Math.max(...heads.map((h) => h.length)) + 2;
  return [
    'usage: sfn <command> [options]        sfn <command> --help: its options',
    '',
    'commands:',
    ...DECLARED.map((c, i) => `  ${heads[i].padEnd(w)}${c.summary}`),
    '',
    'With no --model and no SFN_MODEL, the built-in model stories260K (a trained 260K-parameter TinyStories model) is used.',
  ].join('\n');
}

export const COMMANDS: Record<string, (args: string[]) => Promise<void>> = {
  'make-model': async (args) => (await import('./cli/commands/core.ts')).cmdMakeModel(args),
  logits: async (args) => (await import('./cli/commands/core.ts')).cmdLogits(args),
  generate: async (args) => (await import('./cli/commands/core.ts')).cmdGenerate(args),
  extract: async (args) => (await import('./cli/commands/core.ts')).cmdExtract(args),
  export: async (args) => (await import('./cli/commands/core.ts')).cmdExport(args),
  delta: async (args) => (await import('./cli/commands/core.ts')).cmdDelta(args),
  eval: async (args) => (await import('./cli/commands/core.ts')).cmdEval(args),
  'freeze-plan': async (args) => (await import('./cli/commands/core.ts')).cmdFreezePlan(args),
  grads: async (args) => (await import('./cli/commands/freeze.ts')).cmdGrads(args),
  freeze: async (args) => (await import('./cli/commands/freeze.ts')).cmdFreeze(args),
  'freeze-table': async (args) => (await import('./cli/commands/freeze.ts')).cmdFreezeTable(args),
  levels: async (args) => (await import('./cli/commands/tables.ts')).cmdLevels(args),
  'destruction-table': async (args) => (await import('./cli/commands/tables.ts')).cmdDestructionTable(args),
  'merge-table': async (args) => (await import('./cli/commands/tables.ts')).cmdMergeTable(args),
  probe: async (args) => (await import('./cli/commands/tables.ts')).cmdProbe(args),
  'destruction-sweep': async (args) => (await import('./cli/commands/tables.ts')).cmdDestructionSweep(args),
  // Every command is imported when it runs: `sfn --help` loads none of the engine or the server.
  serve: async (args) => (await import('./server/serve.ts')).serveCommand(args),
};

/** `sfn <command> --help`: the command's summary and every option, from its declaration. */
export function commandHelp(cmd: string): string {
  const decl = DECLARED.find((c) => c.name === cmd);
  return decl ? commandUsage(decl) : `usage: sfn ${cmd}`;
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    if (cmd === undefined || ['-h', '--help', 'help'].includes(cmd)) {
      process.stdout.write(usage() + '\n');
      return cmd === undefined ? 2 : 0;
    }
    const run = Object.hasOwn(COMMANDS, cmd) ? COMMANDS[cmd] : undefined;
    if (!run) throw new UsageError(`unknown command "${cmd}"`);
    if (rest.includes('--help') || rest.includes('-h')) {
      process.stdout.write(`${commandHelp(cmd)}\n`);
      return 0;
    }
    await run(rest);
    return 0;
  } catch (e) {
    const err = e as Error & { code?: string };
    if (e instanceof UsageError || e instanceof OptionError || err.code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`sfn: ${err.message}\n\n${cmd && Object.hasOwn(COMMANDS, cmd) ? commandHelp(cmd) : usage()}\n`);
      return 2;
    }
    process.stderr.write(`sfn: ${err.message}\n`);
    return 1;
  }
}

if (import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith('/cli.ts')) {
  main(process.argv.slice(2)).then((code) => {
    if (code !== 0) process.exitCode = code;
  });
}
