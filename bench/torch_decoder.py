"""The decoder of transformers' Qwen2/Llama modeling code in plain torch ops (no transformers needed), reading the
checkpoint's safetensors: the PyTorch peer of `bench:freeze` and the replay of the Freeze fixtures. Eager attention
and float32 rotary tables, as transformers computes them on CPU (bitwise equal to transformers 4.44 on the fixtures).
"""
import json, math, os, struct
import numpy as np
import torch
import torch.nn.functional as F


def read_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        a, b = info['data_offsets']
        raw = data[a:b]
        if info['dtype'] == 'F32':
            arr = np.frombuffer(raw, dtype=np.float32)
        elif info['dtype'] == 'BF16':
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
        out[name] = torch.from_numpy(arr.copy()).reshape(info['shape'])
    return out


def read_checkpoint(model_dir, dtype=torch.float32):
    index = os.path.join(model_dir, 'model.safetensors.index.json')
    files = sorted(set(json.load(open(index))['weight_map'].values())) if os.path.exists(index) else ['model.safetensors']
    weights = {}
    for f in files:
        weights.update(read_safetensors(os.path.join(model_dir, f)))
    return {n: t.to(dtype) for n, t in weights.items()}


def inv_freq(cfg, D):
    """transformers' default rotary frequencies, with the llama3 rescaling when the config asks for it."""
    inv = 1.0 / (cfg.get('rope_theta', 10000.0) ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    rs = cfg.get('rope_scaling') or {}
    if rs.get('rope_type', rs.get('type')) == 'llama3':
        factor, lo, hi, old = rs['factor'], rs['low_freq_factor'], rs['high_freq_factor'], rs['original_max_position_embeddings']
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) * ~(wavelen > old / lo)
        inv = torch.where(medium, smoothed, scaled)
    return inv


class Decoder:
    def __init__(self, cfg, weights, S, dtype=torch.float32):
        self.cfg, self.w, self.dtype = cfg, weights, dtype
        self.H, self.L, self.nh = cfg['hidden_size'], cfg['num_hidden_layers'], cfg['num_attention_heads']
        self.nkv = cfg.get('num_key_value_heads', self.nh)
        self.D = cfg.get('head_dim', self.H // self.nh)
        self.eps = cfg['rms_norm_eps']
        self.tied = cfg.get('tie_word_embeddings', False)
        ang = (inv_freq(cfg, self.D)[:, None] @ torch.arange(S).float()[None, :]).T
        emb = torch.cat([ang, ang], -1)
        self.cos, self.sin = emb.cos().to(dtype), emb.sin().to(dtype)
        self.causal = torch.full((S, S), float('-inf'), dtype=dtype).triu(1)

    def rms(self, x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    @staticmethod
    def rot(x):
        x1, x2 = x.chunk(2, -1)
        return torch.cat([-x2, x1], -1)

    def lin(self, x, n):
        return F.linear(x, self.w[n + '.weight'], self.w.get(n + '.bias'))

    def logits(self, ids):
        B, S = ids.shape
        w, nh, nkv, D = self.w, self.nh, self.nkv, self.D
        h = F.embedding(ids, w['model.embed_tokens.weight'])
        for l in range(self.L):
            p = f'model.layers.{l}.'
            x = self.rms(h, w[p + 'input_layernorm.weight'])
            q = self.lin(x, p + 'self_attn.q_proj').view(B, S, nh, D).transpose(1, 2)
            k = self.lin(x, p + 'self_attn.k_proj').view(B, S, nkv, D).transpose(1, 2)
            v = self.lin(x, p + 'self_attn.v_proj').view(B, S, nkv, D).transpose(1, 2)
            q, k = q * self.cos + self.rot(q) * self.sin, k * self.cos + self.rot(k) * self.sin
            k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(D) + self.causal
            a = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(B, S, nh * D)
            h = h + self.lin(a, p + 'self_attn.o_proj')
            x = self.rms(h, w[p + 'post_attention_layernorm.weight'])
            h = h + self.lin(F.silu(self.lin(x, p + 'mlp.gate_proj')) * self.lin(x, p + 'mlp.up_proj'), p + 'mlp.down_proj')
        h = self.rms(h, w['model.norm.weight'])
        return F.linear(h, w['model.embed_tokens.weight'] if self.tied else w['lm_head.weight'])

    def loss(self, ids):
        """transformers' `model(ids, labels=ids).loss`: mean next-token cross-entropy."""
        logits = self.logits(ids)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
