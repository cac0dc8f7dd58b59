/**
 * JSON schemas for the Gateway API Inference Extension objects that deploy/gateway uses, written from the
 * extension's API reference (InferencePool inference.networking.k8s.io/v1, InferenceObjective
 * inference.networking.x-k8s.io/v1alpha2): no npm package ships them. Stricter than the CRDs in one way:
 * unknown fields in spec are errors (the API server would prune them silently).
 */
const name = { type: 'string', minLength: 1, maxLength: 253 };
const dnsLabel = { type: 'string', pattern: '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$', maxLength: 63 };
const group = { type: 'string', maxLength: 253, pattern: '^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$' };
const kind = { type: 'string', minLength: 1, maxLength: 63, pattern: '^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$' };
const port = { type: 'integer', minimum: 1, maximum: 65535 };
const labelValue = { type: 'string', maxLength: 63, pattern: '^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$' };
const metadata = {
  type: 'object',
  required: ['name'],
  properties: { name: dnsLabel, namespace: dnsLabel, labels: { type: 'object', additionalProperties: labelValue }, annotations: { type: 'object', additionalProperties: { type: 'string' } } },
};

const object = (apiVersion: string, kindName: string, spec: object) => ({
  type: 'object',
  required: ['apiVersion', 'kind', 'metadata', 'spec'],
  additionalProperties: false,
  properties: { apiVersion: { const: apiVersion }, kind: { const: kindName }, metadata, spec },
});

export const inferenceExtensionSchemas: Record<string, object> = {
  'inference.networking.k8s.io/v1/InferencePool': object('inference.networking.k8s.io/v1', 'InferencePool', {
    type: 'object',
    required: ['selector', 'targetPorts', 'extensionRef'],
    additionalProperties: false,
    properties: {
      selector: {
        type: 'object',
        required: ['matchLabels'],
        additionalProperties: false,
        properties: { matchLabels: { type: 'object', minProperties: 1, additionalProperties: labelValue } },
      },
      targetPorts: { type: 'array', minItems: 1, maxItems: 1, items: { type: 'object', required: ['number'], additionalProperties: false, properties: { number: port } } },
      extensionRef: {
        type: 'object',
        required: ['name'],
        additionalProperties: false,
        properties: { group, kind, name, portNumber: port, failureMode: { enum: ['FailOpen', 'FailClose'] } },
      },
    },
  }),
  'inference.networking.x-k8s.io/v1alpha2/InferenceObjective': object('inference.networking.x-k8s.io/v1alpha2', 'InferenceObjective', {
    type: 'object',
    required: ['poolRef'],
    additionalProperties: false,
    properties: {
      poolRef: { type: 'object', required: ['name'], additionalProperties: false, properties: { group, kind, name } },
      priority: { type: 'integer' },
    },
  }),
};
