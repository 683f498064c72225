"""The latent diffusion commands: ``vd train-ldm``, ``vd sample`` (and image-to-image), ``vd inpaint``, ``vd diffuse``."""

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from vdcli.cli.app import command, duration, say, train_command
from vdcli.cli.options import (ControlMap, ControlNetRun, ControlScale, ControlType, DataRoot, Device, check_choice, check_control,
                               check_data_root, check_device, check_fractions, check_input, check_items, check_out, check_steps)
from vdcli.errors import VdError


@train_command("ldm", "train-ldm", """Train a latent diffusion model, conditioned on classes, prompts or nothing (and its VAE, and a text model's CLIP, first if the recipe names none).

    Example: [bold]vd train-ldm recipes/mnist_latent.yaml[/]  then  [bold]vd sample --steps 50 --sampler ddim[/]

    Writes runs/<recipe>/<time>/: checkpoint.safetensors (denoiser, EMA, and its VAE: sample needs
    nothing else), latents.safetensors (the cached encodings), samples_<step>.png (one row per
    class, fixed seed), forward_process.png and schedule.png (what the noise does to a test
    image, as vd diffuse draws them), loss.png, and vae/ when the VAE was trained here.
    """)
def _report_ldm(summary) -> None:
    say(
        f"[bold]denoiser trained: {summary.steps} steps in {duration(summary.seconds)}, final loss {summary.loss:.4f}[/] ({summary.vae_note})",
        f"wrote {summary.run.dir}/: " + ", ".join(p.name for p in summary.files if p.exists()),
        f"next: vd sample --checkpoint {summary.run.dir} {summary.next_hint}",
    )


def open_ldm(checkpoint, controlnet, control, control_type, control_scale, where, data_root, compile=False):
    """The model the options name, loaded once for every generating command: (the LDM to sample,
    the ControlNet model or None, its control maps, the checkpoint, how it was found)."""
    from vdcli.checkpoint import load_checkpoint
    from vdcli.runs import find_checkpoint
    from vdcli.tasks.ldm import load_ldm

    if controlnet is not None:
        from vdcli.cli.control import load_control_maps, steer

        ckpt, controlled, found = steer(controlnet, where, compile)
        maps = load_control_maps(controlled, control, control_type, data_root)
        return controlled.steered(maps[0], control_scale), controlled, maps, ckpt, found
    path, found = find_checkpoint(checkpoint, "ldm")
    ckpt = load_checkpoint(path, "ldm")
    return load_ldm(ckpt, where, compile=compile), None, [], ckpt, found


SWEEP_KEYS = ("guidance", "steps", "sampler", "eta", "seed", "strength", "control-scale", "prompt")
# the sample options --from restores, by their names in the PNG's parameters
RESTORED = {"checkpoint": "checkpoint", "sampler": "sampler", "spacing": "spacing", "steps": "steps", "eta": "eta",
            "guidance": "guidance", "class": "class_", "prompt": "prompt", "negative_prompt": "negative_prompt", "n": "n",
            "batch_size": "batch_size", "init": "init", "strength": "strength", "controlnet": "controlnet",
            "control": "control", "control_type": "control_type", "control_scale": "control_scale", "sweep": "sweep",
            "seed": "seed"}



