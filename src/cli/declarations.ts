/**
 * Every `sfn` command and its options, declared once: parsing, `sfn <command> --help`, the usage text and the
 * generated reference in docs/cli.md all come from here. Light on purpose (no engine): `sfn --help` loads only
 * this. Choices copied from heavier modules are checked against them by test/project/cli.test.ts.
 */
import { SERVE } from '../server/config.ts';
import { command, type Command } from '../util/options.ts';

// Options several commands share.
const { model, threads, device, quantize, 'session-cache': sessionCache, 'session-cache-gb': sessionCacheGb } = SERVE.options;
const plugin = { kind: 'string', arg: 'FILE', repeat: true, help: 'a plugin file laid over the model' } as const;
const merge = { kind: 'string', arg: 'JSON', help: 'a merge, in the API\'s JSON; a "from" is a plugin file or a checkpoint directory' } as const;
const destroy = { kind: 'string', arg: 'JSON', help: "a destruction, in the API's JSON" } as const;
const seed = { kind: 'int', help: 'sampling / initialisation seed' } as const;
const temperature = { kind: 'number', default: 0, help: 'sampling temperature (0: greedy)' } as const;
const thresholds = { kind: 'string', arg: 'JSON', help: 'level thresholds {maxRepetition, maxNll, minPmi} over the calibrated defaults' } as const;
const scorer = { kind: 'string', choices: ['backbone', 'view'], default: 'backbone', help: 'which model scores NLL and PMI for the levels' } as const;
const levels = { kind: 'boolean', help: 'judge every output with levels I-IV' } as const;
const noChat = { kind: 'boolean', help: 'plain prompts instead of the chat template' } as const;
const maxTokens = (d: number) => ({ kind: 'int', min: 1, default: d, help: 'tokens generated per prompt' }) as const;
const concurrency = (d: number) => ({ kind: 'int', min: 1, default: d, help: 'prompts generated at once (they share decode steps)' }) as const;
const out = (arg: string, help: string) => ({ kind: 'string', arg, required: true, help }) as const;
const schedule = { kind: 'string', choices: ['constant', 'cosine'], default: 'constant', help: 'learning rate after warmup' } as const;
const TRAIN_SETS_HELP = 'module sets: o_proj, norms, embed, head, q_proj, k_proj, v_proj, qkv, gate_proj, up_proj, down_proj, mlp, all';

