"""Does a ControlNet make samples follow their control map, and keep the asked class?

    VD_DATA_ROOT=../shared/datasets python bench/controlnet.py --controlnet bench/runs/mnist_controlnet/latest --controls 100

For ``controls`` MNIST test digits (a fixed draw) the ControlNet's own map (edges, scribble or
depth) is computed; each map conditions one sample of three classes: the digit's own class and two
other classes (a fixed draw). The control of every sample is computed again and compared with its
map: F1 with a 1-pixel tolerance for edges and scribbles (a pixel counts as matched when the other
map has one within its 3x3 neighbourhood), Pearson correlation for depth. Reported:
- fidelity per condition (own class, other class), at control scale 1;
- floor: the base model alone (scale 0) with the same noise; ceiling: the map of the test image
  after a VAE round trip, against its own map;
- class agreement (bench/classifier.py's judge) with the asked class: the base model's, and the
  controlled model's when the class is the map's own and when it is another ("conflict");
- fidelity at control scales 0, 0.25, 0.5, 0.75, 1 (own class): it should rise with the scale.
Appends a JSON line to bench/results.jsonl and writes bench/runs/controlnet_grid.png (per row: a map,
then samples of every digit).
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F
from common import RUNS, data_root, judge, load_judge, record

from vdcli import images
from vdcli.checkpoint import load_checkpoint
from vdcli.controls import control_maps
from vdcli.data import load_split, to_float
from vdcli.recipe import DataConfig
from vdcli.runs import find_checkpoint
from vdcli.tasks.controlnet import load_controlled
from vdcli.tasks.ldm import generate


def fidelity(kind: str, made: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """Per image: F1 with 1-pixel tolerance (edges, scribble) or correlation (depth) of two uint8 [N, 1, H, W] maps."""
    if kind == "depth":
        a, b = made.flatten(1).float(), wanted.flatten(1).float()
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-8)
    m, w = (made > 127).float(), (wanted > 127).float()
    near_w = F.max_pool2d(w, 3, 1, 1)
    near_m = F.max_pool2d(m, 3, 1, 1)
    precision = (m * near_w).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1)
    recall = (w * near_m).flatten(1).sum(1) / w.flatten(1).sum(1).clamp(min=1)
    return 2 * precision * recall / (precision + recall).clamp(min=1e-8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--controlnet", required=True)
    parser.add_argument("--controls", type=int, default=100)
    parser.add_argument("--batch", type=int, default=300)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    ckpt = load_checkpoint(find_checkpoint(args.controlnet, "controlnet")[0], "controlnet")
    model = load_controlled(ckpt, torch.device("cpu"))
    ldm, kind = model.ldm, model.control
    d = ldm.defaults
    options = {"sampler": d.sampler, "steps": d.steps, "eta": d.eta, "guidance": d.guidance}
    test = load_split(DataConfig(name="mnist", image_size=model.image_size), "test", data_root())
    judge_net = load_judge()

    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(test), generator=g)[: args.controls]
    maps = control_maps(test.images[pick], kind)  # (K, 1, H, W)
    own = test.labels[pick]
    others = torch.stack([(own + torch.randint(1, 10, (len(own),), generator=g)) % 10 for _ in range(2)], 1)  # (K, 2), never own

    def run(labels: torch.Tensor, hints: torch.Tensor, scale: float) -> torch.Tensor:
        out = []
        for i in range(0, len(labels), args.batch):
            steered = model.steered(hints[i : i + args.batch], scale)
            asked = [ldm.conditioning.of_class(int(c)) for c in labels[i : i + args.batch]]  # a class, or its name as the prompt
            out.append(generate(steered, asked, generator=torch.Generator().manual_seed(1 + i), **options)[0])
        return torch.cat(out)

    t0 = time.perf_counter()
    row = {"bench": "controlnet", "controlnet": str(args.controlnet), "control": kind, "controls": args.controls, **options}
    labels = torch.cat([own, others[:, 0], others[:, 1]])
    hints = maps.repeat(3, 1, 1, 1)
    controlled = run(labels, hints, 1.0)
    base = run(labels, hints, 0.0)
    score_c, score_b = fidelity(kind, control_maps(controlled, kind), hints), fidelity(kind, control_maps(base, kind), hints)
    roundtrip = ldm.decode(ldm.encode(to_float(test.images[pick])))
    ceiling = fidelity(kind, control_maps(roundtrip, kind), maps)
    agree_c = (judge(judge_net, controlled)[0].argmax(1) == labels).float()
    agree_b = (judge(judge_net, base)[0].argmax(1) == labels).float()
    K = args.controls
    row["fidelity"] = {"own class": round(score_c[:K].mean().item(), 4), "other class": round(score_c[K:].mean().item(), 4),
                       "floor (base model)": round(score_b.mean().item(), 4), "ceiling (VAE round trip)": round(ceiling.mean().item(), 4)}
    row["agreement"] = {"base model": round(agree_b.mean().item(), 4), "controlled, own class": round(agree_c[:K].mean().item(), 4),
                        "controlled, other class (conflict)": round(agree_c[K:].mean().item(), 4)}
    by_scale, agree_by_scale = {}, {}
    for scale in (0.0, 0.25, 0.5, 0.75, 1.0):
        made = controlled[:K] if scale == 1.0 else base[:K] if scale == 0.0 else run(own, maps, scale)
        by_scale[str(scale)] = round(fidelity(kind, control_maps(made, kind), maps).mean().item(), 4)
        agree_by_scale[str(scale)] = round((judge(judge_net, made)[0].argmax(1) == own).float().mean().item(), 4)
    row["fidelity_by_scale"] = by_scale
    row["agreement_by_scale"] = agree_by_scale
    row["seconds"] = round(time.perf_counter() - t0, 1)

    shown = 4  # a picture: per row a map, then the controlled model's sample of every digit
    digits = torch.arange(10)
    rows = []
    for k in range(shown):
        made = run(digits, maps[k : k + 1].expand(10, -1, -1, -1), 1.0)
        rows.append(torch.cat([maps[k : k + 1].expand(-1, made.shape[1], -1, -1), made]))
    picture = images.grid(torch.cat(rows), nrow=11)
    names = [f"{kind} of a {int(own[k])}" for k in range(shown)]
    labelled = images.with_row_labels(picture, names, picture.height // shown)
    labelled = images.with_column_labels(labelled, ["the map"] + [f"asked: {d}" for d in range(10)], picture.width // 11,
                                         left=labelled.width - picture.width)
    images.save(labelled, RUNS / "controlnet_grid.png")
    print(json.dumps(record(row), indent=2))


if __name__ == "__main__":
    main()
