/**
 * Charts of the stethoscopes, rendered server-side to SVG by vega-lite + vega (no browser, no canvas), and
 * an HTML report page that embeds them. Specs are plain vega-lite, kept next to the data they show.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as vega from 'vega';
import * as vl from 'vega-lite';
import { deltaCsv, type DeltaReport } from './delta.ts';

export async function renderSvg(spec: vl.TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  return svg;
}

/** The paper's Figure 2: ||B-A|| of each module kind across layers. */
export function l2ByLayerSpec(r: DeltaReport): vl.TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: { text: 'L2 norm of B - A by layer', subtitle: `A = ${r.a}, B = ${r.b}` },
    width: 520,
    height: 300,
    data: { values: r.modules.filter((m) => m.layer !== null).map((m) => ({ layer: m.layer, kind: m.kind, l2: m.l2, rel_l2: m.rel_l2 })) },
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'layer', type: 'quantitative', title: 'layer', axis: { tickMinStep: 1 } },
      y: { field: 'l2', type: 'quantitative', title: '||B - A||' },
      color: { field: 'kind', type: 'nominal', title: 'module' },
    },
  } as vl.TopLevelSpec;
}

/** The paper's Figure 3: distributions of (B-A)/A, one panel per module kind x every k-th layer. */
export function histogramsSpec(r: DeltaReport, every: number): vl.TopLevelSpec {
  const values: { kind: string; layer: number; r: number; fraction: number }[] = [];
  for (const m of r.modules) {
    if (m.layer === null || m.layer % every !== 0) continue;
    m.histogram.forEach((c, i) => values.push({ kind: m.kind, layer: m.layer!, r: (r.bins[i] + r.bins[i + 1]) / 2, fraction: c / m.elements }));
  }
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: { text: 'Element-wise relative change (B - A) / A, clipped to [-1, 1]', subtitle: `every ${every} layer(s)` },
    data: { values },
    facet: { row: { field: 'kind', type: 'nominal', title: null }, column: { field: 'layer', type: 'ordinal', title: 'layer' } },
    spec: {
      width: 110,
      height: 60,
      mark: 'bar',
      encoding: {
        x: { field: 'r', type: 'quantitative', bin: { binned: true, step: 2 / (r.bins.length - 1) }, scale: { domain: [-1, 1] }, title: null },
        y: { field: 'fraction', type: 'quantitative', title: null },
      },
    },
  } as vl.TopLevelSpec;
}

/** The destruction sweep's heatmap: damage per module kind x layer window. */
export function sweepSpec(r: { method: string; score: string; cells: { module: string; layers: string; start: number; kl: number }[] }): vl.TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: { text: `Destruction sweep (${r.method})`, subtitle: r.score },
    data: { values: r.cells },
    width: { step: 36 },
    height: { step: 22 },
    mark: 'rect',
    encoding: {
      x: { field: 'layers', type: 'ordinal', sort: { field: 'start' }, title: 'layers' },
      y: { field: 'module', type: 'nominal', title: null },
      color: { field: 'kl', type: 'quantitative', title: 'KL', scale: { scheme: 'reds' } },
      tooltip: [{ field: 'module' }, { field: 'layers' }, { field: 'kl', format: '.4f' }],
    },
  } as vl.TopLevelSpec;
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);
}

export function deltaHtml(r: DeltaReport, svgs: Record<string, string>): string {
  const fmt = (x: number | null) => (x === null ? '-' : Number.isFinite(x) ? x.toPrecision(4) : String(x));
  const rows = r.kinds.map((k) => `<tr><td>${k.rank}</td><td>${k.kind}</td><td>${fmt(k.l2)}</td><td>${fmt(k.rel_l2)}</td><td>${fmt(k.bimodality)}</td></tr>`).join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sfn delta report</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style>
</head><body>
<h1>Delta: which modules did the fine-tune move?</h1>
<p>A = <code>${escapeHtml(r.a)}</code><br>B = <code>${escapeHtml(r.b)}</code></p>
<h2>Module kinds ranked by relative change</h2>
<table id="ranking"><tr><th>rank</th><th>kind</th><th>||B-A||</th><th>||B-A|| / ||A||</th><th>bimodality</th></tr>
${rows}
</table>
${Object.entries(svgs)
  .map(([name, svg]) => `<h2>${escapeHtml(name)}</h2>\n<figure id="${escapeHtml(name)}">${svg}</figure>`)
  .join('\n')}
</body></html>
`;
}

/** delta.json, delta.csv, l2_by_layer.svg, histograms.svg and report.html in `dir`. */
export async function writeDeltaOutputs(r: DeltaReport, dir: string, every = 1): Promise<string[]> {
  mkdirSync(dir, { recursive: true });
  const l2 = await renderSvg(l2ByLayerSpec(r));
  const hist = await renderSvg(histogramsSpec(r, every));
  const files: Record<string, string> = {
    'delta.json': JSON.stringify(r, null, 1),
    'delta.csv': deltaCsv(r),
    'l2_by_layer.svg': l2,
    'histograms.svg': hist,
    'report.html': deltaHtml(r, { l2_by_layer: l2, histograms: hist }),
  };
  for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, name), content);
  return Object.keys(files);
}
