/**
 * Output levels I-IV (the paper's destruction table), scored automatically and reproducibly from metrics a
 * scoring model gives (the intact backbone by default), with the metrics returned beside each verdict. In order:
 *
 *   I   nonsense:        empty, or degenerate repetition
 *   IV  correct:         the expected answer matched (when one is given), and not level I by the above
 *   I   nonsense:        text the scoring model finds extremely unlikely (gibberish, broken words)
 *   II  irrelevant:      fluent, but the prompt does not explain it (low PMI), or, with an expected answer,
 *                        no answer is given at all
 *   III context-aware:   on topic (and, with an expected answer, an answer given that does not match)
 *
 * Metrics: `repetition` = 1 - distinct n-grams / n-grams over the answer's tokens (n = 3); `nll` = mean
 * -log p(answer token | prompt, earlier answer tokens) under the scoring model (nats/token); `pmi` = mean
 * [log p(token | prompt, ...) - log p(token | neutral context, ...)] (nats/token): how much the prompt explains
 * the answer; `matched` = the extracted answer equals the expected one after normalisation.
 *
 * NLL is in the scoring model's own units: the defaults are calibrated on the built-in stories260K (see the
 * docs/stethoscopes.md, Levels, and test/fixtures/levels/); recalibrate `maxNll` for another model.
 */

import { z } from 'zod';

export interface LevelThresholds {
  /** Level I when repetition is at least this (0..1). */
  maxRepetition: number;
  /** Level I when the mean NLL under the intact backbone is at least this (nats/token). */
  maxNll: number;
  /** Level II when the mean PMI is below this (nats/token). */
  minPmi: number;
  /** Answers shorter than this many tokens are level I (empty output). */
  minTokens: number;
}

/** Calibrated on 179 hand-labelled outputs of the built-in stories260K (test/fixtures/levels/; docs/stethoscopes.md, Levels). */
export const DEFAULT_THRESHOLDS: LevelThresholds = { maxRepetition: 0.75, maxNll: 3.5, minPmi: -0.1, minTokens: 1 };

/** Thresholds as requests and `--thresholds` give them: any subset, the rest default. */
export const ThresholdsSpec = z.strictObject({ maxRepetition: z.number().min(0).max(1), maxNll: z.number().positive(), minPmi: z.number(), minTokens: z.number().int().min(0) }).partial();

export interface LevelMetrics {
  tokens: number;
  /** Characters of visible text (special tokens decode to none). */
  chars: number;
  repetition: number;
  nll: number | null;
  pmi: number | null;
  /** null when no expected answer was given. */
  matched: boolean | null;
  extracted: string | null;
}

export type Level = 'I' | 'II' | 'III' | 'IV';

export interface LevelVerdict {
  level: Level;
  reason: string;
  metrics: LevelMetrics;
}

/** 1 - distinct/total over the n-grams of a token sequence (0 for sequences shorter than n). */
export function repetition(ids: readonly number[], n = 3): number {
  if (ids.length < n) return 0;
  const seen = new Set<string>();
  const total = ids.length - n + 1;
  for (let i = 0; i < total; i++) seen.add(ids.slice(i, i + n).join(','));
  return 1 - seen.size / total;
}

/** Mean NLL and PMI from per-token log-probabilities of the answer with and without the prompt. */
export function nllAndPmi(withPrompt: readonly number[], withoutPrompt: readonly number[]): { nll: number | null; pmi: number | null } {
  if (withPrompt.length === 0) return { nll: null, pmi: null };
  const n = withPrompt.length;
  const nll = -withPrompt.reduce((a, x) => a + x, 0) / n;
  const pmi = withoutPrompt.length === n ? withPrompt.reduce((a, x, i) => a + x - withoutPrompt[i], 0) / n : null;
  return { nll, pmi };
}

/**
 * The answer a text gives, as evaluation scripts extract it: the last `\boxed{...}`, else what follows
 * "final answer is", else the last number.
 */
export function extractAnswer(text: string): string | null {
  const boxed = lastBoxed(text);
  if (boxed !== null) return boxed;
  const fa = /final answer is[:\s]*\$?([^\n$]+?)\$?\s*(?:\.\s*)?$/im.exec(text) ?? /final answer is[:\s]*\$?([^\n$]+)/i.exec(text);
  if (fa) return fa[1].trim().replace(/\.$/, '');
  const nums = text.match(/-?\d[\d,]*(?:\.\d+)?/g);
  return nums ? nums[nums.length - 1] : null;
}

function lastBoxed(text: string): string | null {
  const i = text.lastIndexOf('\\boxed{');
  if (i < 0) return null;
  let depth = 0;
  for (let j = i + 7; j < text.length; j++) {
    if (text[j] === '{') depth++;
    else if (text[j] === '}') {
      if (depth === 0) return text.slice(i + 7, j);
      depth--;
    }
  }
  return null;
}

/** Normalises an answer for comparison: spaces, `$`, thousands separators, trailing zeros, \text{}, case. */
export function normalizeAnswer(s: string): string {
  let t = s
    .trim()
    .replace(/^\$+|\$+$/g, '')
    .replace(/\\text\{([^}]*)\}/g, '$1')
    .replace(/\\[,!;: ]/g, '');
  t = t.replace(/\s+/g, '').replace(/\.$/, '').toLowerCase();
  if (/^-?\d{1,3}(,\d{3})+(\.\d+)?$/.test(t)) t = t.replace(/,/g, '');
  if (/^-?\d+\.\d+$/.test(t)) t = t.replace(/0+$/, '').replace(/\.$/, '');
  return t;
}

export function answerMatches(text: string, expected: string): { matched: boolean; extracted: string | null } {
  const extracted = extractAnswer(text);
  return { matched: extracted !== null && normalizeAnswer(extracted) === normalizeAnswer(expected), extracted };
}

export function level(m: LevelMetrics, t: LevelThresholds = DEFAULT_THRESHOLDS): LevelVerdict {
  const v = (level: Level, reason: string): LevelVerdict => ({ level, reason, metrics: m });
  if (m.tokens < t.minTokens) return v('I', `fewer than ${t.minTokens} token(s)`);
  if (m.chars === 0 && t.minTokens > 0) return v('I', 'no visible text');
  if (m.repetition >= t.maxRepetition) return v('I', `degenerate repetition ${m.repetition.toFixed(3)} >= ${t.maxRepetition}`);
  // A correct answer that is not degenerate is level IV, before the likelihood checks: text in a skill the
  // scoring backbone lacks (a fine-tune's answers) is unlikely under it without being nonsense.
  if (m.matched) return v('IV', `the expected answer matched (${m.extracted}), without degenerate repetition`);
  if (m.nll !== null && m.nll >= t.maxNll) return v('I', `the scoring model finds it extremely unlikely: NLL ${m.nll.toFixed(3)} >= ${t.maxNll}`);
  if (m.pmi !== null && m.pmi < t.minPmi) return v('II', `fluent but off-topic: PMI ${m.pmi.toFixed(3)} < ${t.minPmi}`);
  // With an expected answer, context-aware means attempting it: fluent text that gives no answer is irrelevant.
  if (m.matched === false && m.extracted === null) return v('II', 'fluent, but gives no answer to the question');
  return v('III', m.matched === false ? `on topic, but the answer "${m.extracted}" does not match` : 'on topic (no expected answer given)');
}
