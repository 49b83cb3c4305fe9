"""The demo's report.md, class-conditional or text-to-image, written from its figures (demo.json).

Both reports share the rows of the three training stages (autoencoder, encode, latent diffusion), the
reconstructions, the loss curves and the commands of each stage; they differ in how samples are judged.
"""

from __future__ import annotations

from pathlib import Path

from ldm_vae.data.shapes import HELD_OUT_COMBINATIONS, SHAPE_KINDS
from ldm_vae.metrics.judge import COLOURS
from ldm_vae.viz import save_guidance_curves


def chain_rows(figures: dict) -> list[str]:
    """The report's table rows for the three training stages, the same in the class and the text demo."""
    ae, encode, ldm = figures["autoencoder"], figures["encode"], figures["ldm"]
    ldm_preset = figures["presets"]["ldm"]
    held = ae["held_out"]
    rows = [
        f"| autoencoder ({figures['presets']['autoencoder']}, f4, {held['latent_shape']}) | "
        "held-out PSNR / bicubic floor | "
        f"{held['psnr_db']:.2f} dB / {held['bicubic_psnr_db']:.2f} dB |",
        f"| | held-out SSIM | {held['ssim']:.3f} |",
        f"| | active latent channels | {held['active_channels']} of {held['latent_shape'][0]} |",
        f"| | export reloads bit-identical | {ae['export']['outputs_bit_identical']} |",
        f"| encode | latents, scaling_factor (exact moments) | {encode['num_samples']}, "
        f"{encode['scaling']['scaling_factor']:.4f} |",
        f"| latent diffusion ({ldm_preset}) | steps, final loss | {ldm['step']}, {ldm['final_loss']:.4f} |",
        f"| | UNet parameters | {ldm['unet_parameters'] / 1e6:.2f} M |",
    ]
    if "text_encoder" in ldm:
        rows.append(
            f"| | CLIP text encoder parameters (trained with the UNet), vocabulary | "
            f"{ldm['text_encoder']['parameters'] / 1e6:.2f} M, {ldm['text_encoder']['tokenizer_vocab']} |"
        )
    rows.append(f"| | saved pipeline samples identically | {ldm['reload_max_abs_diff'] == 0} |")
    return rows


def stage_seconds(figures: dict) -> str:
    return "Wall time per stage (s): " + ", ".join(
        f"{name} {'(earlier run)' if value is None else f'{value:.0f}'}"
        for name, value in figures["seconds"].items()
    )


def write_report(run_dir: Path, figures: dict, commands: list[str]) -> None:
    """report.md of the class demo."""
    scores = figures["samples"]
    guided = [key for key in scores if key.startswith("guidance_")]
    lines = [
        "# ldm-vae demo report",
        "",
        f"Data `{figures['data']['source']}`: {figures['data']['resolution_px']} px, "
        f"{figures['data']['classes']} classes; {figures['machine']}. "
        f"Total wall time {figures['seconds']['total'] / 60:.1f} min.",
        "",
        "| stage | figure | value |",
        "|---|---|---|",
        *chain_rows(figures),
        f"| samples | classifier accuracy on real held-out images | "
        f"{scores['classifier_real_held_out_accuracy']:.3f} |",
        "| | autoencoder reconstructions of them (the ceiling): class accuracy / feature Fréchet distance | "
        f"{scores['reconstructions']['accuracy']:.3f} / {scores['reconstructions']['frechet_vs_real']:.2f} |",
        *(
            f"| | guidance {key.removeprefix('guidance_')}: class accuracy / feature Fréchet distance | "
            f"{scores[key]['accuracy']:.3f} / {scores[key]['frechet_vs_real']:.2f} |"
            for key in guided
        ),
        f"| | feature Fréchet distance, real vs real (floor) | {scores['real_vs_real_frechet']:.2f} |",
        "",
        stage_seconds(figures),
        "",
        "## Samples by class",
        "",
        "![samples](ldm/samples.png)",
        "",
        "## Class accuracy across guidance scales (reconstructions dashed: the ceiling)",
        "",
        "![guidance](guidance.png)",
        "",
        *report_tail(commands),
    ]
    save_guidance_curves(
        {"samples": {key.removeprefix("guidance_"): scores[key] for key in guided}},
        {"reconstructions": scores["reconstructions"]["accuracy"]},
        run_dir / "guidance.png",
    )
    (run_dir / "report.md").write_text("\n".join(lines))


