"""Embedding: image decoding of odd modes, per-row errors, text token counts, and checkpoint loading."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from coderflow.tasks.embed.encode import _decoded_batches, decode_image, embed_samples, encode_texts, token_counts
from coderflow.tasks.embed.model import load_model

torch.set_num_threads(1)


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "img",
    [
        Image.new("CMYK", (8, 8), (0, 50, 100, 0)),
        Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000),
        Image.new("P", (8, 8)),
        Image.new("RGBA", (8, 8), (10, 20, 30, 0)),
        Image.new("L", (8, 8), 7),
    ],
    ids=["cmyk", "16bit", "palette", "rgba", "gray"],
)
def test_decode_odd_modes(img: Image.Image):
    fmt = "JPEG" if img.mode == "CMYK" else "PNG"
    out = decode_image(_encode(img, fmt))
    assert out.mode == "RGB" and out.size == (8, 8)


@pytest.fixture(scope="module")
def lm():
    return load_model("ViT-S-32-alt")


def test_next_batch_decodes_while_the_current_one_is_used():
    second_batch_decoded = threading.Event()

    def prepare(i: int) -> tuple[dict, int]:
        if i == 3:
            second_batch_decoded.set()
        return {"i": i}, i

    with ThreadPoolExecutor(1) as pool:
        batches = _decoded_batches(range(5), prepare, 2, pool)
        first = next(batches)
        # nothing asked for batch 2 yet: it is decoding already (the model would be running on batch 1 now)
        assert second_batch_decoded.wait(5), "batch 2 did not start decoding before batch 1 was handed out"
        assert [i for _, i in first] == [0, 1]
        assert [[i for _, i in b] for b in batches] == [[2, 3], [4]]


def test_embed_samples_records_bad_rows(lm):
    good = _encode(Image.new("RGB", (40, 30), (200, 10, 10)))
    samples = [
        {"__key__": "a", "png": good, "cls": b"1"},
        {"__key__": "b", "jpg": b"garbage", "cls": b"0"},
        {"__key__": "c", "txt": b"no image"},
        {"__key__": "d", "png": good},
    ]
    batches: list[int] = []  # the progress callback hears of every batch
    meta = {"dataset": "d", "split": "test", "shard": "s0"}
    table = embed_samples(samples, lm, batch_size=3, meta=meta, on_batch=batches.append)
    assert batches == [3, 1]
    rows = table.to_pylist()
    assert [r["sample_key"] for r in rows] == ["a", "b", "c", "d"]
    assert [r["status"] for r in rows] == ["ok", "error", "error", "ok"]
    assert "UnidentifiedImageError" in rows[1]["error"] and rows[2]["error"] == "sample has no image entry"
    assert rows[0]["label"] == 1 and rows[3]["label"] is None
    a, d = np.array(rows[0]["embedding"]), np.array(rows[3]["embedding"])
    assert np.isclose(np.linalg.norm(a), 1, atol=1e-5) and np.allclose(a, d, atol=1e-5)  # same image, same vector
    assert rows[0]["model_id"] == "ViT-S-32-alt__random"
    assert rows[1]["embedding"] is None and rows[2]["embedding"] is None and len(rows[3]["embedding"]) == 256
    assert {(r["dataset"], r["split"], r["shard"]) for r in rows} == {("d", "test", "s0")}


def test_text_embeddings_and_truncation(lm):
    long = "word " * 100
    assert token_counts(["a photo of a cat.", long], lm)[1] > lm.context_length
    vecs = encode_texts(["a photo of a cat.", "a photo of a dog.", "a photo of a cat."], lm, batch_size=2)
    assert vecs.shape == (3, 256)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert np.allclose(vecs[0], vecs[2], atol=1e-5) and not np.allclose(vecs[0], vecs[1])


def test_checkpoint_file_loads_through_pretrained(lm, tmp_path: Path):
    """A state_dict saved to a file loads through the same `pretrained=` path a user takes for real weights."""
    import open_clip

    model, _, _ = open_clip.create_model_and_transforms("ViT-S-32-alt", pretrained=None)
    ckpt = tmp_path / "my-weights.pt"
    torch.save(model.state_dict(), ckpt)
    loaded = load_model("ViT-S-32-alt", str(ckpt))
    assert loaded.model_id.startswith("ViT-S-32-alt__file-")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(x), loaded.model.encode_image(x), atol=1e-5)
        assert not torch.allclose(lm.model.encode_image(x), loaded.model.encode_image(x), atol=1e-3)


def test_unknown_model_and_bad_weights(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Nope'"):
        load_model("ViT-Nope")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not load weights"):
        load_model("ViT-S-32-alt", str(bad))


def test_random_weights_are_the_same_model_every_time():
    """`<name>__random` must be one model: embeddings from different runs and processes are compared."""
    from coderflow.tasks.embed.model import create_model

    torch.manual_seed(123)  # the caller's RNG state must not matter
    a, _ = create_model("ViT-S-32-alt", None)
    b, _ = create_model("ViT-S-32-alt", None)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


PROMPTS = [
    "a photo of a cat.", "a blurry photo of a golden retriever, a type of pet.", "dog",
    "a siamese cat which has blue almond-shaped eyes and a cream coat with darker points", "",
    "a very long description of a thing " * 12,  # truncated at the context length: pooled at the last position
]  # fmt: skip
TINY_BIDIRECTIONAL = {  # a SigLIP-style text tower (no causal mask, 'last' pooling): trimming would change it
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {
        "context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2, "no_causal_mask": True,
        "pool_type": "last", "proj_bias": True,
    },
    "custom_text": True,
}  # fmt: skip


def _loaded(name: str, **kwargs) -> object:
    import open_clip

    from coderflow.tasks.embed.model import LoadedModel

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(name, **kwargs)
    return LoadedModel(model.eval(), preprocess, open_clip.get_tokenizer(name), name, torch.device("cpu"))


@pytest.mark.parametrize(
    ("name", "kwargs", "trimmed"),
    [
        ("ViT-S-32-alt", {}, True),  # CLIP: the text tower's parts on the model, argmax pooling
        ("ViT-S-32-alt", {"force_custom_text": True}, True),  # CustomTextCLIP with open_clip's TextTransformer
        ("RN50", {}, True),  # a ResNet image tower, the same causal text tower
        ("tiny-bidirectional", {}, False),  # no causal mask: the plain encode_text
    ],
)
def test_trimmed_text_encoding_equals_encode_text(tmp_path: Path, name: str, kwargs: dict, trimmed: bool):
    import json

    import open_clip

    from coderflow.tasks.embed.encode import causal_text_tower

    if name == "tiny-bidirectional":
        (tmp_path / f"{name}.json").write_text(json.dumps(TINY_BIDIRECTIONAL))
        open_clip.add_model_config(tmp_path / f"{name}.json")
    lm = _loaded(name, **kwargs)
    assert (causal_text_tower(lm.model) is not None) == trimmed
    with torch.inference_mode():
        reference = torch.nn.functional.normalize(lm.model.encode_text(lm.tokenizer(PROMPTS)).float(), dim=-1).numpy()
    got = encode_texts(PROMPTS, lm, batch_size=4)  # batches of different lengths, rows back in input order
    assert got.shape == reference.shape
    assert np.abs(got - reference).max() <= 1e-5


def test_text_store_embeds_each_text_once(lm, tmp_path: Path):
    from coderflow.storage.layout import Layout
    from coderflow.tasks.embed.text_store import TextStore

    calls = []

    def load():
        calls.append(1)
        return lm

    layout = Layout.at(tmp_path)
    store = TextStore(layout, "m", load)
    first = store.encode(["a cat", "a dog", "a cat"])
    assert store.encoded == 2 and np.allclose(first[0], first[2])
    assert store.flush() == 2 and store.flush() == 0
    again = TextStore(layout, "m", load)  # a later stage, another process: answered from the stored part
    assert np.allclose(again.encode(["a dog", "a cat"]), first[[1, 0]]) and again.encoded == 0
    assert again.encode(["a bird"]).shape == (1, first.shape[1]) and again.encoded == 1
    assert len(again.stored_ids()) == 3
    assert np.allclose(first, encode_texts(["a cat", "a dog", "a cat"], lm), atol=1e-6)


def test_decode_worker_processes_give_the_same_rows(lm):
    """Images decoded and preprocessed in worker processes: the same rows and embeddings as in threads."""
    samples = [
        {"__key__": f"k{i}", "png": _encode(Image.new("RGB", (40, 30), (i * 20, 50, 90))), "cls": b"1"}
        for i in range(7)
    ]
    samples.append({"__key__": "bad", "png": b"not an image", "cls": b"0"})
    meta = {"dataset": "d", "split": "test", "shard": "s0"}
    threads = embed_samples(samples, lm, batch_size=3, meta=meta, workers=0)
    procs = embed_samples(samples, lm, batch_size=3, meta=meta, workers=2)
    assert procs.column("sample_key").to_pylist() == threads.column("sample_key").to_pylist()
    assert procs.column("status").to_pylist() == threads.column("status").to_pylist()
    a = np.array([v for v in threads.column("embedding").to_pylist() if v is not None])
    b = np.array([v for v in procs.column("embedding").to_pylist() if v is not None])
    assert a.shape == (7, b.shape[1]) and np.abs(a - b).max() < 1e-6


def test_bf16_is_other_data_and_close_to_fp32(lm):
    from coderflow.config import ModelConfig
    from coderflow.tasks.embed.model import configured_model_id

    half = load_model("ViT-S-32-alt", None, precision="bf16")
    assert half.model_id == "ViT-S-32-alt__random__bf16" != lm.model_id
    assert configured_model_id(ModelConfig(precision="bf16"), "/tmp") == half.model_id
    texts = ["a photo of a cat.", "a drawing of a dog"]
    a, b = encode_texts(texts, lm), encode_texts(texts, half)
    assert (a * b).sum(axis=1).min() > 0.98  # autocast: same weights, bf16 matmuls
    img = torch.stack([lm.preprocess(Image.new("RGB", (32, 32), (200, 10, 10)))])
    from coderflow.tasks.embed.encode import encode_images

    assert float((encode_images(img, lm) * encode_images(img, half)).sum()) > 0.98
