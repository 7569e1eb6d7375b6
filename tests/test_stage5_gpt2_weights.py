"""Stage 5: OpenAI's GPT-2 weights in our GPTModel.

The mapping is checked against an independent implementation: Hugging Face transformers'
GPT2LMHeadModel, with a tiny random config, saved in the published safetensors format.
"""
import hashlib

import pytest
import torch
from safetensors.torch import save_file

import helpers
from helpers import (DataFileError, GPTModel, generate_text_simple, gpt2_config, gpt2_weights_path,
                     load_gpt2_safetensors, load_pretrained_gpt2)

try:  # the independent reference; only the tests that compare with it need it
    import transformers
except ImportError:
    transformers = None
needs_transformers = pytest.mark.skipif(transformers is None, reason="needs transformers (pip install -r requirements.txt)")

TINY = {"vocab_size": 101, "context_length": 32, "emb_dim": 24, "n_heads": 4, "n_layers": 2,
        "drop_rate": 0.0, "qkv_bias": True}


def tiny_hf_gpt2(tie_word_embeddings=True):
    config = transformers.GPT2Config(
        vocab_size=TINY["vocab_size"], n_positions=TINY["context_length"], n_embd=TINY["emb_dim"],
        n_head=TINY["n_heads"], n_layer=TINY["n_layers"], bos_token_id=0, eos_token_id=0,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    # GPT-2's own init sets biases to 0 and LayerNorms to 1/0, which would hide a bias or
    # LayerNorm mapped to the wrong place: make every tensor random and distinct.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def hf_greedy(model, ids, steps):
    for _ in range(steps):
        with torch.no_grad():
            next_id = model(ids).logits[:, -1].argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


def published_layout(hf_model, path):
    """The layout of the hub's openai-community/gpt2 file: no "transformer." prefix, and the
    attention mask stored as a buffer "h.N.attn.bias" (older transformers did so)."""
    state = {k: v.contiguous() for k, v in hf_model.transformer.state_dict().items()}
    n = TINY["context_length"]
    for i in range(TINY["n_layers"]):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, path)


