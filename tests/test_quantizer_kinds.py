"""FSQ and LFQ (grid lookups, gradients, entropy penalty, exact export as a plain VQModel) and the rotation
trick of the learned-codebook quantizer, checked against their definitions."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file

from ldm_vae.config import ModelConfig, QuantizerConfig
from ldm_vae.data import ShapesDataset
from ldm_vae.errors import ConfigError
from ldm_vae.metrics.codebook import codebook_usage
from ldm_vae.models.quantizer import (
    MAX_ENUMERATED_CODES,
    FiniteScalarQuantizer,
    LookupFreeQuantizer,
    VectorQuantizer,
    rotate_to_codes,
)
from ldm_vae.models.vq_model import build_vqmodel, export_vqmodel, image_to_indices, indices_to_image
from ldm_vae.train.cli import main


def flat(z: torch.Tensor) -> torch.Tensor:
    return rearrange(z, "b c h w -> (b h w) c")


# -- FSQ ----------------------------------------------------------------------------------------------------


def test_fsq_grid_spans_the_box_with_the_half_step_for_even_levels():
    odd, even = FiniteScalarQuantizer([3]).codebook(), FiniteScalarQuantizer([4]).codebook()
    torch.testing.assert_close(odd[:, 0], torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(even[:, 0], torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))  # no zero level

    q = FiniteScalarQuantizer([8, 5, 5, 5])
    codes = q.codebook()
    assert codes.shape == (1000, 4) and q.num_codes == 1000
    assert len(torch.unique(codes, dim=0)) == 1000 and codes.abs().max() == 1.0
    # The index is mixed radix with the last channel fastest: code 1 differs from code 0 in channel 3 only.
    assert (codes[1] != codes[0]).tolist() == [False, False, False, True]
    torch.testing.assert_close(q._code_vectors(torch.arange(1000)), codes)


@pytest.mark.parametrize("level", [2, 4, 5, 8])
def test_fsq_grid_is_the_papers_rounding_grid_up_to_an_affine_map(level):
    """Mentzer et al. round L*tanh-bounded values to integers; for even L, their bound is shifted by half a
    step (offset 0.5), so the integers are -L/2 .. L/2 - 1. Our grid is those integers + offset, divided by
    (L - 1)/2: the same L equally spaced levels, symmetric about 0, which quant_conv's affine map absorbs."""
    offset = 0.5 if level % 2 == 0 else 0.0
    paper = torch.arange(level, dtype=torch.float32) - level // 2  # the paper's integer levels
    ours = FiniteScalarQuantizer([level]).codebook()[:, 0]
    torch.testing.assert_close(ours, (paper + offset) / ((level - 1) / 2))
    assert (0.0 in ours.tolist()) == (level % 2 == 1), "an even L has no zero level, an odd L has one"


@pytest.mark.parametrize("levels", [[5, 3, 3], [8, 6, 4], [7, 4, 2]])
def test_fsq_code_is_the_nearest_grid_point_of_the_token(levels):
    torch.manual_seed(0)
    q = FiniteScalarQuantizer(levels).train()
    z = 1.5 * torch.randn(4, 3, 5, 5)  # many tokens fall outside the box, where the clamp decides
    z_q, _, (_, counts, idx) = q(z)
    tokens = flat(z)
    nearest = torch.cdist(tokens, q.codebook()).argmin(dim=1)  # what diffusers' VectorQuantizer does
    assert torch.equal(idx.flatten(), nearest)
    assert (tokens.abs() > 1).any() and len(idx.unique()) > 20
    torch.testing.assert_close(flat(z_q), q.codebook()[nearest])  # t + (code - t): code up to rounding
    torch.testing.assert_close(q.indices_to_codes(idx), z_q)
    assert counts.sum() == idx.numel() and q.dead_codes() == q.num_codes - len(idx.unique())


def test_fsq_gradient_is_straight_through_and_the_bound_penalty_acts_only_outside_the_box():
    q = FiniteScalarQuantizer([5, 4], commitment_weight=0.5).train()
    tokens = torch.tensor([[0.3, -0.2], [1.5, 0.9], [-2.0, 0.1]])
    z = rearrange(tokens, "(b h w) c -> b c h w", b=1, h=1).requires_grad_(True)
    z_q, loss, _ = q(z)
    z_q.sum().backward(retain_graph=True)
    assert torch.equal(z.grad, torch.ones_like(z)), "straight-through over clamp and round"
    overflow = tokens - tokens.clamp(-1, 1)  # only (1.5 - 1) and (-2 + 1) are non-zero
    assert torch.isclose(loss, 0.5 * overflow.square().mean())
    z.grad = None
    loss.backward()
    expected = 0.5 * 2 * overflow / overflow.numel()
    torch.testing.assert_close(flat(z.grad), expected)


