"""Replays a Freeze fixture (test/fixtures/freeze/<case>) with torch: the gradient and three AdamW steps in float32
(bitwise what transformers computed) and in float64, and reports each one's distance to the fixture; with an sfn
result (`sfn freeze ... --out FILE`) it reports that one's too. It shows what the acceptance bound means: where an
element's gradient is zero up to float32 rounding, AdamW moves it by a full lr in the direction rounding picks, so
on L_llama3_tied_oproj_norms_embed even torch in float64 misses 1e-5 after three steps.

usage: /usr/bin/python3 bench/freeze_replay.py MODEL_DIR FIXTURE_DIR [SFN_STEP3.safetensors]  -> JSON
"""
import json, os, sys
import torch
from torch_decoder import Decoder, read_checkpoint, read_safetensors

model_dir, fixture = sys.argv[1], sys.argv[2]
cfg = json.load(open(os.path.join(model_dir, 'config.json')))
o = json.load(open(os.path.join(fixture, 'oracle.json')))
want = read_safetensors(os.path.join(fixture, 'step3.safetensors'))
ids = torch.tensor([o['ids']])


def distance(params, losses=None):
    diffs = [(params[n].double() - want[n].double()).abs() for n in o['trainable_names']]
    out = {'step3_max_abs': max(d.max().item() for d in diffs), 'step3_elements_over_1e-5': sum(int((d > 1e-5).sum()) for d in diffs),
           'elements': sum(d.numel() for d in diffs)}
    if losses is not None:
        out['losses'] = losses
        out['loss_max_abs'] = max(abs(a - b) for a, b in zip(losses, o['losses']))
    return out


report = {'fixture': os.path.basename(os.path.normpath(fixture)), 'fixture_losses': o['losses']}
for name, dtype in (('torch_float32', torch.float32), ('torch_float64', torch.float64)):
    weights = read_checkpoint(model_dir, dtype)
    params = [weights[n].requires_grad_(True) for n in o['trainable_names']]
    model = Decoder(cfg, weights, ids.shape[1], dtype)
    opt = torch.optim.AdamW(params, lr=o['lr'], weight_decay=o['wd'], betas=(0.9, 0.999), eps=1e-8)
    losses = []
    for _ in range(o['steps']):
        opt.zero_grad()
        model.loss(ids).backward()
        opt.step()
        with torch.no_grad():
            losses.append(model.loss(ids).item())
    report[name] = distance({n: weights[n].detach() for n in o['trainable_names']}, losses)
if len(sys.argv) > 3:
    report['sfn'] = distance(read_safetensors(sys.argv[3]))
print(json.dumps(report, indent=1))
