"""tiny-sd3: a real StableDiffusion3Pipeline folder that loads offline with checksums verified,
stays in its size budget, encodes prompts exactly as its training did, follows the prompt,
rebuilds from `python -m helpers.train tiny-sd3` (smoke configuration), and whose card renders
from its stored measurements. Also: the training trick for the pipeline's zero T5 tokens is exact."""

import json
import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
from diffusers.models.attention_processor import JointAttnProcessor2_0

from helpers import evaluate, shapes, zoo
from helpers.train import card, cli, registry
from helpers.train.tiny_sd3 import (T5_DEFAULT, CountedZeroTokens, TinySD3Config, build_transformer,
                                    clip_with_projection, sd3_caption_bank)

SD3 = zoo.ASSETS / "tiny-sd3"


@pytest.fixture(scope="module")
def pipe():
    return zoo.load_pipeline("tiny-sd3", device="cpu")


def test_folder_is_a_real_sd3_pipeline(pipe):
    zoo.verify(SD3)
    assert isinstance(pipe, StableDiffusion3Pipeline)
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    assert type(pipe.text_encoder).__name__ == type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 3.0
    assert pipe.vae.config.shift_factor is not None          # SD3's decode adds it back
    tr = pipe.transformer.config
    assert tr.joint_attention_dim == 2 * pipe.text_encoder.config.hidden_size
    assert tr.pooled_projection_dim == 2 * pipe.text_encoder.config.projection_dim
    # the plain diffusers call, as SD3's docs drop T5
    again = StableDiffusion3Pipeline.from_pretrained(SD3, text_encoder_3=None, tokenizer_3=None, local_files_only=True)
    assert isinstance(again.transformer, type(pipe.transformer))


def test_weights_budget_and_base():
    mine = sum(p.stat().st_size for p in SD3.rglob("*.safetensors"))
    total = sum(p.stat().st_size for p in zoo.ASSETS.rglob("*.safetensors"))
    assert mine <= 10e6 and total <= zoo.WEIGHTS_BUDGET, (mine, total)
    info = json.loads((SD3 / "train_info.json").read_text())
    sd = zoo.ASSETS / "tiny-sd"
    rec = info["base"]["sha256"]
    assert rec["vae/diffusion_pytorch_model.safetensors"] == zoo.sha256(sd / "vae/diffusion_pytorch_model.safetensors")
    assert zoo.sha256(SD3 / "vae/diffusion_pytorch_model.safetensors") == rec["vae/diffusion_pytorch_model.safetensors"]


def test_prompt_encoding_is_what_training_used(pipe):
    """The pipeline's encode_prompt (two CLIP encoders, no T5 tokens) equals the caption bank
    the transformer was trained on."""
    index, toks, pooled = sd3_caption_bank(pipe.tokenizer, pipe.text_encoder)
    caps = ["a large red circle at the top left", ""]
    caps = [c for c in index if c][:3] + [""]
    emb, _, pool, _ = pipe.encode_prompt(caps, None, None, do_classifier_free_guidance=False, max_sequence_length=0)
    rows = [index[c] for c in caps]
    torch.testing.assert_close(emb, toks[rows])
    torch.testing.assert_close(pool, pooled[rows])
    emb256, *_ = pipe.encode_prompt(caps, None, None, do_classifier_free_guidance=False)
    assert emb256.shape[1] == emb.shape[1] + T5_DEFAULT and emb256[:, emb.shape[1]:].abs().max() == 0


def test_clip_with_projection_keeps_the_weights():
    sd = zoo.load_pipeline("tiny-sd", device="cpu")
    te = clip_with_projection(sd.text_encoder)
    ids = sd.tokenizer(["a small blue square"], padding="max_length", max_length=16, return_tensors="pt").input_ids
    torch.testing.assert_close(te(ids).last_hidden_state, sd.text_encoder(ids).last_hidden_state)


@pytest.mark.parametrize("n", [0, 1, 7, T5_DEFAULT])
def test_counted_zero_token_is_n_zero_tokens(n):
    """One zero token with logit bias log N == the pipeline's N zero T5 tokens (random weights)."""
    m = build_transformer(TinySD3Config())
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    B = 3
    x, toks, pooled, t = torch.randn(B, 4, 8, 8), torch.randn(B, 16, 128), torch.randn(B, 128), torch.rand(B) * 1000
    with torch.no_grad():
        ref = m(hidden_states=x, encoder_hidden_states=torch.cat([toks, torch.zeros(B, n, 128)], 1),
                pooled_projections=pooled, timestep=t).sample
        m.set_attn_processor(CountedZeroTokens())
        bias = torch.full((B,), math.log(n) if n else float("-inf"))
        got = m(hidden_states=x, encoder_hidden_states=torch.cat([toks, torch.zeros(B, 1, 128)], 1),
                pooled_projections=pooled, timestep=t, joint_attention_kwargs={"token_bias": bias}).sample
        m.set_attn_processor(JointAttnProcessor2_0())
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)


def test_follows_the_prompt(pipe):
    m = json.loads((SD3 / "metrics.json").read_text())
    acc = evaluate.judge_accuracy(pipe, n=16, guidance_scale=m["best_guidance"], steps=25, seed=5,
                                  max_sequence_length=0)
    assert acc["color"] >= 0.8 and acc["shape"] >= 0.7, acc
    assert min(m["guidance"][f"{m['best_guidance']:g}"][k] for k in ("color", "shape")) >= 0.9   # the card's claim


def test_quick_training_writes_a_loadable_folder(tmp_path, monkeypatch):
    out = tmp_path / "tiny-sd3"
    cli.main(["tiny-sd3", "--quick", "--no-eval", "--out", str(out)])
    info = json.loads((out / "train_info.json").read_text())
    assert info["model"] == "tiny-sd3" and info["base"]["sha256"] and info["latents"]["scaling_factor"] > 0
    zoo.verify(out)
    monkeypatch.setenv(zoo.env_var("tiny-sd3"), str(out))
    p = zoo.load_pipeline("tiny-sd3", device="cpu")
    img = p("a red circle", num_inference_steps=2, output_type="pt", max_sequence_length=0).images
    assert img.shape == (1, 3, 64, 64) and torch.isfinite(img).all()


def test_shipped_card_renders_from_its_stored_measurements():
    info = json.loads((SD3 / "train_info.json").read_text())
    assert registry.model_of(info).NAME == "tiny-sd3"
    assert card.render_stored_card(SD3) == (SD3 / "README.md").read_text()


def test_judge_sees_real_renders():
    """Sanity of the measuring stick the card uses."""
    b = shapes.make_batch(8, seed=3)
    assert shapes.judge((b["pixel_values"] + 1) / 2, targets=b["attributes"]).accuracy["color"] == 1.0


def test_forward_flops_counts_joint_attention(pipe):
    """forward_flops counts SD3's joint attention (JointAttnProcessor2_0's fused attention, on its math
    backend) and both streams, and leaves the processors as they were."""
    tr = pipe.transformer
    x, c, p, t = torch.randn(2, 4, 8, 8), torch.randn(2, 20, 128), torch.randn(2, 128), torch.tensor([300.0, 800.0])
    flops = evaluate.forward_flops({"sd3": (tr, lambda: tr(hidden_states=x, encoder_hidden_states=c,
                                                           pooled_projections=p, timestep=t))})["sd3"]
    assert flops > 2 * evaluate.param_count(tr.transformer_blocks) * 2   # attention and both streams counted
    assert all(isinstance(a, JointAttnProcessor2_0) for a in tr.attn_processors.values())