@needs_transformers
@pytest.mark.parametrize("layout", ["save_pretrained", "published", "untied_head"])
def test_logits_and_greedy_text_match_transformers(tmp_path, layout):
    hf = tiny_hf_gpt2(tie_word_embeddings=layout != "untied_head")
    if layout == "published":
        path = tmp_path / "model.safetensors"
        published_layout(hf, path)
    else:
        hf.save_pretrained(tmp_path, safe_serialization=True)
        path = tmp_path / "model.safetensors"
    ours = load_gpt2_safetensors(path, TINY)
    assert not ours.training

    ids = torch.randint(0, TINY["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    prompt = ids[:1, :5]
    assert torch.equal(generate_text_simple(ours, prompt, 15, TINY["context_length"]),
                       hf_greedy(hf, prompt, 15))


@needs_transformers
def test_the_untied_head_really_comes_from_lm_head(tmp_path):
    hf = tiny_hf_gpt2(tie_word_embeddings=False)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_gpt2_safetensors(tmp_path / "model.safetensors", TINY)
    assert torch.equal(ours.out_head.weight, hf.lm_head.weight)
    assert not torch.equal(ours.out_head.weight, ours.tok_emb.weight)


@pytest.mark.parametrize("change,expected", [
    ({"n_layers": 1}, r"no place for, e\.g\. \['h\.1\."),
    ({"n_layers": 3}, r"no tensor 'h\.2\.attn\.c_attn\.weight'"),
    ({"emb_dim": 32}, r"wte\.weight: the file's tensor has shape \(101, 24\) but the model expects \(101, 32\)"),
    ({"qkv_bias": False}, r"h\.0\.attn\.c_attn\.bias \(Q part\): .*qkv_bias=True"),
])
@needs_transformers
def test_weights_for_another_config_fail_clearly(tmp_path, change, expected):
    tiny_hf_gpt2().save_pretrained(tmp_path, safe_serialization=True)
    with pytest.raises(ValueError, match=expected):
        load_gpt2_safetensors(tmp_path / "model.safetensors", {**TINY, **change})


def test_a_damaged_weights_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(DataFileError, match="not a readable safetensors file"):
        load_gpt2_safetensors(path, TINY)


@pytest.mark.parametrize("name,published_count", [
    ("gpt2", 124_439_808), ("gpt2-medium", 354_823_168),
    ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200),
])
def test_gpt2_configs_give_the_published_parameter_counts(name, published_count):
    with torch.device("meta"):  # shapes only, no memory
        model = GPTModel(gpt2_config(name))
    total = sum(p.numel() for p in model.parameters())
    assert total - model.out_head.weight.numel() == published_count  # the head is tied to wte


def test_an_unknown_model_name_is_refused():
    with pytest.raises(ValueError, match="gpt2-medium"):
        load_pretrained_gpt2("gpt-2")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """No mirror, an empty Hugging Face cache of our own, and huggingface_hub in offline mode."""
    from huggingface_hub import constants

    monkeypatch.delenv(helpers.MIRROR_ENV, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf-cache"


def test_missing_weights_offline_name_the_file_and_url(tmp_path, offline_hub):
    with pytest.raises(DataFileError) as info:
        load_pretrained_gpt2("gpt2-medium", data_dir=tmp_path / "data")
    message = str(info.value)
    assert "'gpt2/gpt2-medium/model.safetensors' was not found and could not be downloaded" in message
    assert "the Hugging Face cache" in message
    assert "https://huggingface.co/openai-community/gpt2-medium/resolve/main/model.safetensors" in message
    assert not (tmp_path / "data").exists()  # nothing half-made left behind


def fake_hf_cache(cache, repo, filename, payload, revision="0123abcd"):
    """The layout huggingface_hub keeps: models--owner--name/{refs/main, snapshots/REV/FILE}."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    (folder / "snapshots" / revision).mkdir(parents=True)
    (folder / "snapshots" / revision / filename).write_bytes(payload)
    return folder / "snapshots" / revision / filename


def test_weights_in_the_learners_hugging_face_cache_are_found_and_verified(tmp_path, offline_hub):
    payload = b"weights of a tiny model"
    cached = fake_hf_cache(offline_hub, "someone/tiny-gpt2", "model.safetensors", payload)
    entry = {"url": "https://huggingface.co/someone/tiny-gpt2/resolve/main/model.safetensors",
             "hf_repo": "someone/tiny-gpt2", "hf_filename": "model.safetensors",
             "sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    manifest = {"gpt2/tiny/model.safetensors": entry}
    found = helpers.get_data_file("gpt2/tiny/model.safetensors", data_dir=tmp_path / "data", manifest=manifest)
    assert found == cached
    bad = {"gpt2/tiny/model.safetensors": {**entry, "sha256": "0" * 64}}
    with pytest.raises(DataFileError, match="not the published file"):
        helpers.get_data_file("gpt2/tiny/model.safetensors", data_dir=tmp_path / "data", manifest=bad)


def test_a_local_file_with_the_wrong_hash_is_refused(tmp_path):
    (tmp_path / "gpt2" / "gpt2").mkdir(parents=True)
    (tmp_path / "gpt2" / "gpt2" / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(DataFileError, match="is not the published file"):
        gpt2_weights_path("gpt2", data_dir=tmp_path)


def test_every_gpt2_size_is_in_the_file_registry():
    manifest = helpers.load_manifest()
    for name in helpers.GPT2_SIZES:
        entry = manifest[f"gpt2/{name}/model.safetensors"]
        assert entry["hf_repo"] == f"openai-community/{name}"
        assert entry["url"].endswith(f"/openai-community/{name}/resolve/main/model.safetensors")
    assert manifest["gpt2/gpt2/model.safetensors"]["size"] == 548_105_171