@command("sample")
def sample_cmd(
    ctx: typer.Context,
    checkpoint: Annotated[Optional[str], typer.Option(help="An LDM checkpoint or run folder (default: the newest LDM run).")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="ddim, dpmpp-2m (DPM-Solver++(2M): good in 10-20 steps), ddpm, or k-diffusion's euler, euler-a (Euler ancestral), heun, dpmpp-2m-sde (default: the recipe's).")] = None,
    spacing: Annotated[Optional[str], typer.Option(help="Where the steps go: leading, linspace, trailing or karras (rho = 7; with dpmpp-2m that is 'DPM++ 2M Karras'). Default: the recipe's sample.spacing, else the sampler's own.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Denoising steps (default: the recipe's for DDIM and DPM-Solver++, all T for DDPM).", min=1)] = None,
    eta: Annotated[Optional[float], typer.Option(help="DDIM noise: 0 is deterministic, 1 is DDPM-like.", min=0.0)] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Guidance scale w, 1 turns it off (default: the recipe's): classifier-free for a class or prompt; for unconditional samples, autoguidance against the model's early weights when its recipe kept them (train.guide_at).", min=0.0)] = None,
    class_: Annotated[Optional[str], typer.Option("--class", help="Class index or name, several as 3,7, 'all' (the default), or 'none' (unconditional). A model trained with conditioning: none takes no --class; on a text model --class 7 is the prompt '7'.")] = None,
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", help="A text model's prompt, e.g. 'a bold seven'; repeat for one row per prompt; '' is unconditional.")] = None,
    negative_prompt: Annotated[Optional[str], typer.Option("--negative-prompt", help="What guidance steers away from (text models; default: the empty prompt).")] = None,
    n: Annotated[Optional[int], typer.Option("--n", help="Images per class or prompt (default 8; 1 with --sweep).", min=1)] = None,
    batch_size: Annotated[int, typer.Option(help="Images denoised at once.", min=1)] = 256,
    trajectory: Annotated[bool, typer.Option("--trajectory", help="Also write trajectory.gif: the predicted x0 at every step.")] = False,
    init: Annotated[Optional[str], typer.Option("--init", help="Image-to-image (SDEdit): start from this image, a file or a dataset reference such as mnist:test:7, instead of pure noise.")] = None,
    strength: Annotated[Optional[str], typer.Option(help="With --init: how much of the image to make anew, 0 (kept) to 1 (pure noise, plain sampling); several as 0.3,0.5,0.7,0.9, a column each (default 0.8).")] = None,
    controlnet: ControlNetRun = None,
    control: ControlMap = None,
    control_type: ControlType = None,
    control_scale: ControlScale = 1.0,
    sweep: Annotated[Optional[list[str]], typer.Option("--sweep", help="KEY=V1,V2,...: a grid in which only KEY changes, every cell from the same noise; a second --sweep makes the columns. Keys: " + ", ".join(SWEEP_KEYS) + ". Writes sweep.png.")] = None,
    from_: Annotated[Optional[Path], typer.Option("--from", help="Re-create a PNG vd sample wrote, from the parameters it carries (bit for bit on the same CPU, torch and threads); options given as well override the stored ones.")] = None,
    seed: Annotated[int, typer.Option(help="Same seed and options, same images.", min=0, max=2**32 - 1)] = 0,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the denoiser first: a compile of a minute or more, then faster sampling (1.3x on a CPU, bench/RESULTS.md); for thousands of images. Images then agree with uncompiled ones to float tolerance, not bit for bit.")] = False,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/sample"),
    device: Device = "auto",
    data_root: DataRoot = None,
) -> None:
    """Generate images with the DDIM, DPM-Solver++(2M) or DDPM sampler from a trained latent diffusion model.

    Example: [bold]vd sample --steps 50 --sampler ddim --class seven --n 16[/]
    A text model: [bold]vd sample --prompt "a bold seven" --prompt "a thin 2 leaning left" --n 8[/]
    Image-to-image: [bold]vd sample --init mnist:test:0 --class 3 --strength 0.3,0.5,0.7,0.9[/]
    Following a control map: [bold]vd sample --controlnet runs/mnist_controlnet/latest --control mnist:test:7 --class all --n 1[/]
    A sweep: [bold]vd sample --class 7 --sweep guidance=1,2,3,5,8 --sweep steps=5,10,20,50[/]
    Again: [bold]vd sample --from out/sample/images/seven_3.png[/]

    Writes grid.png (one row per class or prompt; with --init the input, then a column per
    strength; with --control a row per map: the map, then every class), every image under
    images/, and with --trajectory an animated GIF of the denoising. With --sweep, sweep.png: one
    axis is a column per value and a row per image; two are rows by columns, one image each.
    Every PNG carries its parameters (checkpoint and its hash, class or prompt, seed, sampler, ...)
    in text chunks, which --from reads.
    """
    params = {k: v for k, v in locals().items() if k != "ctx"}
    given = {k for k in params if getattr(ctx.get_parameter_source(k), "name", None) == "COMMANDLINE"}  # typed, not defaulted
    if from_ is not None:
        params = _stored_options(from_, params, given)
    _sample(given=given, **params)


