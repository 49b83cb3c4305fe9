from ldm_vae.pipelines.latent_diffusion import LatentDiffusionPipeline

__all__ = ["LatentDiffusionPipeline"]
