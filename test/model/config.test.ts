import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ropeInvFreq, specFromConfig } from '../../src/model/config.ts';
import { bf16, f16 } from '../helpers/floats.ts';
import { fromFloat32, toFloat32 } from '../../src/model/dtype.ts';
import { expectedParams, formatName, parseLayerRange, parseName } from '../../src/model/names.ts';

const qwen = { model_type: 'qwen2', hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 128, vocab_size: 100 };

describe('config', () => {
  it('reads Qwen2 with transformers defaults: q/k/v bias, untied head', () => {
    const s = specFromConfig(qwen);
    assert.equal(s.headDim, 16);
    assert.equal(s.qkvBias, true);
    assert.equal(s.oBias, false);
    assert.equal(s.tieWordEmbeddings, false);
    assert.equal(s.rope.theta, 10000);
  });
  it('reads Llama biases from attention_bias / mlp_bias and head_dim when given', () => {
    const s = specFromConfig({ ...qwen, model_type: 'llama', attention_bias: true, head_dim: 32 });
    assert.equal(s.qkvBias && s.oBias, true);
    assert.equal(s.mlpBias, false);
    assert.equal(s.headDim, 32);
  });
  it('takes eos_token_id as an int or a list', () => {
    assert.deepEqual(specFromConfig({ ...qwen, eos_token_id: 5 }).eosTokenIds, [5]);
    assert.deepEqual(specFromConfig({ ...qwen, eos_token_id: [5, 6] }).eosTokenIds, [5, 6]);
  });
  it('refuses what it cannot run, naming the key', () => {
    assert.throws(() => specFromConfig({ ...qwen, model_type: 'gpt2' }), /model_type/);
    assert.throws(() => specFromConfig({ ...qwen, num_key_value_heads: 3 }), /multiple/);
    assert.throws(() => specFromConfig({ ...qwen, hidden_size: -1 }), /hidden_size/);
    assert.throws(() => specFromConfig({ ...qwen, rope_scaling: { rope_type: 'yarn', factor: 4 } }), /yarn/);
    assert.throws(() => specFromConfig({ ...qwen, rope_scaling: { rope_type: 'llama3', factor: 8 } }), /low_freq_factor/);
    assert.throws(() => specFromConfig({ ...qwen, hidden_act: 'gelu' }), /gelu/);
  });
  it('computes llama3-scaled inverse frequencies in all three bands', () => {
    const s = specFromConfig({
      ...qwen,
      model_type: 'llama',
      rope_theta: 500000,
      rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 32 },
    });
    const f = ropeInvFreq(s);
    const plain = Array.from({ length: 8 }, (_, i) => 1 / 500000 ** ((2 * i) / 16));
    // wavelen < 8: unchanged; > 32: divided by 8; between: smoothed.
    plain.forEach((p, i) => {
      const wl = (2 * Math.PI) / p;
      if (wl < 8) assert.ok(Math.abs(f[i] - p) / p < 1e-6);
      else if (wl > 32) assert.ok(Math.abs(f[i] - p / 8) / p < 1e-6);
      else assert.ok(f[i] < p && f[i] > p / 8);
    });
  });
});

describe('parameter names', () => {
  it('round-trips every expected parameter', () => {
    for (const name of expectedParams(specFromConfig(qwen)).keys()) assert.equal(formatName(parseName(name)!), name);
  });
  it('rejects names outside the layout', () => {
    for (const n of ['model.layers.01.mlp.up_proj.weight', 'model.layers.1.mlp.o_proj.weight', 'lm_head', 'model.layers.x.input_layernorm.weight']) assert.equal(parseName(n), undefined, n);
  });
  it('lists lm_head only for untied models', () => {
    assert.ok(expectedParams(specFromConfig(qwen)).has('lm_head.weight'));
    assert.ok(!expectedParams(specFromConfig({ ...qwen, tie_word_embeddings: true })).has('lm_head.weight'));
  });
  it('parses layer ranges inclusively and checks them', () => {
    assert.deepEqual(parseLayerRange('1-3', 4), [1, 2, 3]);
    assert.deepEqual(parseLayerRange('2', 4), [2]);
    assert.equal(parseLayerRange('all', 4).length, 4);
    assert.throws(() => parseLayerRange('3-1', 4));
    assert.throws(() => parseLayerRange('0-4', 4));
    assert.throws(() => parseLayerRange('a-b', 4));
  });
});

describe('dtypes', () => {
  it('converts BF16 and F16 exactly for representable values, and rounds to nearest even', () => {
    const vals = new Float32Array([0, -0, 1, -2.5, 65504, 6.103515625e-5, 2 ** -24, Infinity, -Infinity]);
    assert.deepEqual(Array.from(toFloat32(fromFloat32(vals, 'F16'), 'F16')), Array.from(vals));
    assert.deepEqual(Array.from(toFloat32(fromFloat32(vals, 'BF16'), 'BF16')).slice(0, 4), [0, -0, 1, -2.5]);
    assert.equal(bf16(1 + 2 ** -8), 1); // tie -> even
    assert.equal(bf16(1 + 3 * 2 ** -8), 1 + 2 ** -6);
    assert.equal(f16(1 + 2 ** -11), 1);
    assert.ok(Number.isNaN(toFloat32(fromFloat32(new Float32Array([NaN]), 'BF16'), 'BF16')[0]));
  });
});
