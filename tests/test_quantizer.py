"""VectorQuantizer: EMA maths by hand, k-means init, restarts, gradients, cosine export parity, DDP sync."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from einops import rearrange

from ldm_vae.errors import ConfigError
from ldm_vae.models.quantizer import VectorQuantizer, codebook_usage


def tokens_to_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return rearrange(tokens, "(b h w) c -> b c h w", h=h, w=w)  # (n, c) -> (b, c, h, w)


def clusters(centres: torch.Tensor, per_centre: int, std: float, seed: int) -> torch.Tensor:
    """(len(centres) * per_centre, d) points around each centre, shuffled."""
    g = torch.Generator().manual_seed(seed)
    points = centres.repeat_interleave(per_centre, dim=0)
    points = points + std * torch.randn(points.shape, generator=g)
    return points[torch.randperm(len(points), generator=g)]


def test_constructor_rejects_what_the_config_does_not_declare():
    """The config declares the ranges of every QuantizerConfig field; eps and kmeans_iters are not fields."""
    for kwargs, name in [({"eps": 0.0}, "eps"), ({"kmeans_iters": 0}, "kmeans_iters")]:
        with pytest.raises(ConfigError, match=name):
            VectorQuantizer(**{"num_codes": 8, "dim": 4, **kwargs})


def test_ema_update_matches_hand_computation():
    q = VectorQuantizer(3, 2, decay=0.9, eps=1e-3, kmeans_init=False).train()
    codes0 = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    with torch.no_grad():
        q.embedding.weight.copy_(codes0)
        q.embed_sum.copy_(codes0)  # fresh state: cluster_size 1, embed_sum = codes
    tokens = torch.tensor([[0.1, 0.0], [0.9, 0.1], [1.1, -0.1], [0.0, -0.2]])  # codes 0, 1, 1, 0
    z_q, loss, (_, counts, idx) = q(tokens_to_latents(tokens, h=2, w=2))

    assert idx.flatten().tolist() == [0, 1, 1, 0]
    assert counts.tolist() == [2.0, 2.0, 0.0]
    cluster_size = torch.tensor([0.9 + 0.1 * 2, 0.9 + 0.1 * 2, 0.9])
    embed_sum = torch.tensor(
        [[0.0 + 0.1 * 0.1, 0.0 + 0.1 * -0.2], [0.9 + 0.1 * 2.0, 0.0 + 0.1 * 0.0], [0.0, 0.9 * 5.0]]
    )
    n, k, eps = 3.1, 3, 1e-3
    smoothed = (cluster_size + eps) / (n + k * eps) * n
    assert torch.allclose(q.cluster_size, cluster_size, atol=1e-6)
    assert torch.allclose(q.embed_sum, embed_sum, atol=1e-6)
    assert torch.allclose(q.embedding.weight, embed_sum / smoothed[:, None], atol=1e-6)
    assert q.steps_since_used.tolist() == [0, 0, 1] and int(q.step) == 1
    # z_q and loss used the codes from before the update; EMA mode: beta * mse only.
    assert torch.equal(z_q, tokens_to_latents(codes0[[0, 1, 1, 0]], h=2, w=2))
    assert torch.isclose(loss, 0.25 * F.mse_loss(tokens, codes0[[0, 1, 1, 0]]))


def test_kmeans_init_finds_cluster_centres():
    centres = torch.tensor([[5.0, 5.0, 0.0], [-5.0, 5.0, 0.0], [5.0, -5.0, 0.0], [-5.0, -5.0, 3.0]])
    tokens = clusters(centres, per_centre=64, std=0.1, seed=1)
    q = VectorQuantizer(16, 3, kmeans_init=True, seed=3).train()
    q(tokens_to_latents(tokens, h=16, w=16))

    distances = torch.cdist(centres, q.embedding.weight)  # (4 centres, k)
    # 16 codes for 4 clusters: each cluster is split between several codes, all close to its centre.
    assert (distances.min(dim=1).values < 0.2).all(), "a cluster centre has no code near it"
    assert (distances.min(dim=0).values < 0.5).all(), "a code sits between clusters"
    assert int(q.initialized) == 1
    assert torch.isclose(q.cluster_size.sum(), torch.tensor(256.0), rtol=0.05)  # k-means counts, then EMA

    few = VectorQuantizer(16, 3).train()  # fewer tokens than codes: sampled with replacement
    few(tokens_to_latents(tokens[:4], h=2, w=2))
    assert torch.cdist(few.embedding.weight, tokens[:4]).min(dim=1).values.max() < 1e-5


def restart_setup(seed: int = 0) -> tuple[VectorQuantizer, list[torch.Tensor]]:
    q = VectorQuantizer(4, 2, kmeans_init=False, dead_code_window_steps=3, seed=seed).train()
    with torch.no_grad():
        codes = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])  # the last is never used
        q.embedding.weight.copy_(codes)
        q.embed_sum.copy_(codes)
    near = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    g = torch.Generator().manual_seed(0)
    batches = [near.repeat(3, 1) + 0.05 * torch.randn(9, 2, generator=g) for _ in range(6)]
    return q, [tokens_to_latents(t, h=3, w=3) for t in batches]


def test_dead_code_is_restarted_with_reset_stats_deterministically_and_resumes_exactly():
    q, batches = restart_setup()
    for step, z in enumerate(batches[:3]):
        assert q.dead_codes() == 0 and q.steps_since_used[3] == step  # dead once it reaches the window
        q(z)
    new_code = q.embedding.weight[3]
    assert q.last_restarts == 1 and int(q.steps_since_used[3]) == 0 and q.dead_codes() == 0
    assert torch.cdist(new_code[None], rearrange(batches[2], "b c h w -> (b h w) c")).min() == 0  # a token
    assert float(q.cluster_size[3]) == 1.0 and torch.equal(q.embed_sum[3], new_code)

    twin, _ = restart_setup()
    for z in batches[:3]:
        twin(z)
    assert torch.equal(q.embedding.weight, twin.embedding.weight)

    for z in batches[3:]:
        q(z)
    resumed, _ = restart_setup(seed=0)
    resumed.load_state_dict(twin.state_dict())
    for z in batches[3:]:
        resumed(z)
    for key, value in q.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


@pytest.mark.parametrize("update", ["ema", "gradient"])
def test_straight_through_gradients_and_loss_terms(update):
    torch.manual_seed(0)
    q = VectorQuantizer(8, 4, update=update, commitment_weight=0.25, kmeans_init=False).train()
    codes = q.embedding.weight.detach().clone()  # the EMA moves the codebook during forward
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    z_q, loss, (_, _, idx) = q(z)
    tokens = rearrange(z.detach(), "b c h w -> (b h w) c")  # (n, d), projections are Identity here
    code = codes[rearrange(idx, "b h w -> (b h w)")]  # (n, d)
    beta_mse = 0.25 * F.mse_loss(tokens, code)
    assert torch.isclose(loss, beta_mse if update == "ema" else beta_mse + F.mse_loss(tokens, code))

    z_q.sum().backward(retain_graph=True)
    assert torch.equal(z.grad, torch.ones_like(z)), "straight-through: d z_q / d z is the identity"
    z.grad = None
    loss.backward()  # beta on the encoder term: d loss / d z = 2 * beta * (z - e) / numel
    expected = rearrange(2 * 0.25 * (tokens - code) / tokens.numel(), "(b h w) c -> b c h w", b=2, h=3)
    assert torch.allclose(z.grad, expected, atol=1e-7)
    weight_grad = q.embedding.weight.grad
    if update == "ema":
        assert weight_grad is None and not q.embedding.weight.requires_grad
    else:
        assert weight_grad is not None and weight_grad[idx.unique()].abs().sum() > 0


def test_cosine_codes_stay_unit_norm_and_lookup_matches_diffusers_euclidean_argmin():
    torch.manual_seed(0)
    q = VectorQuantizer(16, 3, use_cosine=True, dead_code_window_steps=1).train()
    assert torch.allclose(q.embedding.weight.norm(dim=-1), torch.ones(16))
    restarts = 0
    for step in range(4):
        z = torch.randn(2, 3, 4, 4) + 3 * step  # the data moves, so codes die and get restarted
        q(z)
        restarts += q.last_restarts
        assert torch.allclose(q.embedding.weight.norm(dim=-1), torch.ones(16), atol=1e-6), f"step {step}"
    assert restarts > 0

    q.eval()
    z = torch.randn(2, 3, 4, 4) * 5  # quant_conv's raw output, not normalised
    _, _, (_, _, idx) = q(z)
    raw = rearrange(z, "b c h w -> (b h w) c")
    expected = torch.cdist(raw, q.codebook()).argmin(dim=1)  # diffusers' VectorQuantizer lookup
    assert torch.equal(rearrange(idx, "b h w -> (b h w)"), expected)


def test_cosine_gradient_mode_normalises_and_survives_in_place_restart():
    torch.manual_seed(0)
    q = VectorQuantizer(8, 4, update="gradient", use_cosine=True, dead_code_window_steps=1).train()
    opt = torch.optim.SGD(q.parameters(), lr=1.0)
    for step in range(2):
        z = torch.randn(2, 4, 3, 3, requires_grad=True) + 3 * step
        z_q, loss, _ = q(z)
        assert step == 0 or q.last_restarts > 0
        (z_q.square().mean() + loss).backward()  # restarts wrote the weight in place during forward
        opt.step()
        opt.zero_grad()
    assert not torch.allclose(q.embedding.weight.norm(dim=-1), torch.ones(8))
    q.normalize_codebook_()
    assert torch.allclose(q.embedding.weight.norm(dim=-1), torch.ones(8))


def test_signature_inside_diffusers_vqmodel_and_index_round_trip():
    from diffusers import VQModel

    torch.manual_seed(0)
    vq = VQModel(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        latent_channels=4,
        num_vq_embeddings=16,
        vq_embed_dim=4,
        layers_per_block=1,
        lookup_from_codebook=True,
    )
    stock = vq.quantize
    vq.quantize = VectorQuantizer(16, 4, use_cosine=True)
    x = torch.randn(2, 3, 16, 16)
    for train in (True, False):
        vq.train(train)
        out = vq(x)
        assert out.sample.shape == x.shape and out.commit_loss.ndim == 0

    h = vq.encode(x).latents  # (b, 4, 8, 8)
    z_q, _, (perplexity, counts, idx) = vq.quantize(h)
    assert idx.shape == (2, 8, 8) and idx.dtype == torch.int64 and counts.shape == (16,)
    assert 1.0 <= float(perplexity) <= 16.0
    assert torch.allclose(vq.quantize.indices_to_codes(idx), z_q, atol=1e-6)  # STE rounding
    # Export: the stock quantizer with our codebook picks the same codes.
    stock.embedding.weight.data.copy_(vq.quantize.embedding.weight)
    assert torch.equal(stock(h)[2][2].view(2, 8, 8), idx)
    from_ids = vq.decode(idx, force_not_quantize=True, shape=(2, 8, 8, 4)).sample  # lookup_from_codebook
    assert torch.allclose(from_ids, vq.decode(h).sample, atol=1e-5)


def test_fp32_lookup_under_bf16_autocast_and_bf16_inputs():
    torch.manual_seed(0)
    q = VectorQuantizer(32, 4).eval()
    z = torch.randn(2, 4, 4, 4)
    z_q, loss, (_, _, idx) = q(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q_ac, loss_ac, (_, _, idx_ac) = q(z)
    assert torch.equal(idx_ac, idx) and torch.equal(z_q_ac, z_q) and loss_ac.dtype == torch.float32

    z_bf16 = z.bfloat16()
    z_q_bf16, _, (_, _, idx_bf16) = q(z_bf16)
    assert z_q_bf16.dtype == torch.bfloat16
    assert torch.equal(idx_bf16, q(z_bf16.float())[2][2])


def test_codebook_usage():
    stats = codebook_usage(torch.tensor([[0, 0], [1, 1]]), num_codes=4)
    assert stats["usage"] == 0.5 and abs(stats["perplexity"] - 2.0) < 1e-6


# -- two processes ------------------------------------------------------------------------------------------


def ddp_batch(rank: int, step: int) -> torch.Tensor:
    """Different data (and batch size) per rank; from step 2 the data jumps, so codes die and restart."""
    g = torch.Generator().manual_seed(100 * rank + step)
    return torch.randn(2 + rank, 3, 3, 3, generator=g) + (6.0 if step >= 2 else 0.0)


def ddp_quantizer() -> VectorQuantizer:
    return VectorQuantizer(16, 3, use_cosine=True, dead_code_window_steps=2, seed=7).train()


def ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    q = ddp_quantizer()
    for step in range(4):
        _, _, (_, counts, _) = q(ddp_batch(rank, step))
    torch.save({"state": q.state_dict(), "counts": counts}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_keep_identical_codebooks_equal_to_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the children only; later tests must not inherit it
    mp.spawn(ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    saved = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    states = [s["state"] for s in saved]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), f"{key} differs between ranks"

    one = ddp_quantizer()  # one process fed both ranks' batches, rank 0's first
    restarts = 0
    for step in range(4):
        _, _, (_, counts, _) = one(torch.cat([ddp_batch(0, step), ddp_batch(1, step)]))
        restarts += one.last_restarts
    assert restarts > 0, "the test should exercise dead-code restarts"
    for key, value in one.state_dict().items():
        assert torch.allclose(value.float(), states[0][key].float(), atol=1e-5), key
    assert torch.equal(saved[0]["counts"], counts) and torch.equal(saved[1]["counts"], counts)  # all ranks'
