#!/usr/bin/env node
/**
 * `sfn`: the command line. `make-model`, `generate` and `logits` work on any HF-layout model directory;
 * with no `--model` (and no SFN_MODEL) they use the built-in model stories260K (models/, shipped in the repository).
 */
import { UsageError } from './cli/common.ts';

const USAGE = `usage: sfn <command> [options]

commands:
  serve                      run the OpenAI-compatible server (flags and variables: docs/configuration.md)
  make-model DIR             write a random, seeded HF-layout checkpoint with the Qwen tokenizer
      --preset tiny|qwen2.5-0.5b|qwen2.5-1.5b   (default tiny)
      --seed N  --dtype bf16|f16|f32  --shard-mb N
  generate                   stream a completion to stdout
      --model DIR --prompt TEXT [--chat] [--max-tokens N] [--temperature T] [--top-p P]
      [--top-k K] [--seed N] [--stop S]... [--device cpu|cuda] [--quantize int4]
  logits                     print {"ids","logits","greedy"} JSON, computed as the server computes it
      --model DIR --ids 1,2,3 [--greedy N] [--merge JSON] [--destroy JSON] [--device cpu|cuda] [--quantize int4]
      (--merge/--destroy take the API's JSON; a merge's "from" is a plugin file or checkpoint dir)

  extract                    write a plugin from a fine-tune, with an audit of the modules left out
      --base DIR --tuned DIR --out FILE [--modules o_proj,norms,embed,head] [--description TEXT]
  export                     write a view (plugins, merge, destruction) as a full HF checkpoint
      --model DIR --out DIR [--plugin FILE]... [--merge JSON] [--destroy JSON] [--dtype f32|bf16|f16] [--shard-mb N]
  delta A B --out DIR        per module x layer ||B-A||, relative change histograms, SVG charts, report.html
      [--bins N] [--every K]   (B: a checkpoint dir, or a plugin file laid over A)
  eval                       a JSONL set ({id, prompt | messages, answer}) under a view: accuracy, tokens, levels
      --data FILE --out DIR [--model DIR] [--plugin F] [--merge JSON] [--destroy JSON] [--max-tokens N]
      [--temperature T] [--seed N] [--reasoning --min-thinking N --max-thinking N --wait N
      --reasoning-format auto|think|s1] [--levels]
      [--concurrency N] [--no-chat]
  levels                     levels I-IV of given outputs ({prompt | messages, output, answer?} per JSONL line);
      with --calibrate, lines also carry a human "label": agreement and the best thresholds of a grid
      --data FILE [--model DIR] [--plugin F] [--merge JSON] [--destroy JSON] [--thresholds JSON]
      (scored under the model, or the view that --plugin/--merge/--destroy describe)
  destruction-table          the paper's Table 3: levels of each prompt's output, per method x module kind
      --modules K1,K2 --layers A-B --prompts FILE.jsonl --out DIR [--methods zero,reinit,remove]
      [--model DIR] [--max-tokens N] [--seed N] [--scorer backbone|view] [--thresholds JSON]
  merge-table                the paper's Table 1: A, B, M1, M2, M3 (or --rows) over one set: accuracy, tokens, levels
      --data SET.jsonl --out DIR (--from B | --rows JSON) [--model DIR] [--max-tokens N] [--levels]
      [--scorer backbone|view] [--concurrency N] [--no-chat]
  grads                      d loss / d p of one sequence for the trainable kinds, as safetensors; prints {"loss"}
      --ids 1,2,3 --kinds o_proj,norms[,embed,head,qkv,mlp,all] --out FILE [--model DIR]
      (loss: transformers' model(ids, labels=ids).loss)
  freeze                     fine-tune only the chosen kinds (AdamW as torch's) and write a plugin
      --kinds o_proj,norms --out PLUGIN.safetensors (or DIR for qkv/mlp) (--data SET.jsonl | --ids 1,2,3)
      [--model DIR] [--steps N] [--lr X] [--wd X] [--batch N] [--seq N] [--warmup N] [--schedule constant|cosine]
      [--grad-accum N] [--seed N] [--checkpoint-every K] [--resume]
      (SET.jsonl: {"text"} | {"prompt", "completion"} | {"messages"} per line)
  freeze-table               the paper's Table 2: F1-F4 (or --rows) trained on one set, evaluated on another
      --data TRAIN.jsonl --eval SET.jsonl --out DIR [--rows JSON] [--steps N] [--lr X] [--batch N] [--levels]
  freeze-plan                trainable parameters of the Freeze module sets
      --model DIR [--json]

With no --model and no SFN_MODEL, the built-in model stories260K (a trained 260K-parameter TinyStories model) is used.`;

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
  levels: async (args) => (await import('./cli/commands/lab.ts')).cmdLevels(args),
  'destruction-table': async (args) => (await import('./cli/commands/lab.ts')).cmdDestructionTable(args),
  'merge-table': async (args) => (await import('./cli/commands/lab.ts')).cmdMergeTable(args),
  // Every command is imported when it runs: `sfn --help` loads none of the engine or the server.
  serve: async (args) => (await import('./server/serve.ts')).serveCommand(args),
};

/** One command's lines of the usage text: its summary line and the indented lines under it. */
export function commandHelp(cmd: string): string {
  const lines = USAGE.split('\n');
  const start = lines.findIndex((l) => l.startsWith(`  ${cmd} `) || l === `  ${cmd}`);
  if (start < 0) return cmd;
  let end = start + 1;
  while (end < lines.length && lines[end].startsWith('      ')) end++;
  return lines.slice(start, end).map((l) => l.trim()).join('\n  ');
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    if (cmd === undefined || ['-h', '--help', 'help'].includes(cmd)) {
      process.stdout.write(USAGE + '\n');
      return cmd === undefined ? 2 : 0;
    }
    const run = Object.hasOwn(COMMANDS, cmd) ? COMMANDS[cmd] : undefined;
    if (!run) throw new UsageError(`unknown command "${cmd}"`);
    if (rest.includes('--help') || rest.includes('-h')) {
      process.stdout.write(`usage: sfn ${commandHelp(cmd)}\n`);
      return 0;
    }
    await run(rest);
    return 0;
  } catch (e) {
    const err = e as Error & { code?: string };
    if (e instanceof UsageError || err.code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`sfn: ${err.message}\n\n${USAGE}\n`);
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
