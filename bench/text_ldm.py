"""Does a text LDM do what its prompts say? Class fidelity and attribute control on MNIST.

    VD_DATA_ROOT=../shared/datasets python bench/text_ldm.py --ldm bench/runs/mnist_text/latest --per-digit 100

Class fidelity: for each digit d and each of three phrasings (``seven``, ``7``, ``the digit
seven``), ``per_digit`` DDIM-50 samples (η and guidance: the recipe's) are classified by
bench/classifier.py's CNN, which no vd model shares; the agreement is the fraction judged d
(target ≥ 97% for every phrasing).

Attribute control: for each digit and each pair of opposite words (``bold``/``thin``,
``leaning right``/``leaning left``, ``large``/``small``), ``per_attribute`` samples of
``a WORD seven`` are measured with the caption module's own measurements
(``Captioner.measure``: stroke thickness, slant, height), the same functions that wrote the
training captions. Reported: the median per word and digit, and the fraction of the ten digits
for which the median under the first word exceeds the median under the second (target: 10/10
for each pair).

Appends one JSON line to bench/results.jsonl and writes bench/runs/text_prompts.png (a row per
prompt of the first samples).
"""

import argparse
import time

import torch
from common import RUNS, judge, load_judge, record

from vdcli.checkpoint import load_checkpoint
from vdcli.runs import find_checkpoint
from vdcli.tasks.ldm import generate, load_ldm, save_class_grid

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PHRASINGS = {"word": "{word}", "numeral": "{digit}", "the digit": "the digit {word}"}
# (word that should give more, word that should give less, the measurement that tells)
PAIRS = [("bold", "thin", "thickness"), ("leaning right", "leaning left", "slant"), ("large", "small", "size")]  # what the captions measured


def draw(ldm, prompts: list[str], seed: int, batch: int = 250) -> torch.Tensor:
    """DDIM-50 samples for ``prompts`` (one image each), with the recipe's eta and guidance."""
    g = torch.Generator().manual_seed(seed)
    d = ldm.defaults
    out = [generate(ldm, prompts[i : i + batch], sampler="ddim", steps=50, eta=d.eta, guidance=d.guidance, generator=g)[0]
           for i in range(0, len(prompts), batch)]
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ldm", required=True, help="a text LDM checkpoint or run folder")
    parser.add_argument("--per-digit", type=int, default=100, help="samples per digit and phrasing (class fidelity)")
    parser.add_argument("--per-attribute", type=int, default=50, help="samples per digit and word (attribute control)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    path, _ = find_checkpoint(args.ldm, "ldm")
    ckpt = load_checkpoint(path, "ldm")
    ldm = load_ldm(ckpt, torch.device("cpu"))
    from vdcli.tasks.clip import captioner_from

    captioner = captioner_from(ckpt, prefix="clip")
    model = load_judge()
    row = {"bench": "text_ldm", "ldm": str(path), "per_digit": args.per_digit, "per_attribute": args.per_attribute,
              "sampler": "ddim-50", "eta": ldm.defaults.eta, "guidance": ldm.defaults.guidance}
    shown, names = [], []

    t0 = time.perf_counter()
    fidelity = {}
    for name, pattern in PHRASINGS.items():
        prompts = [pattern.format(word=WORDS[d], digit=d) for d in range(10) for _ in range(args.per_digit)]
        samples = draw(ldm, prompts, args.seed)
        asked = torch.arange(10).repeat_interleave(args.per_digit)
        judged = judge(model, samples)[0].argmax(1)
        per_digit = [(judged[asked == d] == d).float().mean().item() for d in range(10)]
        fidelity[name] = {"agreement": (judged == asked).float().mean().item(), "per_digit": per_digit}
        print(f"class fidelity, prompts like '{pattern.format(word='seven', digit=7)}': "
              f"{fidelity[name]['agreement']:.1%} agree with the judge "
              f"(worst digit {min(range(10), key=per_digit.__getitem__)}: {min(per_digit):.0%})", flush=True)
        for d in range(10):
            if name == "the digit":
                shown.append(samples[d * args.per_digit : d * args.per_digit + 10])
                names.append(prompts[d * args.per_digit])
    row["fidelity"] = fidelity

    control = {}
    for more, less, key in PAIRS:
        medians = {more: [], less: []}
        for word in (more, less):
            prompts = [f"a {word} {WORDS[d]}" for d in range(10) for _ in range(args.per_attribute)]
            samples = draw(ldm, prompts, args.seed + 1)
            values = captioner.measure(samples)[key]
            for d in range(10):
                medians[word].append(values[d * args.per_attribute : (d + 1) * args.per_attribute].float().median().item())
            shown.append(samples[7 * args.per_attribute : 7 * args.per_attribute + 10])
            names.append(prompts[7 * args.per_attribute])
        holds = [m > l for m, l in zip(medians[more], medians[less])]
        control[f"{more} > {less}"] = {"measure": key, "medians": medians, "digits_where_order_holds": sum(holds)}
        print(f"{key}: median '{more}' {sum(medians[more]) / 10:.3f} vs '{less}' {sum(medians[less]) / 10:.3f} "
              f"(mean over digits); order holds for {sum(holds)}/10 digits", flush=True)
    row["attribute_control"] = control
    row["seconds"] = round(time.perf_counter() - t0, 1)

    save_class_grid(torch.cat(shown), names, 10, RUNS / "text_prompts.png")
    record(row)
    print(f"wrote {RUNS / 'text_prompts.png'} and a line in bench/results.jsonl ({row['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