def _stored_options(image: Path, params: dict, given: set[str]) -> dict:
    """The options of the vd sample that wrote ``image``, under those given on this command line."""
    from vdcli.images import read_meta

    if not image.is_file():
        raise VdError(f"--from {image}: no such file")
    try:
        meta = read_meta(image)
    except Exception as e:  # not an image, or text chunks that are not vd's JSON
        raise VdError(f"--from {image}: cannot read vd parameters from it ({e.__class__.__name__})") from None
    if "made_by" not in meta:
        raise VdError(f"--from {image}: this PNG carries no vd parameters (only images vd writes do)")
    if meta["made_by"] != "sample":
        raise VdError(f"--from {image}: made by vd {meta['made_by']}, not vd sample; its command was: {meta.get('command', '?')}")
    restored = {name: meta[key] for key, name in RESTORED.items() if key in meta and name not in given}
    restored["remade"] = (image, meta)
    return {**params, **restored}


def parse_sweep(specs: list[str] | None) -> list:
    """--sweep KEY=V1,V2,... (at most twice) -> sweep.Axis list; every mistake is one VdError line."""
    import difflib

    from vdcli.diffusion import SAMPLERS
    from vdcli.tasks.sweep import KEYS, Axis

    axes = []
    for spec in specs or []:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise VdError(f"--sweep {spec}: give KEY=V1,V2,..., e.g. --sweep guidance=1,2,3,5")
        if key not in KEYS:
            near = difflib.get_close_matches(key, KEYS, n=1)
            raise VdError(f"--sweep {spec}: unknown key {key!r}{f' (did you mean {near[0]}?)' if near else ''}; keys: {', '.join(KEYS)}")
        if any(a.key == key for a in axes):
            raise VdError(f"--sweep {key}: given twice; one --sweep per key, its values comma-separated")
        parts = [v.strip() for v in values.split(",")]
        axes.append(Axis(key, [_sweep_value(key, v, spec, SAMPLERS) for v in parts]))
    if len(axes) > 2:
        raise VdError(f"--sweep: {len(axes)} axes, at most two (rows, then columns)")
    return axes


def _sweep_value(key: str, value: str, spec: str, samplers):
    kind = {"steps": int, "seed": int, "sampler": str, "prompt": str}.get(key, float)
    if key == "sampler" and value not in samplers:
        raise VdError(f"--sweep {spec}: no sampler {value!r}; samplers: {', '.join(samplers)}")
    try:
        x = kind(value)
    except ValueError:
        raise VdError(f"--sweep {spec}: {value!r} is not {'a whole number' if kind is int else 'a number'}") from None
    bad = {"steps": x < 1 if kind is int else False, "seed": not 0 <= x < 2**32 if key == "seed" else False,
           "strength": not 0 <= x <= 1 if key == "strength" else False}.get(key, False)
    if kind is float and (x != x or x < 0):
        bad = True
    if bad:
        rule = {"steps": "at least 1", "seed": "0 to 2**32 - 1", "strength": "0 to 1"}.get(key, "0 or more")
        raise VdError(f"--sweep {spec}: {value!r} is out of range ({key} is {rule})")
    return x