export const COMMAND_DECLARATIONS = [
  SERVE,
  command({
    name: 'make-model',
    args: 'DIR',
    positionals: 1,
    summary: 'write a random, seeded HF-layout checkpoint with the Qwen tokenizer',
    options: {
      preset: { kind: 'string', choices: ['tiny', 'qwen2.5-0.5b', 'qwen2.5-1.5b'], default: 'tiny', help: 'the shape' },
      seed: { kind: 'int', default: 0, help: 'weight seed' },
      dtype: { kind: 'string', choices: ['bf16', 'f16', 'f32'], default: 'bf16', help: 'stored dtype' },
      'shard-mb': { kind: 'int', min: 1, help: 'shard size in MiB (one file when absent)' },
    },
  }),
  command({
    name: 'generate',
    summary: 'stream a completion to stdout',
    options: {
      model,
      prompt: { kind: 'string', required: true, help: "the prompt, encoded as transformers' tokenizer(text) does" },
      chat: { kind: 'boolean', help: 'wrap the prompt in the chat template as a user turn' },
      'max-tokens': maxTokens(128),
      temperature,
      'top-p': { kind: 'number', help: 'nucleus sampling' },
      'top-k': { kind: 'int', min: 1, help: 'top-k sampling' },
      seed,
      stop: { kind: 'string', arg: 'S', repeat: true, help: 'a stop string' },
      threads,
      device,
      quantize,
      'session-cache': sessionCache,
      'session-cache-gb': sessionCacheGb,
    },
  }),
  command({
    name: 'logits',
    summary: 'print {"ids","logits","greedy"} JSON, computed as the server computes it',
    options: {
      model,
      ids: { kind: 'ids', required: true, help: 'token ids' },
      greedy: { kind: 'int', min: 0, default: 0, help: 'greedy tokens to decode after the ids (EOS ignored)' },
      merge,
      destroy,
      threads,
      device,
      quantize,
      'session-cache': sessionCache,
      'session-cache-gb': sessionCacheGb,
    },
  }),
  command({
    name: 'extract',
    summary: 'write a plugin from a fine-tune, with an audit of the modules left out',
    options: {
      base: { kind: 'string', arg: 'DIR', required: true, help: 'the base checkpoint (A)' },
      tuned: { kind: 'string', arg: 'DIR', required: true, help: 'its fine-tune (B)' },
      out: out('FILE', 'the plugin file (.safetensors); the audit goes to FILE.audit.json'),
      modules: { kind: 'list', default: 'o_proj,norms,embed,head', help: 'module sets to extract: o_proj, norms, embed, head' },
      description: { kind: 'string', help: 'stored in the plugin' },
    },
  }),
  command({
    name: 'export',
    summary: 'write a view (plugins, merge, destruction) as a full HF checkpoint, or as one GGUF file for llama.cpp and Ollama',
    options: {
      model,
      out: out('PATH', 'the checkpoint directory (hf) or the .gguf file (gguf)'),
      plugin,
      merge,
      destroy,
      format: { kind: 'string', choices: ['hf', 'gguf'], default: 'hf', help: "hf: a Hugging Face checkpoint directory; gguf: llama.cpp's format (its tensor names, tokenizer and RoPE layout)" },
      dtype: {
        kind: 'string',
        choices: ['f32', 'bf16', 'f16', 'q8_0', 'q4_0'],
        default: 'f32',
        help: 'stored dtype; q8_0 and q4_0 (ggml block quantisation of the matrices) with --format gguf, bf16 with hf',
      },
      'shard-mb': { kind: 'int', min: 1, help: 'shard size in MiB (one file when absent)' },
    },
  }),
  command({
    name: 'delta',
    args: 'A B',
    positionals: 2,
    summary: 'per module x layer ||B-A||, relative change histograms, SVG charts and report.html (B: a checkpoint dir, or a plugin file over A)',
    options: {
      out: out('DIR', 'the report directory'),
      bins: { kind: 'int', min: 1, default: 50, help: 'histogram bins' },
      every: { kind: 'int', min: 1, default: 1, help: 'chart every K-th layer' },
    },
  }),
  command({
    name: 'eval',
    summary: 'a JSONL set ({id, prompt | messages, answer}) under a view: accuracy, tokens, levels',
    options: {
      data: { kind: 'string', arg: 'FILE', required: true, help: 'the evaluation set (JSONL)' },
      out: out('DIR', 'results.jsonl and summary.json'),
      model,
      plugin,
      merge,
      destroy,
      'max-tokens': { kind: 'int', min: 1, defaultHelp: '512 + --max-thinking', help: 'tokens generated per item' },
      temperature,
      seed,
      reasoning: { kind: 'boolean', help: 'reasoning mode (thinking, then the answer)' },
      'min-thinking': { kind: 'int', min: 0, help: 'budget forcing: thinking tokens before the answer may start' },
      'max-thinking': { kind: 'int', min: 1, help: 'budget forcing: thinking tokens at most' },
      wait: { kind: 'int', min: 0, help: 'budget forcing: "Wait" insertions at most' },
      'reasoning-format': SERVE.options['reasoning-format'],
      levels,
      concurrency: concurrency(4),
      'no-chat': noChat,
    },
  }),
  command({
    name: 'levels',
    summary: 'levels I-IV of given outputs ({prompt | messages, output, answer?} per JSONL line), scored under the model or the view',
    options: {
      data: { kind: 'string', arg: 'FILE', required: true, help: 'the outputs (JSONL)' },
      calibrate: { kind: 'boolean', help: 'lines also carry a human "label": print the agreement and the best thresholds of a grid' },
      model,
      plugin,
      merge,
      destroy,
      thresholds,
      concurrency: concurrency(8),
    },
  }),
  command({
    name: 'probe',
    summary: "each prompt through the model and through a merged or destroyed view: both greedy outputs with levels I-IV (the API's merge and destruction probes)",
    options: {
      prompts: { kind: 'string', arg: 'FILE', required: true, help: 'prompts (JSONL: {prompt | messages, answer?})' },
      merge,
      destroy,
      plugin,
      model,
      'max-tokens': maxTokens(64),
      scorer,
      thresholds,
    },
    notes: ['give --merge, --destroy or --plugin (the altered view); the intact view is the model'],
  }),
  command({
    name: 'destruction-table',
    summary: "the paper's Table 3: levels of each prompt's output, per method x module kind",
    options: {
      modules: { kind: 'list', required: true, help: 'module kinds (rows)' },
      layers: { kind: 'string', arg: 'A-B', required: true, help: 'the destroyed layers' },
      prompts: { kind: 'string', arg: 'FILE', required: true, help: 'prompts (JSONL: {prompt | messages, answer?})' },
      out: out('DIR', 'table.json, .csv, .md and .svg'),
      methods: { kind: 'list', default: 'zero,reinit,remove', help: 'destruction methods (columns)' },
      model,
      'max-tokens': maxTokens(64),
      seed: { kind: 'int', default: 0, help: 'ReInit seed' },
      scorer,
      thresholds,
    },
  }),
  command({
    name: 'destruction-sweep',
    summary: 'every module kind x layer window destroyed in turn; damage = mean KL(intact || destroyed) on a text, as a heatmap',
    options: {
      method: { kind: 'string', choices: ['zero', 'reinit', 'remove'], required: true, help: 'the destruction' },
      modules: { kind: 'list', help: 'module kinds (rows); remove takes whole layers' },
      window: { kind: 'int', min: 1, default: 4, help: 'layers destroyed together' },
      stride: { kind: 'int', min: 1, defaultHelp: '--window', help: 'windows start every this many layers' },
      text: { kind: 'string', help: 'the reference text' },
      ids: { kind: 'ids', help: 'or the reference as token ids' },
      seed: { kind: 'int', default: 0, help: 'ReInit seed' },
      out: out('DIR', 'sweep.json and sweep.svg'),
      model,
    },
    notes: ['give exactly one of --text and --ids (at most 512 tokens)'],
  }),
  command({
    name: 'merge-table',
    summary: "the paper's Table 1: A, B, M1, M2, M3 (or --rows) over one set: accuracy, tokens, levels",
    options: {
      data: { kind: 'string', arg: 'FILE', required: true, help: 'the evaluation set (JSONL)' },
      out: out('DIR', 'table.json, .csv, .md and results'),
      from: { kind: 'string', arg: 'B', help: 'the fine-tune (a checkpoint dir or plugin file): rows A, B, M1-M3' },
      rows: { kind: 'string', arg: 'JSON', help: 'or the rows: [{name, merge?}]' },
      model,
      'max-tokens': maxTokens(64),
      temperature,
      seed,
      levels,
      scorer,
      thresholds,
      concurrency: concurrency(4),
      'no-chat': noChat,
    },
    notes: ['give exactly one of --from and --rows'],
  }),
  command({
    name: 'grads',
    summary: 'd loss / d p of one sequence for the trainable kinds, as safetensors; prints {"loss"} (transformers\' model(ids, labels=ids).loss)',
    options: {
      ids: { kind: 'ids', required: true, help: 'the sequence (at least two tokens)' },
      kinds: { kind: 'list', required: true, help: TRAIN_SETS_HELP },
      out: out('FILE', 'the gradients (.safetensors, HF names, F32)'),
      model,
      threads,
    },
  }),
  command({
    name: 'freeze',
    summary: "fine-tune only the chosen kinds (AdamW as torch's) and write a plugin (or, for q/k/v/MLP, a checkpoint)",
    options: {
      kinds: { kind: 'list', required: true, help: TRAIN_SETS_HELP },
      out: out('PATH', 'PLUGIN.safetensors, or a directory for kinds that cannot be a plugin'),
      data: { kind: 'string', arg: 'FILE', help: 'training set (JSONL: {"text"} | {"prompt", "completion"} | {"messages"})' },
      ids: { kind: 'ids', help: 'or one fixed sequence' },
      model,
      steps: { kind: 'int', min: 1, default: 100, help: 'optimizer steps' },
      lr: { kind: 'number', min: 0, default: 1e-4, help: 'learning rate' },
      wd: { kind: 'number', min: 0, default: 0, help: 'decoupled weight decay' },
      batch: { kind: 'int', min: 1, defaultHelp: 'min(8, rows)', help: 'sequences per micro-batch' },
      seq: { kind: 'int', min: 2, default: 512, help: 'tokens per sequence at most' },
      warmup: { kind: 'int', min: 0, default: 0, help: 'linear warmup steps' },
      schedule,
      'grad-accum': { kind: 'int', min: 1, default: 1, help: 'micro-batches per step' },
      seed: { kind: 'int', default: 0, help: 'data order seed' },
      'checkpoint-every': { kind: 'int', min: 0, default: 0, help: 'write a resumable checkpoint every K steps' },
      resume: { kind: 'boolean', help: 'continue from the checkpoint beside --out' },
      description: { kind: 'string', help: 'stored in the plugin' },
      threads,
    },
    notes: ['give exactly one of --data and --ids'],
  }),
  command({
    name: 'freeze-table',
    summary: "the paper's Table 2: F1-F4 (or --rows) trained on one set, evaluated on another",
    options: {
      data: { kind: 'string', arg: 'FILE', required: true, help: 'training set (JSONL)' },
      eval: { kind: 'string', arg: 'FILE', required: true, help: 'evaluation set (JSONL)' },
      out: out('DIR', 'the trained plugins, table.md/.csv/.json and loss curves'),
      rows: { kind: 'string', arg: 'JSON', help: 'rows [{name, kinds}] instead of F1-F4' },
      model,
      steps: { kind: 'int', min: 1, default: 100, help: 'optimizer steps per row' },
      lr: { kind: 'number', min: 0, default: 1e-3, help: 'learning rate' },
      wd: { kind: 'number', min: 0, default: 0, help: 'decoupled weight decay' },
      batch: { kind: 'int', min: 1, default: 8, help: 'sequences per step' },
      seq: { kind: 'int', min: 2, default: 512, help: 'tokens per sequence at most' },
      warmup: { kind: 'int', min: 0, default: 0, help: 'linear warmup steps' },
      schedule,
      seed: { kind: 'int', default: 0, help: 'data order seed' },
      'max-tokens': maxTokens(64),
      levels,
      'no-chat': noChat,
      threads,
    },
  }),
  command({
    name: 'freeze-plan',
    summary: 'trainable parameters of the Freeze module sets',
    options: { model, json: { kind: 'boolean', help: 'JSON instead of a table' } },
  }),
] as const satisfies readonly Command[];

type Declared = (typeof COMMAND_DECLARATIONS)[number];
/** A command's declaration by name, typed for parseOptions. */
export function declaration<N extends Declared['name']>(name: N): Extract<Declared, { name: N }> {
  return COMMAND_DECLARATIONS.find((c) => c.name === name) as Extract<Declared, { name: N }>;
}
