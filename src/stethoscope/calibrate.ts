/**
 * Calibrating the level thresholds against human labels: agreement and confusion of `level()` on labelled
 * outputs, and a grid search over the thresholds. NLL is in the scoring model's units, so a model other than the
 * built-in one needs its own labelled outputs (`sfn levels --data LABELLED.jsonl --calibrate`).
 */
import { DEFAULT_THRESHOLDS, level, type Level, type LevelMetrics, type LevelThresholds } from './levels.ts';

const LEVELS: Level[] = ['I', 'II', 'III', 'IV'];

export interface Agreement {
  items: number;
  agreement: number;
  /** confusion[label][judged] = count. */
  confusion: Record<Level, Record<Level, number>>;
  /** Per human label: the fraction judged the same. */
  perLevel: Record<Level, { items: number; agreement: number | null }>;
}

export function agreement(metrics: LevelMetrics[], labels: Level[], t: LevelThresholds): Agreement {
  const confusion = Object.fromEntries(LEVELS.map((l) => [l, Object.fromEntries(LEVELS.map((k) => [k, 0]))])) as Agreement['confusion'];
  metrics.forEach((m, i) => confusion[labels[i]][level(m, t).level]++);
  const same = LEVELS.reduce((a, l) => a + confusion[l][l], 0);
  const perLevel = Object.fromEntries(
    LEVELS.map((l) => {
      const n = LEVELS.reduce((a, k) => a + confusion[l][k], 0);
      return [l, { items: n, agreement: n ? confusion[l][l] / n : null }];
    }),
  ) as Agreement['perLevel'];
  return { items: metrics.length, agreement: metrics.length ? same / metrics.length : 0, confusion, perLevel };
}

/** The thresholds of a coarse grid that agree best with the labels (ties: the first in grid order). */
export function calibrate(metrics: LevelMetrics[], labels: Level[], base: LevelThresholds = DEFAULT_THRESHOLDS): { thresholds: LevelThresholds; agreement: Agreement } {
  let best: { thresholds: LevelThresholds; agreement: Agreement } | null = null;
  for (const maxRepetition of [0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]) {
    for (const maxNll of [1.5, 2, 2.5, 2.75, 3, 3.25, 3.5, 4, 4.5, 5, 6, 7, 8]) {
      for (const minPmi of [-0.5, -0.2, -0.1, 0, 0.05, 0.1, 0.2, 0.3, 0.5]) {
        const thresholds = { ...base, maxRepetition, maxNll, minPmi };
        const a = agreement(metrics, labels, thresholds);
        if (!best || a.agreement > best.agreement.agreement) best = { thresholds, agreement: a };
      }
    }
  }
  return best!;
}