def _check_sweep(axes, given, *, guidance, steps, sampler, eta, strength, prompt, init, controlnet, control, trajectory) -> None:
    """The sweep's conflicts with the other options, before anything is loaded."""
    fixed = {"guidance": guidance, "steps": steps, "sampler": sampler, "eta": eta, "strength": strength, "prompt": prompt}
    for axis in axes:
        option = f"--{axis.key}"
        if fixed.get(axis.key) is not None or axis.key.replace("-", "_") in given:
            raise VdError(f"--sweep {axis.key} and {option}: the value is given twice; sweep it or fix it")
    keys = [a.key for a in axes]
    if "strength" in keys and init is None:
        raise VdError("--sweep strength: strength is for image-to-image; give the image with --init")
    if "control-scale" in keys and controlnet is None:
        raise VdError("--sweep control-scale: give the ControlNet run with --controlnet")
    if trajectory:
        raise VdError("--trajectory: not with --sweep; the trajectory is written for one plain sample")
    if strength is not None and "," in strength:
        raise VdError(f"--strength {strength}: one strength with --sweep (sweep strength for several)")
    if control and len(control) > 1:
        raise VdError("--control: give one map with --sweep (a row per map would be a third axis)")


def _sample(*, given, checkpoint, sampler, spacing, steps, eta, guidance, class_, prompt, negative_prompt, n, batch_size,
            trajectory, init, strength, controlnet, control, control_type, control_scale, sweep, from_, seed, compile, out,
            device, data_root, remade=None) -> None:
    from vdcli.diffusion import SAMPLERS, SPACINGS
    from vdcli.images import file_hash

    check_input(checkpoint, "--checkpoint")
    check_choice(sampler, "--sampler", tuple(SAMPLERS))
    check_choice(spacing, "--spacing", SPACINGS)
    check_items(class_, "--class", "3,7")
    check_input(init, "--init")
    strengths = check_fractions(strength, "--strength", "0.3,0.5,0.7")
    if strengths is not None and init is None:
        raise VdError(f"--strength {strength}: strength is for image-to-image; give the image with --init")
    if init is not None and trajectory:
        raise VdError("--trajectory: not with --init; the trajectory is written for sampling from noise")
    check_control(controlnet, control, control_type, checkpoint)
    if control and len(control) > 1 and (init is not None or trajectory):
        raise VdError(f"--control: give one map with {'--init' if init is not None else '--trajectory'}")
    axes = parse_sweep(sweep)
    if axes:
        _check_sweep(axes, given, guidance=guidance, steps=steps, sampler=sampler, eta=eta, strength=strength,
                     prompt=prompt if "prompt" in [a.key for a in axes] else None, init=init, controlnet=controlnet,
                     control=control, trajectory=trajectory)
    n = n or (1 if axes else 8)
    check_out(out)
    check_data_root(data_root)
    where = check_device(device)
    model, controlled, maps, ckpt, found = open_ldm(checkpoint, controlnet, control, control_type, control_scale, where,
                                                    data_root, compile)
    weights = file_hash(ckpt.path)  # once per command: every file written carries it
    if remade is not None and remade[1].get("checkpoint_sha256") not in (None, weights):
        say(f"note: {found} is not the checkpoint that made {remade[0]} (weights {weights}, not {remade[1]['checkpoint_sha256']})")
    sampler = sampler or model.defaults.sampler
    swept = {a.key: a.values for a in axes}
    plain_steps, plain_eta = steps, eta  # as given: a sweep resolves them per cell, as plain sampling would
    steps = steps or (model.schedule.T if sampler == "ddpm" else model.defaults.steps)
    for s in swept.get("steps", [steps]):
        check_steps(s, model.schedule.T)
    if init is not None and class_ is None and not prompt and model.conditioning.example():
        raise VdError(f"--init {init}: say what to make of it, e.g. {model.conditioning.example()} (--class none: the unconditional model)")
    requests, names, w = model.request(class_, guidance, prompt, negative_prompt, single=init is not None)
    for axis in axes:
        if axis.key == "guidance":  # the w plain sampling would use (an unconditional model without a guide: 1)
            axis.values = [model.request(class_, v, prompt, negative_prompt, single=init is not None)[2] for v in axis.values]
    for axis in axes:
        if axis.key == "prompt":  # each checked (a text model, known words) before any sampling, and read as --prompt reads it
            axis.values = [model.request(None, guidance, [text], negative_prompt, single=True)[0][0] for text in axis.values]
    samplers = swept.get("sampler", [sampler])
    if (eta is not None or "eta" in swept) and any(s != "ddim" for s in samplers):
        other = next(s for s in samplers if s != "ddim")
        raise VdError(f"{f'--eta {eta:g}' if eta is not None else '--sweep eta'}: only the ddim sampler takes eta ({other} is {'stochastic' if other == 'ddpm' else 'deterministic'} by construction)")
    if len(axes) == 2 and ((len(requests) > 1 and "prompt" not in swept) or n > 1):  # a prompt axis is the one request
        raise VdError("--sweep twice: one image per cell; give one --class or --prompt and --n 1 (or sweep one key)")
    eta = eta if eta is not None else (model.defaults.eta if sampler == "ddim" else 0.0)
    unconditional = model.conditioning.is_null(requests, None if negative_prompt is None else [negative_prompt])
    kind = "autoguidance" if model.guide is not None and unconditional else "guidance"
    if unconditional and model.guide is None and (guidance not in (None, 1.0) or "guidance" in swept):
        say(f"note: {f'--guidance {guidance:g}' if guidance is not None else '--sweep guidance'} is not used: an unconditional sample is guided only by a model trained "
            "with train.guide_at (autoguidance), and this one was not")
    say(*model.conditioning.warnings(requests, negative_prompt))
    spacing = spacing or model.defaults.spacing
    how = (f"{sampler.upper()} {steps} steps{f', {spacing} spacing' if spacing else ''}{f', eta {eta:g}' if sampler == 'ddim' else ''}, "
           f"{kind} {w:g}, seed {seed}{', compiled (the time includes the compile)' if compile else ''}")
    if axes:  # the summary names only what is held fixed
        held = {"sampler": sampler.upper(), "steps": f"{steps} steps", "eta": f"eta {eta:g}" if sampler == "ddim" else None,
                "guidance": f"{kind} {w:g}", "seed": f"seed {seed}"}
        how = ", ".join(v for k, v in held.items() if v and k not in swept and not (k == "steps" and "sampler" in swept and plain_steps is None))
    options = dict(sampler=sampler, steps=steps, eta=eta, guidance=w, spacing=spacing)
    is_ldm = controlled is None
    meta = dict(made_by="sample", checkpoint=str(ckpt.path) if is_ldm else None, controlnet=None if is_ldm else str(ckpt.path),
                checkpoint_sha256=weights, **{"class": class_}, prompt=prompt, negative_prompt=negative_prompt, n=n,
                batch_size=batch_size, seed=seed, sampler=sampler, steps=steps, spacing=spacing,
                eta=eta if sampler == "ddim" else None, guidance=w, init=init,
                strength=(strength or "0.8") if init is not None else None, control=control, control_type=control_type,
                control_scale=control_scale if controlled is not None else None, sweep=sweep)
    if axes:
        meta.update(steps=plain_steps, eta=plain_eta)  # each cell resolves them from its sampler
        for a in axes:  # a swept value is no fixed option
            meta[{"control-scale": "control_scale"}.get(a.key, a.key)] = None
        _sample_sweep(model, controlled, maps, ckpt, axes, requests, names, n, batch_size, seed, negative_prompt,
                      dict(options, steps=plain_steps, eta=plain_eta), strength, control_scale, init, how, found, out,
                      data_root, meta)
    elif init is not None:
        _sample_from_image(model, ckpt, init, requests[0], names[0], strengths or [0.8], n, seed, negative_prompt, options,
                           how, found, out, data_root, meta)
    elif controlled is not None:
        _sample_controlled(controlled, maps, control, requests, names, n, seed, control_scale, negative_prompt, options, how,
                           found, out, meta)
    else:
        _sample_from_noise(model, requests, names, n, batch_size, seed, negative_prompt, trajectory, options, how, found, out,
                           meta)
    if remade is not None:
        say(f"re-created {remade[0]} as {out / remade[1].get('file', 'grid.png')}")


