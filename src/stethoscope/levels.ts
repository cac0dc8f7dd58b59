/**
 * Output levels I-IV (the paper's destruction table), scored automatically and reproducibly from metrics the
 * intact backbone gives, with the metrics returned beside each verdict:
 *
 *   I   nonsense:        degenerate repetition, or text the intact backbone finds extremely unlikely
 *   II  irrelevant:      fluent, but low pointwise mutual information between prompt and answer
 *   III context-aware:   on topic
 *   IV  correct:         on topic, and the expected answer matched (when one is given)
 *
 * Metrics: `repetition` = 1 - distinct n-grams / n-grams over the answer's tokens (n = 3); `nll` = mean
 * -log p(answer token | prompt, earlier answer tokens) under the intact backbone (nats/token); `pmi` = mean
 * [log p(token | prompt, ...) - log p(token | neutral context, ...)] (nats/token): how much the prompt explains
 * the answer; `matched` = the extracted answer equals the expected one after normalisation.
 */

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

export const DEFAULT_THRESHOLDS: LevelThresholds = { maxRepetition: 0.5, maxNll: 7, minPmi: 0.05, minTokens: 1 };

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
  let t = s.trim().replace(/^\$+|\$+$/g, '').replace(/\\text\{([^}]*)\}/g, '$1').replace(/\\[,!;: ]/g, '');
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
  if (m.nll !== null && m.nll >= t.maxNll) return v('I', `the intact backbone finds it extremely unlikely: NLL ${m.nll.toFixed(3)} >= ${t.maxNll}`);
  if (m.pmi !== null && m.pmi < t.minPmi) return v('II', `fluent but off-topic: PMI ${m.pmi.toFixed(3)} < ${t.minPmi}`);
  if (m.matched) return v('IV', `on topic and the expected answer matched (${m.extracted})`);
  return v('III', m.matched === false ? `on topic, but the answer ${m.extracted === null ? 'was not found' : `"${m.extracted}" does not match`}` : 'on topic (no expected answer given)');
}
