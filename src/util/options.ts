/**
 * Command-line options declared once: flag, environment variable, kind, choices, default and help. The same
 * declaration parses the arguments (flag, else variable, else default), prints `sfn <command> --help`, and
 * writes the generated reference tables in docs/ (`npm run docs:options`, checked for drift by the tests).
 */
import { parseArgs } from 'node:util';

export type OptionKind = 'string' | 'int' | 'number' | 'boolean' | 'list' | 'ids';

export interface Option {
  /** string; int / number (checked); boolean (a bare flag); list (comma-separated); ids (comma-separated token ids). */
  kind: OptionKind;
  help: string;
  /** The value's placeholder in help (default by kind: TEXT, N, X, A,B, 1,2,3). */
  arg?: string;
  /** The environment variable read when the flag is absent. */
  env?: string;
  default?: string | number | boolean;
  /** The default in words, where it is computed elsewhere (e.g. "all cores"). */
  defaultHelp?: string;
  choices?: readonly string[];
  /** The flag may be given several times (the variable: comma-separated); the value is a list. */
  repeat?: boolean;
  required?: boolean;
  min?: number;
}

export interface Command {
  name: string;
  /** Positional arguments, as help shows them (e.g. "DIR", "A B"); none when absent. */
  args?: string;
  /** How many positionals `args` takes. */
  positionals?: number;
  summary: string;
  options: Readonly<Record<string, Option>>;
  /** Further lines of help (constraints between options, file formats). */
  notes?: readonly string[];
}

/** Declares a command, keeping its options' literal types for `Values`. */
export const command = <const C extends Command>(c: C): C => c;

type Scalar<O> = O extends { choices: readonly (infer C)[] }
  ? C
  : O extends { kind: 'int' | 'number' }
    ? number
    : O extends { kind: 'boolean' }
      ? boolean
      : O extends { kind: 'ids' }
        ? number[]
        : O extends { kind: 'list' }
          ? string[]
          : string;
type Value<O> = O extends { repeat: true } ? Scalar<O>[] : O extends { default: unknown } | { required: true } | { kind: 'boolean' } ? Scalar<O> : Scalar<O> | undefined;
/** The parsed values of a command's options, by flag name. */
export type Values<C extends Command> = { -readonly [K in keyof C['options']]: Value<C['options'][K]> };

/** A bad option (exit code 2, like any usage error). */
export class OptionError extends Error {
  override name = 'OptionError';
}

/** How help and errors name an option: `--flag` and, when it has one, its variable. */
export function optionName(flag: string, o: Option): string {
  return o.env ? `--${flag} / ${o.env}` : `--${flag}`;
}

function placeholder(o: Option): string {
  if (o.kind === 'boolean') return '';
  if (o.arg) return o.arg;
  if (o.choices) return o.choices.join('|');
  return { string: 'TEXT', int: 'N', number: 'X', list: 'A,B', ids: '1,2,3' }[o.kind];
}

function convert(o: Option, raw: string, from: string): unknown {
  const bad = (what: string) => new OptionError(`${from}: ${what}, got "${raw}"`);
  switch (o.kind) {
    case 'int': {
      const n = Number(raw);
      if (raw.trim() === '' || !Number.isInteger(n)) throw bad('must be an integer');
      if (o.min !== undefined && n < o.min) throw bad(`must be at least ${o.min}`);
      return n;
    }
    case 'number': {
      const n = Number(raw);
      if (raw.trim() === '' || !Number.isFinite(n)) throw bad('must be a number');
      if (o.min !== undefined && n < o.min) throw bad(`must be at least ${o.min}`);
      return n;
    }
    case 'list':
      return raw
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
    case 'ids':
      return raw.split(',').map((s) => {
        const n = Number(s.trim());
        if (s.trim() === '' || !Number.isInteger(n) || n < 0) throw new OptionError(`${from}: "${s}" is not a token id`);
        return n;
      });
    default:
      if (o.choices && !o.choices.includes(raw)) throw bad(`must be ${o.choices.join(' or ')}`);
      return raw;
  }
}