def _sample_sweep(model, controlled, maps, ckpt, axes, requests, names, n, batch_size, seed, negative_prompt, options,
                  strength, control_scale, init, how, found, out, data_root, meta) -> None:
    from vdcli.data import load_input
    from vdcli.tasks import sweep as sweeps

    where = {}
    if init is not None:
        spec = ckpt.meta["data"]
        where["image"], _ = load_input(init, spec["image_size"], spec["channels"], data_root, spec.get("background", "white"))
    if controlled is not None:
        where.update(controlled=controlled, hint=maps[0])
    base = controlled.ldm if controlled is not None else model
    plain = sweeps.Plain(requests, n, batch_size, seed, negative=negative_prompt, control_scale=control_scale,
                         strength=float(strength or 0.8) if init is not None else None, **options)
    t0 = time.perf_counter()
    grid = sweeps.sweep(base, axes, plain, **where)  # (rows, cols, C, H, W)
    seconds = time.perf_counter() - t0
    written = sweeps.save_sweep(grid, axes, names, n, out, meta)
    say(f"using {found}",
        f"[bold]sweep of {' x '.join(f'{a.key} ({len(a.values)})' for a in axes)}: {grid.shape[0]} x {grid.shape[1]} images[/] "
        f"({', '.join(names)}; {how}) in {duration(seconds)}",
        f"wrote {written}")


