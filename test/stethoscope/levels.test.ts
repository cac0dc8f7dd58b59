/** Levels I-IV pinned with constructed examples, and the answer extraction they rely on. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { answerMatches, DEFAULT_THRESHOLDS, extractAnswer, level, nllAndPmi, normalizeAnswer, repetition, type LevelMetrics } from '../../src/stethoscope/levels.ts';

const m = (over: Partial<LevelMetrics>): LevelMetrics => ({ tokens: 20, chars: 80, repetition: 0.05, nll: 2.5, pmi: 0.8, matched: null, extracted: null, ...over });

describe('levels', () => {
  it('I: degenerate repetition', () => {
    const ids = Array.from({ length: 40 }, (_, i) => [5, 6, 7][i % 3]);
    assert.ok(repetition(ids) > 0.9);
    assert.equal(level(m({ repetition: repetition(ids) })).level, 'I');
  });
  it('I: text the intact backbone finds extremely unlikely', () => {
    const v = level(m({ nll: 11.2 }));
    assert.equal(v.level, 'I');
    assert.match(v.reason, /unlikely/);
  });
  it('I: empty output', () => assert.equal(level(m({ tokens: 0 })).level, 'I'));
  it('I: only special tokens, no visible text', () => assert.equal(level(m({ chars: 0 })).level, 'I'));
  it('II: fluent but the prompt does not explain it', () => {
    const { nll, pmi } = nllAndPmi([-2.2, -2.7, -2.0], [-2.0, -2.4, -1.8]);
    assert.ok(nll! < DEFAULT_THRESHOLDS.maxNll && pmi! < DEFAULT_THRESHOLDS.minPmi);
    assert.equal(level(m({ nll, pmi })).level, 'II');
  });
  it('III: on topic, wrong or no expected answer', () => {
    const { nll, pmi } = nllAndPmi([-1, -1.2, -0.8], [-4, -5, -3.5]);
    assert.equal(level(m({ nll, pmi })).level, 'III');
    const wrong = answerMatches('so the final answer is 41.', '42');
    assert.equal(level(m({ nll, pmi, ...wrong })).level, 'III');
  });
  it('IV: on topic and the expected answer matched', () => {
    const right = answerMatches('Adding them up gives \\boxed{1,024}', '1024');
    assert.equal(right.matched, true);
    assert.equal(level(m({ ...right })).level, 'IV');
  });
  it('IV before II and before the NLL check: a correct, coherent answer is IV though its PMI is low or the backbone finds it unlikely', () => {
    const right = answerMatches('So Tom has 4 apples.', '4');
    assert.equal(level(m({ pmi: -0.8, ...right })).level, 'IV');
    assert.equal(level(m({ nll: DEFAULT_THRESHOLDS.maxNll + 1, ...right })).level, 'IV');
    assert.equal(level(m({ repetition: 0.9, ...right })).level, 'I', 'a degenerate loop is nonsense even if it ends on the number');
  });
  it('II: fluent text that gives no answer to a question with an expected one', () => {
    const none = answerMatches('They went to the park and played all day.', '4');
    assert.equal(none.extracted, null);
    assert.equal(level(m({ ...none })).level, 'II');
  });
  it('takes thresholds from the caller', () => {
    assert.equal(level(m({ repetition: 0.3 }), { ...DEFAULT_THRESHOLDS, maxRepetition: 0.25 }).level, 'I');
    assert.equal(level(m({ nll: 3 }), { ...DEFAULT_THRESHOLDS, maxNll: 2.5 }).level, 'I');
    assert.equal(level(m({ repetition: 0.3 })).level, 'III');
  });
});

describe('answer extraction', () => {
  it('prefers the last \\boxed{}, then "final answer is", then the last number', () => {
    assert.equal(extractAnswer('first \\boxed{1} then \\boxed{\\frac{1}{2}}'), '\\frac{1}{2}');
    assert.equal(extractAnswer('We get 3 and 4. The final answer is 12.'), '12');
    assert.equal(extractAnswer('it is 3, no, 4.5'), '4.5');
    assert.equal(extractAnswer('no numbers'), null);
  });
  it('normalises dollars, spaces, separators, trailing zeros and case', () => {
    assert.equal(normalizeAnswer(' $1,000.50$ '), '1000.5');
    assert.equal(normalizeAnswer('\\text{Yes}'), 'yes');
    assert.equal(normalizeAnswer('2.000'), '2');
  });
});