def test_fsq_and_lfq_checkpoint_only_training_state():
    for q in (FiniteScalarQuantizer([8, 5]), LookupFreeQuantizer(3)):  # the grid is rebuilt from its sizes
        assert set(q.state_dict()) == {"steps_since_used", "step"}


def test_vocabularies_too_large_to_enumerate_are_refused_with_the_memory():
    for build, name in [
        (lambda: FiniteScalarQuantizer([8] * 7), "levels="),  # 8^7 = 2^21 codes
        (lambda: LookupFreeQuantizer(19), "bits=19"),
    ]:
        with pytest.raises(ConfigError, match=name) as error:
            build()
        message = str(error.value)
        assert "\n" not in message and "MiB per token" in message and str(MAX_ENUMERATED_CODES) in message
    assert LookupFreeQuantizer(18).num_codes == MAX_ENUMERATED_CODES  # the limit itself is allowed


# -- LFQ ----------------------------------------------------------------------------------------------------


def test_lfq_codes_are_the_signs_and_the_codebook_every_sign_pattern():
    torch.manual_seed(0)
    q = LookupFreeQuantizer(4).eval()
    codes = q.codebook()
    assert codes.shape == (16, 4) and set(codes.unique().tolist()) == {-1.0, 1.0}
    assert len(torch.unique(codes, dim=0)) == 16
    z = torch.randn(2, 4, 4, 4)
    z_q, _, (_, _, idx) = q(z)
    tokens = flat(z)
    assert torch.equal(codes[idx.flatten()], torch.where(tokens > 0, 1.0, -1.0))
    assert torch.equal(idx.flatten(), torch.cdist(tokens, codes).argmin(dim=1))


def test_lfq_loss_matches_brute_force_entropies_over_the_whole_codebook():
    torch.manual_seed(0)
    weights = {"commitment_weight": 0.3, "entropy_weight": 0.2, "codebook_entropy_weight": 0.7}
    q = LookupFreeQuantizer(3, temperature=0.5, **weights).train()
    tokens = 0.6 * torch.randn(10, 3)
    z = rearrange(tokens, "(b h w) c -> b c h w", b=2, h=5).requires_grad_(True)
    _, loss, _ = q(z)
    loss.backward()

    u = tokens.clone().requires_grad_(True)
    codes = q.codebook()
    assign = torch.softmax(-torch.cdist(u, codes).square() / 0.5, dim=1)  # (n, 8) p(c | u), by definition
    sample_entropy = torch.special.entr(assign).sum(dim=1).mean()
    codebook_entropy = torch.special.entr(assign.mean(dim=0)).sum()
    commitment = F.mse_loss(u, torch.where(tokens > 0, 1.0, -1.0))
    expected = 0.3 * commitment + 0.2 * (sample_entropy - 0.7 * codebook_entropy)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(flat(z.grad), u.grad)  # straight-through sign: the same gradient
    health = q.health()
    assert abs(health["sample_entropy"] - sample_entropy.item()) < 1e-5
    assert abs(health["codebook_entropy"] - codebook_entropy.item()) < 1e-5