/** Parses `args` against a command's options: each value from its flag, else its variable, else its default. */
export function parseOptions<C extends Command>(cmd: C, args: string[], env: NodeJS.ProcessEnv = process.env): { values: Values<C>; positionals: string[] } {
  const spec: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }> = {};
  for (const [flag, o] of Object.entries(cmd.options)) spec[flag] = { type: o.kind === 'boolean' ? 'boolean' : 'string', ...(o.repeat ? { multiple: true } : {}) };
  let parsed;
  try {
    parsed = parseArgs({ args, options: spec, allowPositionals: cmd.positionals !== undefined, strict: true });
  } catch (e) {
    throw new OptionError(`${cmd.name}: ${(e as Error).message.split('\n')[0]}`);
  }
  const positionals = parsed.positionals;
  if (cmd.positionals !== undefined && positionals.length !== cmd.positionals) throw new OptionError(`${cmd.name} takes ${cmd.args}`);
  const values: Record<string, unknown> = {};
  for (const [flag, o] of Object.entries(cmd.options)) {
    const given = parsed.values[flag] as string | boolean | string[] | undefined;
    const fromEnv = given === undefined && o.env && env[o.env] ? env[o.env]! : undefined;
    if (o.kind === 'boolean') {
      values[flag] = given ?? (fromEnv !== undefined ? ['1', 'true', 'yes'].includes(fromEnv.toLowerCase()) : (o.default ?? false));
      continue;
    }
    if (o.repeat) {
      const raws =
        (given as string[] | undefined) ??
        (fromEnv !== undefined
          ? fromEnv
              .split(',')
              .map((s) => s.trim())
              .filter(Boolean)
          : []);
      values[flag] = raws.map((r) => convert(o, r, fromEnv !== undefined ? o.env! : `--${flag}`));
      continue;
    }
    const raw = (given as string | undefined) ?? fromEnv;
    if (raw === undefined) {
      if (o.required) throw new OptionError(`${cmd.name} needs --${flag}${placeholder(o) ? ` ${placeholder(o)}` : ''}`);
      values[flag] = o.default === undefined ? undefined : convert(o, String(o.default), `the default of --${flag}`);
      continue;
    }
    values[flag] = convert(o, raw, given !== undefined ? `--${flag}` : o.env!);
  }
  return { values: values as Values<C>, positionals };
}

function defaultText(o: Option): string | undefined {
  if (o.defaultHelp) return o.defaultHelp;
  if (o.default === undefined || o.kind === 'boolean') return undefined;
  return String(o.default);
}

/** `sfn <command> --help`. */
export function commandUsage(cmd: Command): string {
  const lines = [`usage: sfn ${cmd.name}${cmd.args ? ` ${cmd.args}` : ''} [options]`, `  ${cmd.summary}`, ''];
  const rows = Object.entries(cmd.options).map(([flag, o]) => {
    const head = `--${flag}${placeholder(o) ? ` ${placeholder(o)}` : ''}`;
    const extra = [o.required ? 'required' : undefined, defaultText(o) && `default ${defaultText(o)}`, o.env && `env ${o.env}`, o.repeat && 'repeatable'].filter(Boolean);
    return [head, `${o.help}${extra.length ? ` (${extra.join('; ')})` : ''}`];
  });
  const w = Math.min(34, Math.max(...rows.map(([h]) => h.length), 0) + 2);
  for (const [h, text] of rows) lines.push(h.length + 2 > w ? `  ${h}\n  ${' '.repeat(w)}${text}` : `  ${h.padEnd(w)}${text}`);
  for (const n of cmd.notes ?? []) lines.push(`  ${n}`);
  return lines.join('\n');
}

const md = (s: string) => s.replace(/\|/g, '\\|');

/** The Markdown reference table of a command's options (docs/cli.md, docs/configuration.md). */
export function optionsTable(cmd: Command): string {
  const out = ['| flag | variable | default | meaning |', '|---|---|---|---|'];
  for (const [flag, o] of Object.entries(cmd.options)) {
    const ph = placeholder(o);
    const f = `\`--${flag}${ph ? ` ${md(ph)}` : ''}\`${o.repeat ? ' (repeatable)' : ''}`;
    const v = o.env ? `\`${o.env}\`${o.repeat ? ' (comma-separated)' : ''}` : '';
    const d = o.required ? 'required' : (defaultText(o) ?? (o.kind === 'boolean' ? 'off' : 'none'));
    out.push(`| ${f} | ${v} | ${md(d)} | ${md(o.help)} |`);
  }
  return out.join('\n');
}
