"""PyTorch peer for `npm run bench:freeze`: the same decoder (Qwen2/Llama layout, read from the same safetensors
files), the same batch shapes and the same trainable tensors; times forward + backward of the mean next-token
cross-entropy. Written from transformers' modeling code with plain torch ops (no transformers needed).

usage: python3 freeze_torch.py MODEL_DIR KINDS(comma) BATCH SEQ STEPS THREADS  -> one JSON line
"""
import json, math, os, struct, sys, time
import numpy as np
import torch
import torch.nn.functional as F

model_dir, kinds, B, S, steps, threads = sys.argv[1], sys.argv[2].split(','), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(threads)
cfg = json.load(open(os.path.join(model_dir, 'config.json')))

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

weights = {}
index = os.path.join(model_dir, 'model.safetensors.index.json')
files = sorted(set(json.load(open(index))['weight_map'].values())) if os.path.exists(index) else ['model.safetensors']
for f in files:
    weights.update(read_safetensors(os.path.join(model_dir, f)))

SETS = {'o_proj': ['o_proj'], 'norms': ['input_layernorm', 'post_attention_layernorm', 'model.norm'], 'embed': ['embed_tokens'], 'head': ['lm_head'],
        'qkv': ['q_proj', 'k_proj', 'v_proj'], 'mlp': ['gate_proj', 'up_proj', 'down_proj'], 'all': ['']}
pats = [p for k in kinds for p in SETS[k]]
tied = cfg.get('tie_word_embeddings', False)
if tied and 'lm_head' in pats:
    pats.append('embed_tokens')
for n, t in weights.items():
    t.requires_grad_(any(p in n for p in pats))
trainable = [t for t in weights.values() if t.requires_grad]

H, L, nh = cfg['hidden_size'], cfg['num_hidden_layers'], cfg['num_attention_heads']
nkv = cfg.get('num_key_value_heads', nh)
D = cfg.get('head_dim', H // nh)
eps = cfg['rms_norm_eps']
inv = 1.0 / (cfg.get('rope_theta', 10000.0) ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
ang = torch.arange(S, dtype=torch.float32)[:, None] * inv[None, :]
cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
causal = torch.full((S, S), float('-inf')).triu(1)

def rms(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

def rot(x):
    x1, x2 = x.chunk(2, -1)
    return torch.cat([-x2, x1], -1)

def lin(x, n, bias=True):
    b = weights.get(n + '.bias')
    return F.linear(x, weights[n + '.weight'], b if bias else None)

def forward(ids):
    h = F.embedding(ids, weights['model.embed_tokens.weight'])
    for l in range(L):
        p = f'model.layers.{l}.'
        x = rms(h, weights[p + 'input_layernorm.weight'])
        q = lin(x, p + 'self_attn.q_proj').view(B, S, nh, D).transpose(1, 2)
        k = lin(x, p + 'self_attn.k_proj').view(B, S, nkv, D).transpose(1, 2)
        v = lin(x, p + 'self_attn.v_proj').view(B, S, nkv, D).transpose(1, 2)
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
        # Eager attention, as transformers' default on CPU (torch 1.13 has no scaled_dot_product_attention)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(D) + causal
        a = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(B, S, nh * D)
        h = h + lin(a, p + 'self_attn.o_proj')
        x = rms(h, weights[p + 'post_attention_layernorm.weight'])
        h = h + lin(F.silu(lin(x, p + 'mlp.gate_proj')) * lin(x, p + 'mlp.up_proj'), p + 'mlp.down_proj')
    h = rms(h, weights['model.norm.weight'])
    return F.linear(h, weights['model.embed_tokens.weight'] if tied else weights['lm_head.weight'])

g = torch.Generator().manual_seed(0)
ids = torch.randint(3, cfg['vocab_size'], (B, S), generator=g)
times = []
for i in range(steps + 1):
    t0 = time.perf_counter()
    logits = forward(ids)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    for t in trainable:
        t.grad = None
    loss.backward()
    if i > 0:
        times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({'torch': torch.__version__, 'median_s': times[len(times) // 2], 'tokens_per_s': B * S / times[len(times) // 2], 'trainable': sum(t.numel() for t in trainable)}))
