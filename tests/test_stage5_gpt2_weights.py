"""Stage 5: OpenAI's GPT-2 weights in our GPTModel.

The mapping is checked against an independent implementation: Hugging Face transformers'
GPT2LMHeadModel, with a tiny random config, saved in the published safetensors format.
"""
import hashlib
import http.server
import threading

import pytest
import torch
from safetensors.torch import save_file

import helpers
from helpers import (DataFileError, GPTModel, download_file, generate_text_simple, gpt2_config,
                     gpt2_weights_path, load_gpt2_safetensors, load_pretrained_gpt2)

transformers = pytest.importorskip("transformers")

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


def test_missing_weights_offline_name_the_file_and_url(tmp_path, monkeypatch):
    unreachable = "http://127.0.0.1:9/{model_name}/model.safetensors"  # port 9: nothing listens
    monkeypatch.setattr(helpers, "GPT2_URL", unreachable)
    monkeypatch.delenv(helpers.MIRROR_ENV, raising=False)
    with pytest.raises(DataFileError) as info:
        load_pretrained_gpt2("gpt2-medium", models_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "gpt2-medium" / "model.safetensors") in message
    assert "http://127.0.0.1:9/gpt2-medium/model.safetensors" in message
    assert list(tmp_path.iterdir()) == []  # nothing half-made left behind


def test_a_local_file_with_the_wrong_hash_is_refused(tmp_path):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(DataFileError, match="not the published gpt2 model.safetensors"):
        gpt2_weights_path("gpt2", models_dir=tmp_path)


# --- the downloader, against a local HTTP server that honours Range requests ----------------

PAYLOAD = torch.randint(0, 256, (3_000_000,), generator=torch.Generator().manual_seed(0),
                        dtype=torch.uint8).numpy().tobytes()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    seen_ranges = []

    class Handler(http.server.BaseHTTPRequestHandler):
        honour_range = True

        def do_GET(self):
            start = 0
            header = self.headers.get("Range")
            seen_ranges.append(header)
            if header and Handler.honour_range:
                start = int(header.removeprefix("bytes=").rstrip("-"))
                if start >= len(PAYLOAD):
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD) - start))
            self.end_headers()
            self.wfile.write(PAYLOAD[start:])

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/model.safetensors", seen_ranges, Handler
    httpd.shutdown()
    httpd.server_close()


def test_download_checks_size_and_hash(tmp_path, server, capsys):
    url, seen, _ = server
    dest = download_file(url, tmp_path / "m" / "model.safetensors", len(PAYLOAD), SHA)
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.safetensors"]
    assert seen == [None]
    assert "(100%)" in capsys.readouterr().out  # the progress line


def test_an_interrupted_download_resumes_with_a_range_request(tmp_path, server):
    url, seen, _ = server
    (tmp_path / "model.safetensors.part").write_bytes(PAYLOAD[:1_000_000])
    dest = download_file(url, tmp_path / "model.safetensors", len(PAYLOAD), SHA)
    assert seen == ["bytes=1000000-"]
    assert dest.read_bytes() == PAYLOAD


def test_a_server_that_ignores_range_still_gives_the_right_file(tmp_path, server):
    url, seen, handler = server
    handler.honour_range = False
    (tmp_path / "model.safetensors.part").write_bytes(b"x" * 1000)
    dest = download_file(url, tmp_path / "model.safetensors", len(PAYLOAD), SHA)
    assert dest.read_bytes() == PAYLOAD


def test_a_complete_part_file_is_verified_and_kept(tmp_path, server):
    url, seen, _ = server
    (tmp_path / "model.safetensors.part").write_bytes(PAYLOAD)
    dest = download_file(url, tmp_path / "model.safetensors", len(PAYLOAD), SHA)
    assert seen == [f"bytes={len(PAYLOAD)}-"] and dest.read_bytes() == PAYLOAD


def test_a_download_with_the_wrong_hash_is_not_kept(tmp_path, server):
    url, _, _ = server
    with pytest.raises(DataFileError, match="wrong SHA-256"):
        download_file(url, tmp_path / "model.safetensors", len(PAYLOAD), "0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_a_download_of_the_wrong_size_is_reported(tmp_path, server):
    url, _, _ = server
    with pytest.raises(DataFileError, match="stopped at 3,000,000 of 3,000,001 bytes"):
        download_file(url, tmp_path / "model.safetensors", len(PAYLOAD) + 1)