@pytest.mark.parametrize("codebook_sign", [1.0, -1.0], ids=["penalty", "sign-flipped"])
def test_lfq_entropy_penalty_commits_tokens_and_spreads_the_batch(codebook_sign):
    """Descending the penalty alone moves tokens that all share one code (and sit near the sign boundary)
    to confident codes spread over the codebook; flipping the codebook term's sign collapses them instead."""
    torch.manual_seed(0)
    q = LookupFreeQuantizer(
        4, commitment_weight=0.0, entropy_weight=1.0, codebook_entropy_weight=codebook_sign, temperature=1.0
    ).train()
    tokens = (0.3 + 0.1 * torch.randn(64, 4)).requires_grad_(True)  # (n, d), all in the (+, +, +, +) code
    optimizer = torch.optim.SGD([tokens], lr=0.5)
    sample_before, codebook_before = (x.item() for x in q.entropies(tokens))
    for _ in range(100):
        _, loss, _ = q(rearrange(tokens, "(b h w) c -> b c h w", b=4, h=4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sample_after, codebook_after = (x.item() for x in q.entropies(tokens))
    used = len(torch.unique(tokens.detach() > 0, dim=0))
    assert sample_after < sample_before - 0.5, "per-token entropy goes down: each token commits to a code"
    if codebook_sign > 0:
        assert codebook_after > codebook_before + 0.2 and used >= 10, "the batch spreads over the codes"
    else:
        assert codebook_after < codebook_before and used == 1


def test_lfq_entropy_terms_only_enter_with_grad():
    q = LookupFreeQuantizer(3, commitment_weight=0.0).train()
    z = torch.randn(1, 3, 4, 4)
    assert q(z)[1] != 0
    with torch.no_grad():
        assert q(z)[1] == 0


# -- export as a plain diffusers VQModel -------------------------------------------------------------------


def tiny_model(quantizer: QuantizerConfig) -> ModelConfig:
    return ModelConfig(
        kind="vq",
        block_out_channels=[8, 16],
        layers_per_block=1,
        latent_channels=6,
        norm_num_groups=8,
        mid_block_attention=False,
        quantizer=quantizer,
    )


@pytest.mark.parametrize(
    "quantizer",
    [
        QuantizerConfig(kind="fsq", levels=[5, 3, 3]),
        QuantizerConfig(kind="fsq", levels=[8, 6, 4]),
        QuantizerConfig(kind="lfq", lfq_bits=5),
    ],
    ids=["fsq-odd", "fsq-even", "lfq"],
)
def test_export_gives_a_plain_vqmodel_with_identical_codes_and_reconstructions(quantizer):
    torch.manual_seed(0)
    trained = build_vqmodel(tiny_model(quantizer), resolution_px=16, seed=0).eval()
    with torch.no_grad():  # spread the tokens over the grid, as training would, so many codes are hit
        trained.quant_conv.weight.mul_(8)
    exported = export_vqmodel(trained)
    assert type(exported.quantize).__name__ == "VectorQuantizer" and exported.quantize.__module__.startswith(
        "diffusers"
    )
    k = trained.quantize.num_codes
    assert exported.config.num_vq_embeddings == k == trained.config.num_vq_embeddings

    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ours, theirs = image_to_indices(trained, images), image_to_indices(exported, images)
    assert torch.equal(ours, theirs) and ours.shape == (6, 8, 8)
    assert codebook_usage(ours, k)["usage"] > 8 / k  # the check covers many codes, not one
    with torch.no_grad():
        reconstruction = trained(images).sample
        torch.testing.assert_close(exported(images).sample, reconstruction, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(indices_to_image(exported, theirs), exported(images).sample)
        torch.testing.assert_close(indices_to_image(trained, ours), reconstruction, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "quantizer",
    [QuantizerConfig(kind="fsq", levels=[8, 6, 4]), QuantizerConfig(kind="lfq", lfq_bits=5)],
    ids=["fsq", "lfq"],
)
def test_encode_and_eval_ae_on_the_export_see_the_codes_our_quantizer_chose(tmp_path, quantizer):
    """The KL-free workflows on the saved export: `ldm-vae encode` stores the indices our quantizer picks
    for the same images, and `eval-ae` reports the codebook health of exactly those indices."""
    torch.manual_seed(0)
    trained = build_vqmodel(tiny_model(quantizer), resolution_px=16, seed=0).eval()
    with torch.no_grad():
        trained.quant_conv.weight.mul_(8)
    export_vqmodel(trained).save_pretrained(tmp_path / "export")
    data = ["--data", "builtin:shapes", "--builtin-samples", "12", "--num-workers", "0"]
    store = tmp_path / "store"
    assert (
        main(
            ["encode", "--model", str(tmp_path / "export"), *data, "--batch-size", "12", "--out", str(store)]
        )
        == 0
    )
    shards = json.loads((store / "manifest.json").read_text())["shards"]
    stored = torch.cat([load_file(store / shard["file"])["indices"] for shard in shards])
    dataset = ShapesDataset(12, 16, seed=0)
    ours = image_to_indices(trained, torch.stack([dataset[i][0] for i in range(12)]))  # (12, 8, 8)
    assert torch.equal(stored, ours) and len(ours.unique()) > 8

    weights = [f"--{name}={tmp_path / 'missing.pth'}" for name in ("inception", "lpips-vgg16", "lpips-heads")]
    evaluate = ["eval-ae", f"--model={tmp_path / 'export'}", *data, "--batch-size", "12", *weights]
    assert main(evaluate) == 0
    health = json.loads((tmp_path / "export-eval" / "eval.json").read_text())["latents"]["codebook"]
    assert health == pytest.approx(codebook_usage(ours, trained.quantize.num_codes))


# -- rotation trick -----------------------------------------------------------------------------------------


def plane_rotation(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(d, d) rotation by the angle between e and q in their common plane, identity elsewhere (Rodrigues)."""
    e_hat = e / e.norm()
    q_hat = q / q.norm()
    cos = torch.dot(e_hat, q_hat)
    ortho = q_hat - cos * e_hat  # the in-plane direction perpendicular to e
    sin = ortho.norm()
    ortho = ortho / sin
    eye = torch.eye(len(e), dtype=e.dtype)
    outer = torch.outer(ortho, e_hat) - torch.outer(e_hat, ortho)  # generator of the plane's rotations
    plane = torch.outer(e_hat, e_hat) + torch.outer(ortho, ortho)
    return eye + sin * outer + (cos - 1) * plane


def test_rotation_trick_forward_is_the_code_and_gradient_is_rotated_and_rescaled():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(5, 4, dtype=torch.float64, generator=g).requires_grad_(True)
    q = 3 * torch.randn(5, 4, dtype=torch.float64, generator=g)
    upstream = torch.randn(5, 4, dtype=torch.float64, generator=g)
    out = rotate_to_codes(e, q)
    assert torch.equal(out, q), "the forward value is the code, bit for bit"
    out.backward(upstream)
    for i in range(5):
        rotation = plane_rotation(e[i].detach(), q[i])
        torch.testing.assert_close(rotation @ rotation.T, torch.eye(4, dtype=torch.float64))
        scale = q[i].norm() / e[i].detach().norm()
        torch.testing.assert_close(scale * rotation @ e[i].detach(), q[i])  # lambda R e = q
        torch.testing.assert_close(e.grad[i], scale * rotation.T @ upstream[i])


def test_vector_quantizer_with_rotation_outputs_codes_and_rotates_gradients():
    torch.manual_seed(0)
    q = VectorQuantizer(8, 4, gradient="rotation", kmeans_init=False).eval()
    with torch.no_grad():
        q.embedding.weight.copy_(torch.randn(8, 4))
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    z_q, _, (_, _, idx) = q(z)
    code = q.embedding.weight[idx.flatten()]
    assert torch.equal(flat(z_q), code)
    upstream = torch.randn_like(z)
    z_q.backward(upstream)
    tokens, grads = flat(z.detach()), flat(upstream)
    for i in range(len(tokens)):
        rotation = plane_rotation(tokens[i], code[i].detach())
        scale = code[i].norm() / tokens[i].norm()
        torch.testing.assert_close(flat(z.grad)[i], scale * rotation.T @ grads[i], atol=1e-5, rtol=1e-4)
    rotated = z.grad
    straight = VectorQuantizer(8, 4, kmeans_init=False).eval()
    straight.load_state_dict(q.state_dict())
    z.grad = None
    straight(z)[0].backward(upstream)
    assert torch.equal(z.grad, upstream) and not torch.allclose(rotated, upstream)


# -- codebook health, the same for every kind ---------------------------------------------------------------


@pytest.mark.parametrize(
    "quantizer",
    [VectorQuantizer(16, 4, kmeans_init=False), FiniteScalarQuantizer([4, 2, 2]), LookupFreeQuantizer(4)],
    ids=["vq", "fsq", "lfq"],
)
def test_codebook_health_is_one_function_for_every_kind(quantizer):
    torch.manual_seed(0)
    z = 4 * torch.randn(2, quantizer.dim, 4, 4)
    _, _, (batch_perplexity, counts, idx) = quantizer.train()(z)
    health = codebook_usage(idx, quantizer.num_codes)
    used = len(idx.unique())
    assert health["usage"] == used / 16 and counts.sum() == 32
    assert math.isclose(health["perplexity"], batch_perplexity.item(), rel_tol=1e-6)
    assert 1 <= health["perplexity"] <= used
    assert quantizer.health()["dead_codes"] == 16 - used