def report_tail(commands: list[str]) -> list[str]:
    """Both reports end alike: the reconstructions, the loss curves and the commands of each stage."""
    return [
        "## Reconstructions (originals above, EMA reconstructions below)",
        "",
        "![reconstructions](autoencoder/reconstructions.png)",
        "",
        "## Loss curves",
        "",
        "![autoencoder](autoencoder/loss_curves.png) ![ldm](ldm/loss_curves.png)",
        "",
        "## Commands",
        "",
        "```",
        *commands,
        "```",
        "",
    ]


def accuracy_cells(scores: dict[str, dict[str, float | None]]) -> str:
    """`attribute_accuracy`'s figures as table cells: seen shape | colour | both | unseen shape | ..."""
    return " | ".join(
        "-" if scores[group][key] is None else f"{scores[group][key]:.3f}"
        for group in ("seen", "unseen")
        for key in ("shape", "colour", "both")
    )


def pair_table(by_prompt: dict[str, float], template: str) -> list[str]:
    """A colour x shape markdown table of the accuracy of each pair's prompt; held-out pairs starred."""
    rows = ["| colour \\ shape | " + " | ".join(SHAPE_KINDS) + " |", "|---|" + "---|" * len(SHAPE_KINDS)]
    for colour in COLOURS:
        cells = [
            f"{by_prompt[template.format(colour=colour, shape=shape)]:.2f}"
            + ("*" if (colour, shape) in HELD_OUT_COMBINATIONS else "")
            for shape in SHAPE_KINDS
        ]
        rows.append(f"| {colour} | " + " | ".join(cells) + " |")
    return rows


def write_text_report(run_dir: Path, figures: dict, commands: list[str]) -> None:
    """report.md of the text demo: prompt following for seen and for held-out colour-shape pairs."""
    scores, guidance_scale = figures["samples"], figures["ldm"]["sampler"]["guidance_scale"]
    guided = [key for key in scores if key.startswith("guidance_")]
    held_out = ", ".join(f"{colour} {shape}" for colour, shape in HELD_OUT_COMBINATIONS)
    chance = 1 / len(SHAPE_KINDS), 1 / len(COLOURS), 1 / (len(SHAPE_KINDS) * len(COLOURS))
    lines = [
        "# ldm-vae text-to-image demo report",
        "",
        f"Data `{figures['data']['source']}`: {figures['data']['resolution_px']} px, {len(SHAPE_KINDS)} "
        f"shapes in {len(COLOURS)} named colours; never drawn for training: {held_out}. "
        f"{figures['machine']}. Total wall time {figures['seconds']['total'] / 60:.1f} min.",
        "",
        "| stage | figure | value |",
        "|---|---|---|",
        *chain_rows(figures),
        "",
        "## Prompt following",
        "",
        f"Prompts `{scores['prompt_template']}` for all {len(scores['both_by_prompt'])} colour-shape pairs, "
        f"{scores['samples_per_prompt']} samples each, DDIM {figures['ldm']['sampler']['steps']} steps. "
        "A judge with a shape head and a colour head, trained on real images of every pair, checks each "
        "sample against its prompt; 'both' means both attributes right. Real images and their "
        "reconstructions are scored the same way (the judge's accuracy, and the samples' ceiling).",
        "",
        "| images | seen: shape | colour | both | unseen: shape | colour | both |",
        "|---|---|---|---|---|---|---|",
        f"| real ({scores['real']['seen']['images']} seen, {scores['real']['unseen']['images']} unseen) | "
        f"{accuracy_cells(scores['real'])} |",
        "| autoencoder reconstructions of them (the ceiling) | "
        f"{accuracy_cells(scores['reconstructions'])} |",
        *(
            f"| samples, guidance {key.removeprefix('guidance_')} | {accuracy_cells(scores[key])} |"
            for key in guided
        ),
        "| chance | " + " | ".join(f"{value:.3f}" for value in chance * 2) + " |",
        "",
        f"Both attributes right, by prompt, at guidance {guidance_scale:g} (* never seen in training):",
        "",
        *pair_table(scores["both_by_prompt"], scores["prompt_template"]),
        "",
        stage_seconds(figures),
        "",
        f"## Samples at guidance {guidance_scale:g}: held-out pairs, then seen pairs of the same words",
        "",
        "![prompt samples](prompt_samples.png)",
        "",
        'Loads with diffusers alone: `StableDiffusionPipeline.from_pretrained("ldm/pipeline")`.',
        "",
        *report_tail(commands),
    ]
    (run_dir / "report.md").write_text("\n".join(lines))
