"""Latent diffusion sampling: a UNet denoises in the VAE's scaled latent space, then the VAE decodes.

This file is saved into every pipeline folder (diffusers' custom-pipeline convention), so it imports only
torch and diffusers: `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` then loads the
folder where ldm-vae is not installed. Bad arguments raise ValueError, as diffusers' pipelines do.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    ImagePipelineOutput,
    SchedulerMixin,
    UNet2DModel,
    VQModel,
)
from diffusers.utils.torch_utils import randn_tensor


class LatentDiffusionPipeline(DiffusionPipeline):
    r"""
    Unconditional or class-conditional latent diffusion with an `AutoencoderKL` or `VQModel` first stage.

    The UNet sees `z_model = (z - shift) * scale`, with `scale = vae.config.scaling_factor` and
    `shift = vae.config.shift_factor or 0`; per-channel `latents_mean`/`latents_std` in the VAE config take
    precedence (`shift = mean[c]`, `scale = 1 / std[c]`). A class-conditional UNet reserves its last class id
    (`num_class_embeds - 1`) as the null class for classifier-free guidance.

    Load a saved pipeline with `LatentDiffusionPipeline.from_pretrained(path)`, or without ldm-vae with
    `DiffusionPipeline.from_pretrained(path, trust_remote_code=True)`, which runs the copy of this file saved
    in the folder.

    Parameters:
        vae ([`AutoencoderKL`] or [`VQModel`]): the first stage; a `VQModel` quantizes in `decode`. None
            for a pixel-space UNet, sampled with `denoise`.
        unet ([`UNet2DModel`]): denoises latents; in/out channels equal the latent channels.
        scheduler ([`SchedulerMixin`]): any diffusers scheduler, e.g. DDPM, DDIM or DPM-Solver.
        class_names (`list[str]`, *optional*): a name per class id, saved in `model_index.json`;
            `class_labels` may then be given by name.
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae"]  # None: a pixel-space UNet, sampled with `denoise`

    def __init__(
        self,
        vae: AutoencoderKL | VQModel | None,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        class_names: list[str] | None = None,
    ):
        super().__init__()
        num_class_embeds = unet.config.num_class_embeds
        if class_names is not None and (num_class_embeds is None or len(class_names) != num_class_embeds - 1):
            raise ValueError(
                f"class_names: {len(class_names)} given, but the UNet has "
                f"{0 if num_class_embeds is None else num_class_embeds - 1} classes"
            )
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler)
        self.register_to_config(class_names=list(class_names) if class_names is not None else None)

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """`DiffusionPipeline.save_pretrained`, plus this file beside the components, named in
        `model_index.json` as `_class_name: [module, class]` so stock diffusers finds the code."""
        super().save_pretrained(save_directory, **kwargs)
        source = Path(inspect.getsourcefile(type(self)))
        shutil.copyfile(source, Path(save_directory) / source.name)
        index_path = Path(save_directory) / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = [source.stem, type(self).__name__]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load_config(cls, *args, **kwargs):
        """The saved config with `_class_name` as a plain name: loading through this class uses this class,
        not the file copied into the folder (which only `DiffusionPipeline` with trust_remote_code runs)."""
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if isinstance(config.get("_class_name"), list):
            config["_class_name"] = config["_class_name"][1]
        return loaded

    def _shift_and_scale(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shift, scale), each (c or 1, 1, 1) on z's device: per-channel `latents_mean`/`latents_std`
        first (SDXL style), else `shift_factor` (0 if unset) and `scaling_factor` (SD3/FLUX use both)."""
        config = self.vae.config
        mean, std = config.get("latents_mean"), config.get("latents_std")
        if mean is not None and std is not None:
            shift = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
            scale = (1.0 / torch.tensor(std, dtype=torch.float64)).float().view(-1, 1, 1)
        else:
            shift = torch.full((1, 1, 1), float(config.get("shift_factor") or 0.0))
            scale = torch.full((1, 1, 1), float(config.scaling_factor))
        return shift.to(z.device, z.dtype), scale.to(z.device, z.dtype)

    def latents_to_model_space(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents -> what the UNet sees: `(z - shift) * scale`."""
        shift, scale = self._shift_and_scale(z)
        return (z - shift) * scale

    def model_space_to_latents(self, z_model: torch.Tensor) -> torch.Tensor:
        """The exact inverse of `latents_to_model_space`: `z_model / scale + shift`."""
        shift, scale = self._shift_and_scale(z_model)
        return z_model / scale + shift

    def _class_labels(
        self,
        batch_size: int,
        class_labels: list[int | str] | torch.Tensor | None,
        guidance_scale: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor | None:
        num_class_embeds = self.unet.config.num_class_embeds
        if num_class_embeds is None:
            if class_labels is not None:
                raise ValueError(
                    "class_labels given to an unconditional UNet (num_class_embeds=None); drop them"
                )
            if guidance_scale != 1.0:
                raise ValueError(
                    f"guidance_scale={guidance_scale} needs a class-conditional UNet; use guidance_scale=1.0"
                )
            return None
        num_classes = num_class_embeds - 1  # the last id is the null class
        if class_labels is None:
            gen_device = generator.device if generator is not None else "cpu"
            return torch.randint(0, num_classes, (batch_size,), generator=generator, device=gen_device)
        if isinstance(class_labels, torch.Tensor):
            class_labels = class_labels.flatten().tolist()
        return torch.tensor([self.class_id(label) for label in class_labels], dtype=torch.long)

    def class_id(self, label: int | str) -> int:
        """A class id from an id or a class name; ValueError for an unknown name or an id out of range."""
        if isinstance(label, str):
            names = self.config.class_names or []
            if label not in names:
                raise ValueError(f"class label {label!r} is not a class name of this pipeline: {names}")
            return names.index(label)
        num_classes = (self.unet.config.num_class_embeds or 1) - 1  # the last id is the null class
        if not 0 <= label < num_classes:
            raise ValueError(f"class label {label} is out of range; use labels in [0, {num_classes})")
        return int(label)

    @torch.no_grad()
    def denoise(
        self,
        batch_size: int = 1,
        class_labels: list[int | str] | torch.Tensor | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The reverse diffusion alone: model-space samples `(b, c, h, w)`, not decoded.

        Works without a `vae` (pass `vae=None`): a pixel-space UNet then samples images in [-1, 1].
        Arguments as in `__call__`.
        """
        device = self._execution_device

        # 1. Validate the class labels and guidance.
        labels = self._class_labels(batch_size, class_labels, guidance_scale, generator)
        if labels is not None:
            batch_size = len(labels)
            labels = labels.to(device)
        do_cfg = labels is not None and guidance_scale != 1.0

        # 2. Initial latents, in model space.
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, self.unet.config.in_channels, *size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}; expected {shape}")
        # flow-matching schedulers start from unit noise and have no init_noise_sigma or scale_model_input
        init_sigma = getattr(self.scheduler, "init_noise_sigma", 1.0)
        latents = latents.to(device=device, dtype=self.unet.dtype) * init_sigma

        # 3. Denoise.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        step_kwargs = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            step_kwargs["generator"] = generator
        if do_cfg:
            null = torch.full_like(labels, self.unet.config.num_class_embeds - 1)
            cfg_labels = torch.cat([labels, null])
        for t in self.progress_bar(self.scheduler.timesteps):
            # 1. predict noise model_output
            model_input = latents
            if hasattr(self.scheduler, "scale_model_input"):
                model_input = self.scheduler.scale_model_input(latents, t)
            if do_cfg:
                model_input = torch.cat([model_input, model_input])
                cond, uncond = self.unet(model_input, t, class_labels=cfg_labels).sample.chunk(2)
                model_output = uncond + guidance_scale * (cond - uncond)
            else:
                model_output = self.unet(model_input, t, class_labels=labels).sample

            # 2. compute previous sample: x_t -> x_t-1
            latents = self.scheduler.step(model_output, t, latents, **step_kwargs).prev_sample
        return latents

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: list[int | str] | torch.Tensor | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generate images.

        Args:
            batch_size: number of images; ignored when `class_labels` are given (one image per label).
            class_labels: ids in `[0, num_class_embeds - 1)`, or class names; random ids for a conditional
                UNet if None.
            num_inference_steps: denoising steps.
            guidance_scale: classifier-free guidance weight; 1.0 disables guidance.
            generator: a `torch.Generator` for deterministic sampling.
            latents: unit-variance noise in model space, `(b, c, h, w)`; drawn from `generator` if None.
            output_type: `"pil"`, `"np"` (array `(b, H, W, 3)`) or `"pt"` (tensor `(b, 3, H, W)`), in [0, 1].
            return_dict: return an [`ImagePipelineOutput`] instead of a tuple.

        Example:

        ```py
        >>> import torch
        >>> from ldm_vae.pipelines import LatentDiffusionPipeline

        >>> pipe = LatentDiffusionPipeline.from_pretrained("runs/ldm/pipeline")
        >>> images = pipe(class_labels=[0, 1], guidance_scale=3.0, num_inference_steps=50,
        ...               generator=torch.Generator().manual_seed(0)).images
        >>> images[0].save("sample.png")
        ```
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type={output_type!r} is unknown; use 'pil', 'np' or 'pt'")
        if self.vae is None:
            raise ValueError("this pipeline has no vae to decode with; call pipe.denoise(...) instead")
        latents = self.denoise(
            batch_size, class_labels, num_inference_steps, guidance_scale, generator, latents
        )

        # 4. Decode: model space -> VAE latents -> images in [0, 1].
        z = self.model_space_to_latents(latents).to(self.vae.dtype)
        image = (self.vae.decode(z).sample / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