def _sample_from_noise(model, requests, names, n, batch_size, seed, negative_prompt, trajectory, options, how, found, out,
                       meta) -> None:
    import torch

    from vdcli.tasks import ldm as tasks

    t0 = time.perf_counter()
    negative = None if negative_prompt is None else [negative_prompt] * (len(requests) * n)
    samples, frames = tasks.generate_batched(model, model.conditioning.repeat(requests, n), batch_size,
                                             generator=torch.Generator().manual_seed(seed), trajectory=trajectory,
                                             negative=negative, **options)
    seconds = time.perf_counter() - t0
    written = tasks.save_samples(samples, names, n, out, frames, meta=meta)
    say(f"using {found}",
        f"[bold]{len(samples)} images[/] ({', '.join(names)}; {how}) "
        f"in {duration(seconds)}, {seconds / len(samples) * 1000:.0f} ms per image",
        "wrote " + ", ".join(str(p) for p in written))


def _sample_from_image(model, ckpt, init, request, name, strengths, n, seed, negative_prompt, options, how, found, out,
                       data_root, meta) -> None:
    from vdcli.data import load_input
    from vdcli.tasks import ldm as tasks

    spec = ckpt.meta["data"]
    pixels, what = load_input(init, spec["image_size"], spec["channels"], data_root, spec.get("background", "white"))
    t0 = time.perf_counter()
    made = tasks.image_to_image(model, pixels, request, strengths, n=n, negative=negative_prompt, seed=seed,
                                **options)  # (n, strengths, C, H, W)
    seconds = time.perf_counter() - t0
    written = tasks.save_image_to_image(pixels, made, strengths, out, meta)
    say(f"using {found}",
        f"[bold]{what} made anew {n} ways[/] at strength {', '.join(f'{x:g}' for x in strengths)} ({name}; {how}) in {duration(seconds)}",
        "wrote " + ", ".join(str(p) for p in written))


def _sample_controlled(controlled, maps, control, requests, names, n, seed, scale, negative_prompt, options, how, found,
                       out, meta) -> None:
    from vdcli.tasks.controlnet import control_grid, save_control_grid

    t0 = time.perf_counter()
    samples = control_grid(controlled, maps, requests, n, seed=seed, scale=scale, negative=negative_prompt, **options)
    seconds = time.perf_counter() - t0
    written = save_control_grid(samples, maps, control, [name for name in names for _ in range(n)], out, meta)
    say(f"using {found}",
        f"[bold]{len(maps)} control maps x {len(requests) * n} images[/] ({', '.join(names)}; {controlled.control}, "
        f"scale {scale:g}; {how}) in {duration(seconds)}",
        "wrote " + ", ".join(str(p) for p in written))


