/**
 * deploy/: every Kubernetes object validates against its API schema (kubernetes-models for the core, Gateway
 * API and Prometheus Operator groups; our own schemas for the Inference Extension), and the pieces agree with
 * each other and with sfn itself: probe paths, ports, settings that sfn's own config parser accepts, every
 * PromQL expression parses and names only metrics a running sfn exports.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parser as promql } from '@prometheus-io/lezer-promql';
import { Ajv } from 'ajv';
import * as gatewayV1 from '@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1';
import * as monitoringV1 from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
import * as appsV1 from 'kubernetes-models/apps/v1';
import * as autoscalingV2 from 'kubernetes-models/autoscaling/v2';
import * as policyV1 from 'kubernetes-models/policy/v1';
import * as coreV1 from 'kubernetes-models/v1';
import { parseAllDocuments } from 'yaml';
import { parseServerConfig } from '../../src/server/config.ts';
import { startServer, type RunningServer } from '../../src/server/serve.ts';
import { fixtureDir, ROOT } from '../helpers/fixtures.ts';
import { inferenceExtensionSchemas } from '../helpers/inference-extension.ts';

const DEPLOY = join(ROOT, 'deploy');

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Obj = Record<string, any>;
interface Doc {
  file: string;
  obj: Obj;
}

function files(dir: string, ext: RegExp): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && ext.test(e.name))
    .map((e) => join(e.parentPath, e.name))
    .sort();
}

const docs: Doc[] = files(DEPLOY, /\.ya?ml$/).flatMap((file) =>
  parseAllDocuments(readFileSync(file, 'utf8')).map((d) => {
    assert.deepEqual(d.errors, [], `${file}: YAML errors`);
    return { file: relative(DEPLOY, file), obj: d.toJS() as Obj };
  }),
);
const objects = docs.filter((d) => d.obj?.apiVersion && d.obj?.kind && d.obj.kind !== 'Kustomization');
const find = (kind: string, name?: string) => {
  const hits = objects.filter((d) => d.obj.kind === kind && (name === undefined || d.obj.metadata?.name === name));
  assert.ok(hits.length > 0, `no ${kind}${name ? ` "${name}"` : ''} in deploy/`);
  return hits[0].obj;
};
const fileDoc = (path: string) => docs.find((d) => d.file === path)!.obj;

type ModelClass = new (o: Obj) => { validate(): void };
const groups: Record<string, Record<string, unknown>> = {
  v1: coreV1,
  'apps/v1': appsV1,
  'autoscaling/v2': autoscalingV2,
  'policy/v1': policyV1,
  'gateway.networking.k8s.io/v1': gatewayV1,
  'monitoring.coreos.com/v1': monitoringV1,
};
const ajv = new Ajv({ allErrors: true, strict: true });

/** Names of the vector selectors in a PromQL expression; throws where it does not parse. */
function promqlMetrics(expr: string): string[] {
  const tree = promql.parse(expr);
  const names: string[] = [];
  const cursor = tree.cursor();
  do {
    if (cursor.type.isError) throw new Error(`PromQL syntax error at ${cursor.from} in: ${expr}`);
    if (cursor.name === 'Identifier' && cursor.node.parent?.name === 'VectorSelector') names.push(expr.slice(cursor.from, cursor.to));
  } while (cursor.next());
  return names;
}

/** Metrics that come from Prometheus itself or the cluster, not from sfn. */
const EXTERNAL_METRICS = new Set(['up']);

