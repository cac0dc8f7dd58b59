import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const ORACLE_DIR = join(ROOT, 'test', 'fixtures', 'oracle');
export const FIXTURES = ['A', 'B', 'M1_o_proj', 'D_zero_o_proj_1-2', 'L_llama3_tied'] as const;

export interface Oracle {
  ids: number[];
  logits: number[][];
  greedy: number[];
}

export const fixtureDir = (name: string) => join(ORACLE_DIR, name);
export const oracle = (name: string): Oracle => JSON.parse(readFileSync(join(ORACLE_DIR, name, 'oracle.json'), 'utf8'));
