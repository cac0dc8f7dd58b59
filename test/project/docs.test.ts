/** The documentation as a newcomer reads it: a short README that reaches every page, and links that resolve. */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { generatedSections, withSection } from '../../src/cli/reference.ts';
import { ROOT } from '../helpers/fixtures.ts';

const read = (p: string) => readFileSync(join(ROOT, p), 'utf8');
const pages = [
  'README.md',
  'models/README.md',
  ...readdirSync(join(ROOT, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`),
];

/** GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens. */
const anchors = (md: string) =>
  new Set(
    [...md.matchAll(/^#{1,6} (.+)$/gm)].map((m) =>
      m[1]
        .trim()
        .toLowerCase()
        .replace(/[^\p{L}\p{N} _-]/gu, '')
        .replace(/ /g, '-'),
    ),
  );

describe('documentation', () => {
  it('keeps the README under 200 lines, with the quick start and a link to every docs page', () => {
    const readme = read('README.md');
    assert.ok(readme.split('\n').length <= 200, `README.md has ${readme.split('\n').length} lines`);
    assert.match(readme, /npm ci && npm start/);
    for (const p of pages.filter((p) => p.startsWith('docs/'))) assert.ok(readme.includes(`](${p}`), `README.md does not link ${p}`);
  });

  it('has no link to a missing file or heading', () => {
    for (const page of pages) {
      for (const [, target] of read(page).matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^[a-z]+:/.test(target)) continue;
        const [file, anchor] = target.split('#');
        const path = file ? join(dirname(page), file) : page;
        assert.ok(existsSync(join(ROOT, path)), `${page}: link to missing ${target}`);
        if (anchor) assert.ok(anchors(read(path)).has(anchor), `${page}: no heading #${anchor} in ${path}`);
      }
    }
  });

  it('has the option references that the declarations generate (run `npm run docs:options` after changing an option)', () => {
    for (const [path, text] of generatedSections()) {
      const page = read(path);
      assert.equal(page, withSection(page, text), `${path} is stale: run \`npm run docs:options\``);
    }
  });
});