describe('deploy/ manifests', () => {
  let srv: RunningServer;
  let exported: Set<string>;
  const dataDir = mkdtempSync(join(tmpdir(), 'sfn-deploy-'));

  before(async () => {
    srv = await startServer(parseServerConfig(['--model', fixtureDir('A'), '--port', '0', '--data-dir', dataDir], {}), () => {});
    await srv.host.ready;
    const text = await (await fetch(`${srv.url}/metrics`)).text();
    exported = new Set();
    for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
      exported.add(m[1]);
      if (m[2] === 'histogram') for (const s of ['_bucket', '_sum', '_count']) exported.add(m[1] + s);
      if (m[2] === 'summary') for (const s of ['_sum', '_count']) exported.add(m[1] + s);
    }
  });
  after(async () => {
    await srv.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('validates every object against its Kubernetes API schema', () => {
    assert.ok(objects.length >= 15, `only ${objects.length} objects`);
    for (const { file, obj } of objects) {
      const where = `${file}: ${obj.kind} ${obj.metadata?.name}`;
      const crd = inferenceExtensionSchemas[`${obj.apiVersion}/${obj.kind}`];
      if (crd) {
        const ok = ajv.validate(crd, obj);
        assert.ok(ok, `${where}: ${ajv.errorsText()}`);
        continue;
      }
      const Model = groups[obj.apiVersion]?.[obj.kind] as ModelClass | undefined;
      assert.ok(Model, `${where}: no schema for ${obj.apiVersion} ${obj.kind}`);
      assert.doesNotThrow(
        () => new Model(obj).validate(),
        (e: Error) => assert.fail(`${where}: ${e.message}`),
      );
    }
  });

  it('the validator catches a broken manifest (it is not a no-op)', () => {
    const d = structuredClone(find('Deployment', 'sfn'));
    d.spec.template.spec.containers[0].ports[0].containerPort = 'http';
    assert.throws(() => new appsV1.Deployment(d).validate(), /containerPort/);
    const pool = structuredClone(find('InferencePool'));
    pool.spec.targetPorts = [{ number: 70000 }];
    assert.equal(ajv.validate(inferenceExtensionSchemas['inference.networking.k8s.io/v1/InferencePool'], pool), false);
  });

  it('kustomization lists every manifest in its folder', () => {
    const k = fileDoc('kubernetes/kustomization.yaml');
    const here = readdirSync(join(DEPLOY, 'kubernetes')).filter((f) => f !== 'kustomization.yaml' && f.endsWith('.yaml'));
    assert.deepEqual([...k.resources].sort(), here.sort());
  });

  it("the Deployment: sfn's probes, port, settings, non-root user, volumes and drain", () => {
    const dep = find('Deployment', 'sfn');
    const pod = dep.spec.template.spec;
    const c = pod.containers[0];
    const config = find('ConfigMap', 'sfn-config').data as Record<string, string>;
    const secret = find('Secret', 'sfn-keys').stringData as Record<string, string>;
    assert.deepEqual(
      c.envFrom.map((e: Obj) => (e.configMapRef ?? e.secretRef).name),
      ['sfn-config', 'sfn-keys'],
    );
    // sfn's own parser accepts the settings, and the configuration reference documents each one.
    const settings = parseServerConfig([], { ...config, ...secret });
    const reference = readFileSync(join(ROOT, 'docs/configuration.md'), 'utf8');
    for (const k of [...Object.keys(config), ...Object.keys(secret)]) assert.ok(reference.includes(`\`${k}\``), `${k} is not in docs/configuration.md`);
    assert.equal(settings.host, '0.0.0.0');
    const http = c.ports.find((p: Obj) => p.name === 'http');
    assert.equal(http.containerPort, settings.port);
    assert.deepEqual([c.readinessProbe.httpGet.path, c.readinessProbe.httpGet.port], ['/ready', 'http']);
    assert.deepEqual([c.livenessProbe.httpGet.path, c.livenessProbe.httpGet.port], ['/health', 'http']);
    assert.deepEqual(c.args, ['serve']);
    // The user the image creates (Dockerfile: useradd --uid N).
    const uid = Number(/useradd --uid (\d+)/.exec(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'))![1]);
    assert.equal(pod.securityContext.runAsNonRoot, true);
    assert.equal(pod.securityContext.runAsUser, uid);
    // Volumes: the data volume at SFN_DATA_DIR on a ReadWriteMany claim, the model read-only, /tmp writable.
    const mounts = new Map(c.volumeMounts.map((m: Obj) => [m.name, m]));
    const claims = new Map(pod.volumes.filter((v: Obj) => v.persistentVolumeClaim).map((v: Obj) => [v.name, v.persistentVolumeClaim.claimName]));
    const mountOf = (dir: string) => c.volumeMounts.find((m: Obj) => dir === m.mountPath || dir.startsWith(m.mountPath + '/'));
    const data = mountOf(settings.dataDir);
    assert.ok(data && claims.has(data.name), 'SFN_DATA_DIR is on a persistent volume');
    assert.deepEqual(find('PersistentVolumeClaim', claims.get(data.name) as string).spec.accessModes, ['ReadWriteMany'], 'replicas share the plugin store');
    const model = mountOf(settings.model!);
    assert.ok(model?.readOnly, 'SFN_MODEL is on a read-only mount');
    for (const root of settings.modelRoots) assert.ok(mountOf(root), `model root ${root} is mounted`);
    if (c.securityContext.readOnlyRootFilesystem) assert.ok(mountOf('/tmp'), 'a read-only root needs a writable /tmp (tsx cache)');
    for (const name of claims.keys()) assert.ok(mounts.has(name));
    // Drain: preStop pause, then SIGTERM and up to SFN_SHUTDOWN_GRACE_S of draining, inside the grace period.
    const pause = Number(c.lifecycle.preStop.exec.command[1]);
    assert.ok(pause > 0);
    assert.ok(pod.terminationGracePeriodSeconds > pause + settings.shutdownGraceSeconds, 'the pod is killed before sfn finishes draining');
    assert.equal(dep.spec.strategy.rollingUpdate.maxUnavailable, 0);
  });

  it("the Service, PodDisruptionBudget, InferencePool and ServiceMonitor select the Deployment's pods on its port", () => {
    const labels = find('Deployment', 'sfn').spec.template.metadata.labels as Record<string, string>;
    const selects = (sel: Record<string, string>) => Object.entries(sel).every(([k, v]) => labels[k] === v);
    const svc = find('Service', 'sfn');
    assert.ok(selects(svc.spec.selector));
    assert.equal(svc.spec.ports[0].targetPort, 'http');
    assert.ok(selects(find('PodDisruptionBudget').spec.selector.matchLabels));
    const pool = find('InferencePool', 'sfn-pool');
    assert.ok(selects(pool.spec.selector.matchLabels));
    const port = find('Deployment', 'sfn').spec.template.spec.containers[0].ports[0].containerPort;
    assert.equal(pool.spec.targetPorts[0].number, port);
    const sm = find('ServiceMonitor');
    assert.ok(Object.entries(sm.spec.selector.matchLabels).every(([k, v]) => svc.metadata.labels[k] === v));
    assert.deepEqual([sm.spec.endpoints[0].port, sm.spec.endpoints[0].path], ['http', '/metrics']);
  });

  it('the HorizontalPodAutoscaler scales the Deployment on the queue metric that the adapter publishes', () => {
    const hpa = find('HorizontalPodAutoscaler', 'sfn');
    assert.deepEqual([hpa.spec.scaleTargetRef.kind, hpa.spec.scaleTargetRef.name], ['Deployment', 'sfn']);
    const adapter = fileDoc('prometheus/adapter-values.yaml');
    const rule = adapter.rules.custom.find((r: Obj) => r.name.as === hpa.spec.metrics[0].pods.metric.name);
    assert.ok(rule, 'prometheus-adapter publishes the metric the HPA reads');
    assert.deepEqual(promqlMetrics(rule.seriesQuery), ['vllm:num_requests_waiting']);
    assert.ok(exported.has('vllm:num_requests_waiting'));
    assert.ok(new RegExp(rule.name.matches).test('vllm:num_requests_waiting'));
  });

  it('the Gateway routes the OpenAI API to the InferencePool, the rest to the Service', () => {
    const route = find('HTTPRoute', 'sfn');
    const gateway = find('Gateway');
    assert.equal(route.spec.parentRefs[0].name, gateway.metadata.name);
    const refs = route.spec.rules.flatMap((r: Obj) => r.backendRefs);
    const pool = refs.find((b: Obj) => b.kind === 'InferencePool');
    assert.deepEqual([pool.group, pool.name], ['inference.networking.k8s.io', find('InferencePool').metadata.name]);
    assert.ok(refs.some((b: Obj) => !b.kind && b.name === find('Service').metadata.name));
    for (const o of objects.filter((d) => d.obj.kind === 'InferenceObjective')) assert.equal(o.obj.spec.poolRef.name, 'sfn-pool');
  });

  it('every alert expression parses as PromQL and names only metrics sfn exports', () => {
    const rules = find('PrometheusRule').spec.groups.flatMap((g: Obj) => g.rules) as Obj[];
    assert.ok(rules.length >= 5);
    for (const r of rules) {
      for (const m of promqlMetrics(r.expr)) assert.ok(exported.has(m) || EXTERNAL_METRICS.has(m), `alert ${r.alert}: sfn exports no metric "${m}"`);
      assert.ok(r.annotations?.summary, `alert ${r.alert} has a summary`);
    }
    const scrape = fileDoc('prometheus/prometheus.yml');
    assert.equal(scrape.scrape_configs[0].job_name, 'sfn', "the SfnDown alert's job label");
    assert.ok(rules.some((r) => r.expr.includes('job="sfn"')));
  });

  it('the Grafana dashboard parses, and every query parses as PromQL over metrics sfn exports', () => {
    const dash = JSON.parse(readFileSync(join(DEPLOY, 'grafana/sfn-dashboard.json'), 'utf8')) as Obj;
    assert.ok(dash.uid && dash.title && Array.isArray(dash.panels) && dash.panels.length >= 8);
    const ids = new Set<number>();
    const used = new Set<string>();
    for (const p of dash.panels) {
      assert.ok(!ids.has(p.id), `panel id ${p.id} repeats`);
      ids.add(p.id);
      assert.ok(p.targets.length > 0, `panel "${p.title}" has no query`);
      for (const t of p.targets) {
        // Dashboard variables stand in for label values: give them a value before parsing.
        for (const m of promqlMetrics(t.expr.replaceAll('$namespace', 'ns').replaceAll('$pod', 'pod'))) {
          assert.ok(exported.has(m), `panel "${p.title}": sfn exports no metric "${m}"`);
          used.add(m);
        }
      }
    }
    for (const v of dash.templating.list.filter((v: Obj) => v.type === 'query')) {
      const metric = /label_values\(([^{,)]+)/.exec(v.query)![1];
      assert.ok(exported.has(metric), `variable ${v.name}: ${metric}`);
    }
    for (const m of ['vllm:num_requests_waiting', 'vllm:time_to_first_token_seconds_bucket', 'sfn_http_requests_total', 'sfn_plugin_cache_bytes']) assert.ok(used.has(m), `the dashboard shows ${m}`);
  });
});