@command("inpaint")
def inpaint_cmd(
    image: Annotated[str, typer.Argument(help="The image: a file or a dataset reference such as mnist:test:0.")],
    mask: Annotated[str, typer.Option(help="What to fill: an image file (white = fill, black = keep) or box:X0,Y0,X1,Y1 in pixels.")],
    checkpoint: Annotated[Optional[str], typer.Option(help="An LDM checkpoint or run folder (default: the newest LDM run).")] = None,
    class_: Annotated[Optional[str], typer.Option("--class", help="The class the filled image should be (index or name), or 'none' (the default).")] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="A text model's prompt for the filling, e.g. 'a bold seven'.")] = None,
    negative_prompt: Annotated[Optional[str], typer.Option("--negative-prompt", help="What guidance steers away from (text models).")] = None,
    n: Annotated[int, typer.Option("--n", help="How many different fillings.", min=1)] = 4,
    steps: Annotated[int, typer.Option(help="DDIM steps.", min=1)] = 50,
    guidance: Annotated[Optional[float], typer.Option(help="Guidance scale with --class (default: the recipe's).", min=0.0)] = None,
    controlnet: ControlNetRun = None,
    control: ControlMap = None,
    control_type: ControlType = None,
    control_scale: ControlScale = 1.0,
    seed: Annotated[int, typer.Option(help="Same seed, same fillings.", min=0, max=2**32 - 1)] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/inpaint"),
    device: Device = "auto",
    data_root: DataRoot = None,
) -> None:
    """Fill a masked region of an image so that it fits the rest and the asked class.

    Example: [bold]vd inpaint mnist:test:0 --mask box:0,16,32,32 --class 7 --n 6[/]

    Writes inpaint.png (the image, the masked image, then each filling) and each filling as
    inpaint_<i>.png. Known pixels are kept exactly.
    """
    import torch

    from vdcli.data import load_input, read_mask
    from vdcli.tasks import ldm as tasks

    check_input(image, "IMAGE")
    check_input(mask, "--mask")
    check_input(checkpoint, "--checkpoint")
    check_items(class_, "--class", "7")
    check_control(controlnet, control, control_type, checkpoint)
    if control and len(control) > 1:
        raise VdError("--control: give one map here")
    check_out(out)
    check_data_root(data_root)
    where = check_device(device)
    model, _, _, ckpt, found = open_ldm(checkpoint, controlnet, control, control_type, control_scale, where, data_root)
    spec = ckpt.meta["data"]
    check_steps(steps, model.schedule.T)
    pixels, what = load_input(image, spec["image_size"], spec["channels"], data_root, spec.get("background", "white"))
    size = spec["image_size"]
    region = read_mask(mask, size)
    if not region.any():
        raise VdError(f"--mask {mask} selects no pixel: white (or the box) marks what to fill")
    asked = "none" if class_ is None and prompt is None else class_
    (request,), (name,), w = model.request(asked, guidance, [prompt] if prompt is not None else None, negative_prompt, single=True)
    say(*model.conditioning.warnings([request], negative_prompt))
    filled = tasks.inpaint(model, pixels, region, request, n=n, steps=steps, guidance=w, negative=negative_prompt,
                           generator=torch.Generator().manual_seed(seed))
    from vdcli.images import file_hash

    tasks.save_inpainting(pixels, region, filled, out, dict(
        made_by="inpaint", checkpoint=str(ckpt.path) if controlnet is None else None,
        controlnet=None if controlnet is None else str(ckpt.path), checkpoint_sha256=file_hash(ckpt.path), image=image,
        mask=mask, **{"class": asked}, prompt=prompt, negative_prompt=negative_prompt, n=n, seed=seed, sampler="ddim",
        steps=steps, guidance=w, control=control, control_type=control_type,
        control_scale=control_scale if controlnet is not None else None))
    say(f"using {found}", f"{what}: filled {int(region.sum())} of {size * size} pixels {n} ways "
         f"({name}, DDIM {steps} steps, guidance {w:g})",
         f"wrote {out}/: inpaint.png, inpaint_0..{n - 1}.png")


