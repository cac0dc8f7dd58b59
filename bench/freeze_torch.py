"""PyTorch peer for `npm run bench:freeze`: the same decoder (Qwen2/Llama layout, read from the same safetensors
files), the same batch shapes and the same trainable tensors; times forward + backward of the mean next-token
cross-entropy.

usage: python3 freeze_torch.py MODEL_DIR KINDS(comma) BATCH SEQ STEPS THREADS  -> one JSON line
"""
import json, os, sys, time
import torch
from torch_decoder import Decoder, read_checkpoint

model_dir, kinds, B, S, steps, threads = sys.argv[1], sys.argv[2].split(','), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(threads)
cfg = json.load(open(os.path.join(model_dir, 'config.json')))
weights = read_checkpoint(model_dir)

SETS = {'o_proj': ['o_proj'], 'norms': ['input_layernorm', 'post_attention_layernorm', 'model.norm'], 'embed': ['embed_tokens'], 'head': ['lm_head'],
        'qkv': ['q_proj', 'k_proj', 'v_proj'], 'mlp': ['gate_proj', 'up_proj', 'down_proj'], 'all': ['']}
pats = [p for k in kinds for p in SETS[k]]
if cfg.get('tie_word_embeddings', False) and 'lm_head' in pats:
    pats.append('embed_tokens')
for n, t in weights.items():
    t.requires_grad_(any(p in n for p in pats))
trainable = [t for t in weights.values() if t.requires_grad]
model = Decoder(cfg, weights, S)

g = torch.Generator().manual_seed(0)
ids = torch.randint(3, cfg['vocab_size'], (B, S), generator=g)
times = []
for i in range(steps + 1):
    t0 = time.perf_counter()
    loss = model.loss(ids)
    for t in trainable:
        t.grad = None
    loss.backward()
    if i > 0:
        times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({'torch': torch.__version__, 'median_s': times[len(times) // 2], 'tokens_per_s': B * S / times[len(times) // 2], 'trainable': sum(t.numel() for t in trainable)}))
