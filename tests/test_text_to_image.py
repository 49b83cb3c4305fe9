"""Text-to-image: shapes captions, the CLIP tokenizer trained on them, the text encoder and conditional UNet,
and the two exports that load without ldm-vae: a stock StableDiffusionPipeline, and the class-conditional
pipeline through diffusers' custom-pipeline convention. The loading checks run in a child process that
cannot import ldm_vae and proves afterwards that nothing from this repository was loaded."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_unet, tiny_vae
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, StableDiffusionPipeline
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from ldm_vae.config import LDMTrainConfig, UNetConfig, load_config
from ldm_vae.data import build_dataset
from ldm_vae.data.shapes import (
    CAPTION_TEMPLATES,
    HELD_OUT_COMBINATIONS,
    NAMED_COLOURS,
    SHAPE_KINDS,
    ShapesDataset,
    colour_name,
)
from ldm_vae.errors import ConfigError
from ldm_vae.latents import LatentDataset
from ldm_vae.latents.writer import caption_rows
from ldm_vae.models.text import (
    TextConditionedUNet,
    build_text_encoder,
    build_text_unet,
    load_text_encoder,
    load_tokenizer,
    tokenize,
    train_tokenizer,
)
from ldm_vae.pipelines.latent_diffusion import LatentDiffusionPipeline
from ldm_vae.pipelines.stable_diffusion import save_stable_diffusion, stable_diffusion_pipeline
from ldm_vae.train.cli import main
from ldm_vae.train.ldm import build_denoiser, conditioning_inputs, train
from ldm_vae.training.checkpoints import list_checkpoints

# one worker under `pytest -n 2`, so the session-scoped fixtures are built once
pytestmark = pytest.mark.xdist_group("test_text_to_image")

REPO = Path(__file__).resolve().parent.parent
TINY_TEXT_UNET = UNetConfig(
    block_out_channels=[16, 32],
    attention_levels=[False, True],
    layers_per_block=1,
    attention_head_dim=8,
    norm_num_groups=8,
)


def named_shapes(n: int = 64) -> ShapesDataset:
    return ShapesDataset(n, 16, seed=0, colours="named", held_out=HELD_OUT_COMBINATIONS)


@pytest.fixture(scope="session")
def tokenizer() -> CLIPTokenizer:
    data = named_shapes()
    return train_tokenizer([data.caption(i) for i in range(len(data))], vocab_size=512, max_length=16)


def make_text_pipe(tokenizer: CLIPTokenizer):
    """A random tiny Stable Diffusion: f2 KL-VAE (16 px -> 4x8x8), 1-layer CLIP text encoder, 2-level UNet."""
    torch.manual_seed(0)
    text_encoder = build_text_encoder(tokenizer, hidden_size=32, num_layers=1, num_heads=2).eval()
    unet = build_text_unet(TINY_TEXT_UNET, (4, 8, 8), cross_attention_dim=32).eval()
    with torch.no_grad():  # a random UNet barely listens to the text: make cross-attention matter
        for name, parameter in unet.named_parameters():
            if "attn2.to_out" in name:
                parameter.mul_(20.0)
    scheduler = DDIMScheduler(num_train_timesteps=50, clip_sample=False)
    pipe = stable_diffusion_pipeline(tiny_vae("kl"), text_encoder, tokenizer, unet, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------------------
# a child process that cannot import ldm_vae

BLOCK_REPO = """
import importlib.abc, sys
class BlockRepo(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ldm_vae":
            raise ModuleNotFoundError(f"{name} is blocked: this process stands for a machine without ldm-vae")
sys.meta_path.insert(0, BlockRepo())
try:
    import ldm_vae
    raise SystemExit("ldm_vae is importable")
except ModuleNotFoundError:
    pass
"""

REPORT_REPO_MODULES = """
repo_modules = sorted(
    name for name, module in list(sys.modules.items())
    if str(getattr(module, "__file__", None) or "").startswith(SOURCES)
)
pipeline_class = type(pipe).__module__ + "." + type(pipe).__name__
print(json.dumps({"repo_modules": repo_modules, "pipeline_class": pipeline_class}))
"""


def run_without_ldm_vae(script: str, tmp_path: Path, **values: object) -> dict:
    """Run `script` with `python -I` from an empty folder, PYTHONPATH unset, ldm_vae blocked; the script gets
    `values` as globals plus SOURCES (ldm-vae's source folders) and must define `pipe`. Returns the modules
    it loaded from those folders (none expected) and the class of `pipe`."""
    work = tmp_path / "child"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(work / "hf"), HF_MODULES_CACHE=str(work / "modules"), HF_HUB_OFFLINE="1")
    sources = tuple(str(REPO / folder) + os.sep for folder in ("ldm_vae", "pipelines", "train"))
    assignments = "".join(f"{name} = {value!r}\n" for name, value in {**values, "SOURCES": sources}.items())
    program = "\n".join(
        [
            "import json",
            BLOCK_REPO,
            assignments,
            "import torch",
            "torch.set_num_threads(THREADS)",
            textwrap.dedent(script),
            REPORT_REPO_MODULES,
        ]
    )
    completed = subprocess.run(
        [sys.executable, "-I", "-c", program], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------
# captions


def test_captions_name_the_drawn_colour_and_shape_and_are_deterministic():
    data = named_shapes(200)
    again = named_shapes(200)
    templates_used = set()
    for i in range(len(data)):
        factors, caption = data.factors(i), data.caption(i)
        assert caption == again.caption(i)
        assert f"{factors['colour']} {SHAPE_KINDS[factors['label']]}" in caption
        assert factors["shape_rgb"] == list(NAMED_COLOURS[factors["colour"]])
        background = factors["background_rgb"]
        assert background[0] == background[1] == background[2], "named-colour backgrounds are gray"
        templates_used |= {t for t in CAPTION_TEMPLATES if re.fullmatch(re.sub(r"\{\w+\}", ".+", t), caption)}
    assert templates_used == set(CAPTION_TEMPLATES)


def test_held_out_combinations_are_never_drawn_but_their_parts_are():
    data = named_shapes(600)
    pairs = {(data.factors(i)["colour"], SHAPE_KINDS[data.factors(i)["label"]]) for i in range(len(data))}
    assert not pairs & set(HELD_OUT_COMBINATIONS)
    for colour, shape in HELD_OUT_COMBINATIONS:
        assert any(c == colour for c, _ in pairs) and any(s == shape for _, s in pairs)
    everything = ShapesDataset(600, 16, seed=0, colours="named")
    factors = [everything.factors(i) for i in range(600)]
    assert set(HELD_OUT_COMBINATIONS) <= {(f["colour"], SHAPE_KINDS[f["label"]]) for f in factors}


def test_shapes_text_source_and_random_colour_captions():
    data = build_dataset("builtin:shapes-text", 16, 32, seed=0)
    assert data.colours == "named" and data.held_out == HELD_OUT_COMBINATIONS
    plain = build_dataset("builtin:shapes", 16, 32, seed=0)
    assert plain.factors(3)["colour"] == colour_name(plain.factors(3)["shape_rgb"])
    assert colour_name([0.9, 0.1, 0.05]) == "red" and colour_name([0.97, 0.97, 0.99]) == "white"
    with pytest.raises(ValueError, match="held_out"):
        ShapesDataset(4, 16, held_out=[("red", "triangle")])  # random colours cannot hold pairs out
    with pytest.raises(ValueError, match="held_out"):
        ShapesDataset(4, 16, colours="named", held_out=[("mauve", "triangle")])


# ---------------------------------------------------------------------------------------------------------
# captions in the latent store


@pytest.fixture(scope="session")
def text_store(kl_model, tmp_path_factory) -> Path:
    """builtin:shapes-text (48 images, 16 px) encoded in shards of 16."""
    out = tmp_path_factory.mktemp("text_store") / "latents"
    args = ["encode", "--model", str(kl_model), "--data", "builtin:shapes-text", "--builtin-samples", "48"]
    assert main([*args, "--shard-size", "16", "--num-workers", "0", "--out", str(out)]) == 0
    return out


def test_encode_stores_captions_and_the_reader_returns_them(text_store, tmp_path):
    manifest = json.loads((text_store / "manifest.json").read_text())
    assert manifest["captions"] is True and manifest["captioned_samples"] == 48
    store = LatentDataset(text_store, mode="mean", captions=True)
    data = build_dataset("builtin:shapes-text", 16, 48, seed=0)
    for i in (0, 17, 47):  # rows of three shards
        z, label, caption = store[i]
        assert caption == data.caption(store.sample_index(i)) == store.caption(i)
        assert label == data[store.sample_index(i)][1] and z.shape == store.latent_shape
    assert len(LatentDataset(text_store, mode="mean")[0]) == 2  # captions only when asked for

    uncaptioned = tmp_path / "uncaptioned"
    shutil.copytree(text_store, uncaptioned)
    (uncaptioned / "manifest.json").write_text(json.dumps({**manifest, "captions": False}))
    with pytest.raises(ConfigError, match="holds no captions"):
        LatentDataset(uncaptioned, captions=True)


def test_caption_rows_round_trip_any_utf8():
    captions = ["a red circle", "", "un cœur rouge, ½ taille", "猫"]
    rows = caption_rows(captions)
    assert rows.dtype == torch.uint8 and rows.shape == (4, len(captions[2].encode()))
    assert [bytes(row.tolist()).rstrip(b"\0").decode() for row in rows] == captions


# ---------------------------------------------------------------------------------------------------------
# tokenizer, text encoder, UNet


def test_tokenizer_learns_caption_words_pads_like_sd_and_never_meets_an_unknown_word(tokenizer, tmp_path):
    ids = tokenize(tokenizer, ["a red circle", ""])
    assert ids.shape == (2, 16)
    assert ids[0, :5].tolist() == [
        tokenizer.bos_token_id,
        *tokenizer.convert_tokens_to_ids(["a</w>", "red</w>", "circle</w>"]),
        tokenizer.eos_token_id,
    ]
    assert ids[1, 0] == tokenizer.bos_token_id and (ids[1, 1:] == tokenizer.pad_token_id).all()
    pieces = tokenizer.tokenize("zebra")  # never in a caption: falls apart into byte-level pieces
    assert len(pieces) > 1 and tokenizer.unk_token_id not in tokenizer.convert_tokens_to_ids(pieces)

    tokenizer.save_pretrained(tmp_path)
    from ldm_vae.models.text import write_bpe_files

    write_bpe_files(tokenizer, tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    merges = (tmp_path / "merges.txt").read_text().splitlines()[1:]  # first line: "#version: 0.2"
    from_files = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], model_max_length=16)
    assert torch.equal(
        tokenize(from_files, ["a small cyan ring in the top left", "zebra"]),
        tokenize(tokenizer, ["a small cyan ring in the top left", "zebra"]),
    )
    assert load_tokenizer(tmp_path).model_max_length == 16


def test_tokenizer_and_encoder_errors(tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="text.tokenizer=.*no such folder"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(ConfigError, match="text.encoder=.*config.json"):
        load_text_encoder(tmp_path, tokenizer)
    build_text_encoder(train_tokenizer(["a b"], 259, 16), 16, 1, 2).save_pretrained(tmp_path / "small_vocab")
    with pytest.raises(ConfigError, match="vocabulary has 260 tokens, the tokenizer"):
        load_text_encoder(tmp_path / "small_vocab", tokenizer)
    short = copy.deepcopy(tokenizer)
    short.model_max_length = 8
    build_text_encoder(short, 16, 1, 2).save_pretrained(tmp_path / "short")
    with pytest.raises(ConfigError, match="8 positions, but prompts have 16"):
        load_text_encoder(tmp_path / "short", tokenizer)


def test_frozen_encoder_gets_no_gradient_and_a_joint_one_does(tokenizer, tmp_path):
    torch.manual_seed(0)
    encoder = build_text_encoder(tokenizer, 32, 1, 2)
    encoder.save_pretrained(tmp_path / "encoder")
    unet = build_text_unet(TINY_TEXT_UNET, (4, 8, 8), cross_attention_dim=32)
    cross = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    assert cross.heads == 4 and cross.to_q.out_features == 32 and cross.to_k.in_features == 32  # 8-dim heads
    ids = tokenize(tokenizer, ["a red circle", "a blue ring"])
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 40])
    for frozen in (False, True):
        text_encoder = load_text_encoder(tmp_path / "encoder", tokenizer) if frozen else encoder
        model = TextConditionedUNet(unet, text_encoder)
        model.zero_grad()
        model(x, t, ids).sample.square().mean().backward()
        got_gradient = text_encoder.get_input_embeddings().weight.grad is not None
        assert got_gradient != frozen
        assert unet.conv_in.weight.grad is not None


# ---------------------------------------------------------------------------------------------------------
# train-ldm with model.conditioning=text

TEXT_OVERRIDES = [
    "model.block_out_channels=[16,32]",
    "model.attention_head_dim=8",
    "text.hidden_size=16",
    "text.num_layers=1",
    "data.num_workers=0",
    "train.batch_size=4",
    "train.max_steps=6",
    "train.log_every_steps=1",
    "train.image_every_steps=3",
    "train.checkpoint_every_steps=3",
    "optim.warmup_steps=2",
    "sample.per_class=1",
    "sample.num_inference_steps=2",
    "sample.prompts=[a red triangle in the centre, a cyan ring]",
]


def text_config(store: Path, run_dir: Path, *overrides: str) -> LDMTrainConfig:
    return load_config(
        LDMTrainConfig,
        "ldm-text-tiny",
        [*TEXT_OVERRIDES, f"data.latents={store}", f"run_dir={run_dir}", *overrides],
    )


@pytest.mark.slow
def test_train_text_exports_a_stable_diffusion_pipeline_with_a_trained_text_encoder(text_store, tmp_path):
    cfg = text_config(text_store, tmp_path / "run")
    run_dir = train(cfg)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["conditioning"] == "text" and report["reload_max_abs_diff"] == 0.0
    assert report["prompts"] == ["a red triangle in the centre", "a cyan ring"]
    assert report["text_encoder"]["trained"] and report["text_encoder"]["max_length"] == 16
    assert (run_dir / "samples.png").is_file()

    pipe = StableDiffusionPipeline.from_pretrained(run_dir / "pipeline")
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 16
    torch.manual_seed(cfg.seed)  # the initial text encoder: training moved it
    data = LatentDataset(text_store, captions=True)
    initial = build_denoiser(cfg, data, load_tokenizer(run_dir / "tokenizer"))
    trained = load_file(list_checkpoints(run_dir)[-1] / "unet.safetensors")
    for key, value in initial.state_dict().items():
        if key.startswith("text_encoder.") and key.endswith("weight"):
            assert not torch.equal(trained[key], value), f"{key} did not train"


@pytest.mark.slow
def test_text_resume_ends_with_the_weights_of_an_uninterrupted_run(text_store, tmp_path):
    uninterrupted = train(text_config(text_store, tmp_path / "a"))
    resumed = tmp_path / "b"
    midway = list_checkpoints(uninterrupted)[0]
    shutil.copytree(midway, resumed / "checkpoints" / midway.name)
    with pytest.raises(ConfigError, match="tokenizer: missing"):
        train(text_config(text_store, resumed, "train.resume=latest"))
    shutil.copytree(uninterrupted / "tokenizer", resumed / "tokenizer")
    train(text_config(text_store, resumed, "train.resume=latest"))
    a = load_file(list_checkpoints(uninterrupted)[-1] / "unet.safetensors")
    b = load_file(list_checkpoints(resumed)[-1] / "unet.safetensors")
    assert a.keys() == b.keys() and any(key.startswith("text_encoder.") for key in a)
    assert all(torch.equal(a[key], b[key]) for key in a), "resumed weights differ from the uninterrupted run"


@pytest.mark.slow
def test_a_frozen_pretrained_text_encoder_stays_as_it_was(text_store, tmp_path, tokenizer):
    torch.manual_seed(1)
    build_text_encoder(tokenizer, 16, 1, 2).save_pretrained(tmp_path / "encoder")
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    cfg = text_config(
        text_store,
        tmp_path / "run",
        f"text.encoder={tmp_path / 'encoder'}",
        f"text.tokenizer={tmp_path / 'tokenizer'}",
    )
    run_dir = train(cfg)
    report = json.loads((run_dir / "report.json").read_text())
    assert not report["text_encoder"]["trained"]
    assert report["text_encoder"]["tokenizer_vocab"] == len(tokenizer)
    before = CLIPTextModel.from_pretrained(tmp_path / "encoder").state_dict()
    after = StableDiffusionPipeline.from_pretrained(run_dir / "pipeline").text_encoder.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_dropped_captions_become_the_empty_prompt(tokenizer):
    drop = torch.tensor([True, False, True])
    captions = ["a red ring", "a cyan ring", "x"]
    inputs = conditioning_inputs("text", torch.zeros(3), drop, 6, tokenizer, captions)
    torch.testing.assert_close(inputs["input_ids"], tokenize(tokenizer, ["", "a cyan ring", ""]))
    labels = torch.tensor([0, 4, 2])
    assert conditioning_inputs("class", labels, drop, 6, None)["class_labels"].tolist() == [6, 4, 6]
    assert conditioning_inputs("none", labels, drop, 6, None) == {}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["diffusion.prediction_type=flow"], "prediction_type=flow with model.conditioning=text"),
        (["data.normalization=shift_scale"], "data.normalization=shift_scale with model.conditioning=text"),
        (
            ["model.attention_levels=[false,false]", "model.attention_head_dim=12"],
            r"block_out_channels\[-1\]=32: the middle block cross-attends",
        ),
        (["text.hidden_size=17"], "text.hidden_size=17: must be divisible by text.num_heads=2"),
        (["text.vocab_size=100"], "text.vocab_size=100"),
    ],
)
def test_text_config_errors_are_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        text_config(tmp_path, tmp_path, *overrides)


def test_a_store_without_captions_is_refused_for_text(kl_model, tmp_path, capsys):
    out = tmp_path / "latents"
    args = ["encode", "--model", str(kl_model), "--builtin-samples", "8", "--num-workers", "0"]
    assert main([*args, "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "captions": False}))
    overrides = [*TEXT_OVERRIDES, f"data.latents={out}", f"run_dir={tmp_path / 'run'}"]
    assert main(["train-ldm", "ldm-text-tiny", *overrides]) == 2
    assert "holds no captions" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# StableDiffusionPipeline export


def sd_images(pipe, prompts, seed=0, **kwargs) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    kwargs = {"num_inference_steps": 3, "guidance_scale": 3.0, "output_type": "np", **kwargs}
    return pipe(prompts, generator=generator, **kwargs).images


SD_CHILD = """
from diffusers import StableDiffusionPipeline
import numpy as np
pipe = StableDiffusionPipeline.from_pretrained(FOLDER)
pipe.set_progress_bar_config(disable=True)
def images(seed=0, **kwargs):
    kwargs = {"num_inference_steps": 3, "guidance_scale": 3.0, "output_type": "np", **kwargs}
    return pipe(PROMPTS, generator=torch.Generator().manual_seed(seed), **kwargs).images
np.savez(
    OUT,
    first=images(),
    again=images(),
    negative=images(negative_prompt=["a green square"] * len(PROMPTS)),
    unguided=images(guidance_scale=1.0),
)
"""


@pytest.mark.slow
def test_stable_diffusion_export_loads_and_samples_without_ldm_vae(tokenizer, tmp_path):
    pipe = make_text_pipe(tokenizer)
    prompts = ["a red circle on a dark background", "a blue triangle in the top left"]
    expected = sd_images(pipe, prompts)
    assert expected.shape == (2, 16, 16, 3)
    folder = save_stable_diffusion(pipe, tmp_path / "pipeline")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    assert (folder / "tokenizer" / "vocab.json").is_file() and (folder / "tokenizer" / "merges.txt").is_file()

    out = tmp_path / "child.npz"
    child = run_without_ldm_vae(
        SD_CHILD, tmp_path, FOLDER=str(folder), OUT=str(out), PROMPTS=prompts, THREADS=torch.get_num_threads()
    )
    assert child == {
        "repo_modules": [],
        "pipeline_class": "diffusers.pipelines.stable_diffusion."
        "pipeline_stable_diffusion.StableDiffusionPipeline",
    }
    result = np.load(out)
    np.testing.assert_array_equal(result["first"], expected)  # the reload samples exactly what was saved
    np.testing.assert_array_equal(result["again"], expected)
    assert np.abs(result["negative"] - expected).max() > 1e-3, "the negative prompt changed nothing"
    assert np.abs(result["unguided"] - expected).max() > 1e-3, "guidance changed nothing"
    assert np.abs(expected[0] - expected[1]).max() > 1e-3, "two prompts gave the same image"


@pytest.mark.parametrize(
    "problem, match",
    [("vq", "AutoencoderKL"), ("shift", "normalization must be 'scale'"), ("flow", "DDPM-path scheduler")],
)
def test_stable_diffusion_export_refuses_what_it_would_decode_wrongly(tokenizer, problem, match):
    vae = tiny_vae("vq" if problem == "vq" else "kl")
    if problem == "shift":
        vae.register_to_config(shift_factor=0.2)
    scheduler = FlowMatchEulerDiscreteScheduler() if problem == "flow" else DDIMScheduler()
    encoder = build_text_encoder(tokenizer, 32, 1, 2)
    unet = build_text_unet(TINY_TEXT_UNET, (4, 8, 8), 32)
    with pytest.raises(ConfigError, match=match):
        stable_diffusion_pipeline(vae, encoder, tokenizer, unet, scheduler)


# ---------------------------------------------------------------------------------------------------------
# the class-conditional pipeline travels with its code

LDM_CHILD = """
from diffusers import DiffusionPipeline
import numpy as np

pipe = DiffusionPipeline.from_pretrained(FOLDER, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
def images(**kwargs):
    generator = torch.Generator().manual_seed(0)
    return pipe(num_inference_steps=3, generator=generator, output_type="np", **kwargs).images
np.savez(OUT, guided=images(class_labels=[0, 2], guidance_scale=2.0), plain=images(class_labels=[0, 2]))
"""


@pytest.mark.slow
def test_class_conditional_pipeline_loads_with_trust_remote_code_without_ldm_vae(tmp_path):
    torch.manual_seed(0)
    vae = tiny_vae("kl")
    vae.register_to_config(scaling_factor=0.7, shift_factor=0.1)
    pipe = LatentDiffusionPipeline(
        vae=vae, unet=tiny_unet(4, 4), scheduler=DDIMScheduler(num_train_timesteps=50, clip_sample=False)
    )
    with torch.no_grad():
        pipe.unet.class_embedding.weight.normal_(std=5.0)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    expected = pipe(
        class_labels=[0, 2], guidance_scale=2.0, num_inference_steps=3, generator=generator, output_type="np"
    ).images
    pipe.save_pretrained(tmp_path / "pipeline")
    index = json.loads((tmp_path / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == ["latent_diffusion", "LatentDiffusionPipeline"]
    assert (tmp_path / "pipeline" / "latent_diffusion.py").is_file()

    out = tmp_path / "child.npz"
    child = run_without_ldm_vae(
        LDM_CHILD, tmp_path, FOLDER=str(tmp_path / "pipeline"), OUT=str(out), THREADS=torch.get_num_threads()
    )
    assert child["repo_modules"] == []
    assert child["pipeline_class"].endswith("latent_diffusion.LatentDiffusionPipeline")
    assert not child["pipeline_class"].startswith("ldm_vae")
    result = np.load(out)
    np.testing.assert_array_equal(result["guided"], expected)
    assert np.abs(result["plain"] - expected).max() > 1e-3, "guidance changed nothing"

    # Through our own class the folder loads as before: this class, no trust_remote_code needed.
    loaded = LatentDiffusionPipeline.from_pretrained(tmp_path / "pipeline")
    assert type(loaded) is LatentDiffusionPipeline