@command("diffuse")
def diffuse_cmd(
    image: Annotated[str, typer.Argument(help="The image: a file or a dataset reference such as mnist:test:0.")],
    checkpoint: Annotated[Optional[str], typer.Option(help="A VAE or LDM checkpoint or run folder: adds the latent-space row (default: none, pixels only).")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="linear, scaled_linear or cosine (default: the LDM's, else linear).")] = None,
    timesteps: Annotated[Optional[int], typer.Option(help="T, the number of noise levels (default: the LDM's, else 1000).", min=2)] = None,
    gif: Annotated[bool, typer.Option("--gif", help="Also write forward_process.gif: the noise rising level by level.")] = False,
    seed: Annotated[int, typer.Option(help="The noise ε drawn once for every level.", min=0, max=2**32 - 1)] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/diffuse"),
    device: Device = "auto",
    data_root: DataRoot = None,
) -> None:
    """Show the forward process: an image noised step by step, and how each noise schedule decides how long it survives.

    Example: [bold]vd diffuse mnist:test:0[/]   with a latent row: [bold]vd diffuse mnist:test:0 --checkpoint runs/mnist_latent/latest[/]

    Writes forward_process.png (the image by q(x_t | x_0) at t = 0, (T-1)/8, ..., T-1, one ε for
    all; with --checkpoint, its latent noised the same way and decoded back), schedule.png (ᾱ_t
    and log SNR of every schedule, and the image at equal t under each) and, with --gif,
    forward_process.gif.
    """
    from vdcli.checkpoint import KINDS, load_checkpoint
    from vdcli.data import fit_images, load_input
    from vdcli.diffusion import NoiseSchedule
    from vdcli.runs import find_checkpoint
    from vdcli.tasks import diffuse, ldm, vae

    check_input(image, "IMAGE")
    check_input(checkpoint, "--checkpoint")
    check_choice(schedule, "--schedule", diffuse.SCHEDULES)
    check_out(out)
    check_data_root(data_root)
    where = check_device(device)
    codec, size, channels, found, ckpt_kind = None, None, None, None, None
    name, T = schedule or "linear", timesteps or 1000
    if checkpoint is not None:
        path, found = find_checkpoint(checkpoint, "vae")
        ckpt = load_checkpoint(path)
        if ckpt.kind not in ("vae", "ldm"):
            raise VdError(f"--checkpoint {path} is {KINDS[ckpt.kind]}, but the latent row needs {KINDS['vae']} or {KINDS['ldm']}")
        size, channels, ckpt_kind = ckpt.meta["data"]["image_size"], ckpt.meta["data"]["channels"], ckpt.kind
        if ckpt.kind == "ldm":
            codec = ldm.load_ldm(ckpt, where)
            name, T = schedule or ckpt.meta["diffusion"]["schedule"], timesteps or ckpt.meta["diffusion"]["timesteps"]
        else:
            codec = diffuse.VAECodec(*vae.load_vae(ckpt, where))
    pixels, what = load_input(image, size, channels, data_root)
    if size is None and max(pixels.shape[1:]) > 128:  # a photo: the grid stays a screen wide
        pixels = fit_images(pixels[None], 128, None)[0]
    why = "this model" if ckpt_kind == "ldm" and schedule is None else "forward_process.png"
    written = diffuse.write_diffusion_pictures(pixels, NoiseSchedule(name, T), name, codec, out, seed, gif, why)
    say(*([f"using {found}"] if found else []),
        f"{what}: the forward process under the {name} schedule, T = {T}" + (", in pixels and in latents" if codec else ", in pixels"),
        "wrote " + ", ".join(str(p) for p in written))
