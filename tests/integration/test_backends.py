"""Both backends against a direct sentence-transformers encode of the real bundled model."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.errors import ModelUnavailable
from app.inference.backends import load_backend
from app.inference.sources import local_model_dir
from tests.support.models import (  # noqa: F401  (fixtures)
    SAMPLE_TEXTS,
    cosine_rows,
    engine_settings,
    minilm_dir,
    minilm_onnx_dir,
    minilm_spec,
    reference_model,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def torch_backend(minilm_dir):
    backend = load_backend(minilm_spec(), minilm_dir, "cpu", engine_settings().inference)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def onnx_backend(minilm_onnx_dir):
    backend = load_backend(minilm_spec(backend="fastembed"), minilm_onnx_dir, "cpu", engine_settings().inference)
    yield backend
    backend.close()


def test_package_source_resolves_to_the_bundled_files(minilm_dir):
    assert (minilm_dir / "model.safetensors").is_file()
    assert (minilm_dir / "modules.json").is_file()


def test_path_source_and_missing_sources(minilm_dir, tmp_path):
    assert local_model_dir(minilm_spec(package=None, path=minilm_dir)) == minilm_dir
    with pytest.raises(ModelUnavailable, match="not a model directory"):
        local_model_dir(minilm_spec(package=None, path=tmp_path / "nowhere"))
    with pytest.raises(ModelUnavailable, match="not installed"):
        local_model_dir(minilm_spec(package="no_such_model_package_xyz"))
    with pytest.raises(ModelUnavailable, match="must be downloaded"):
        local_model_dir(minilm_spec(package=None, repo_id="someone/some-model"))


def assert_matches_direct_encode(backend, reference_model, normalize: bool) -> None:
    ours = backend.encode(SAMPLE_TEXTS, normalize=normalize)
    direct = reference_model.encode(SAMPLE_TEXTS, normalize_embeddings=normalize, convert_to_numpy=True)
    assert ours.dtype == np.float32 and ours.shape == (len(SAMPLE_TEXTS), 384)
    assert cosine_rows(ours, direct).min() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(direct, axis=1), rtol=1e-3)


@pytest.mark.parametrize("normalize", [True, False])
def test_torch_backend_matches_direct_encode(torch_backend, reference_model, normalize):
    assert_matches_direct_encode(torch_backend, reference_model, normalize)


def test_onnx_export_layout(minilm_onnx_dir):
    manifest = json.loads((minilm_onnx_dir / "citadel_onnx.json").read_text())
    assert manifest == {
        "pooling": "mean",
        "normalize": True,
        "max_seq_length": 256,
        "dimensions": 384,
        "onnx_file": "model.onnx",
    }
    assert json.loads((minilm_onnx_dir / "tokenizer_config.json").read_text())["model_max_length"] == 256
    assert (minilm_onnx_dir / "tokenizer.json").is_file()


@pytest.mark.parametrize("normalize", [True, False])
def test_fastembed_backend_matches_direct_encode(onnx_backend, reference_model, normalize):
    assert_matches_direct_encode(onnx_backend, reference_model, normalize)


def test_batch_composition_does_not_change_a_vector(torch_backend, onnx_backend):
    # Padding must be masked out: a text alone and next to a long one embeds the same.
    for backend in (torch_backend, onnx_backend):
        alone = backend.encode(["hello world"], normalize=True)
        padded = backend.encode(["hello world", SAMPLE_TEXTS[2]], normalize=True)[:1]
        assert cosine_rows(alone, padded)[0] >= 0.99999


@pytest.mark.parametrize("normalize", [True, False])
def test_encoding_the_admission_token_ids_gives_exactly_the_text_encode(torch_backend, normalize):
    # Tokenize once: the ids counted at admission go to the model; vectors must not change, the
    # over-long sample (truncated) and the padding of a mixed batch included.
    from app.domain.embedding import TokenIdBackend

    assert isinstance(torch_backend, TokenIdBackend)
    texts = [*SAMPLE_TEXTS, "  spaced  out  ", "x"]
    ids = torch_backend.token_ids(texts)
    assert [len(i) for i in ids] == torch_backend.token_counts(texts)
    from_ids = torch_backend.encode_ids(ids, normalize)
    from_texts = torch_backend.encode(texts, normalize)
    np.testing.assert_allclose(from_ids, from_texts, atol=1e-6)


def test_token_counts_are_before_truncation(torch_backend, onnx_backend, reference_model):
    expected = [len(reference_model.tokenizer(t)["input_ids"]) for t in SAMPLE_TEXTS]
    assert torch_backend.token_counts(SAMPLE_TEXTS) == expected
    assert onnx_backend.token_counts(SAMPLE_TEXTS) == expected
    assert expected[-1] > 256  # the long sample really is past max_seq_length
    assert torch_backend.max_seq_length == onnx_backend.max_seq_length == 256


def test_fastembed_without_an_onnx_file_says_how_to_get_one(minilm_dir):
    with pytest.raises(ModelUnavailable, match="export-onnx"):
        load_backend(minilm_spec(backend="fastembed"), minilm_dir, "cpu", engine_settings().inference)


def test_catalog_dimensions_are_checked(minilm_onnx_dir):
    spec = minilm_spec(backend="fastembed", dimensions=768)
    with pytest.raises(ModelUnavailable, match="384-dimensional"):
        load_backend(spec, minilm_onnx_dir, "cpu", engine_settings().inference)


def test_cuda_device_without_cuda_is_model_unavailable(minilm_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the test is about machines without it")
    with pytest.raises(ModelUnavailable, match="CUDA"):
        load_backend(minilm_spec(), minilm_dir, "cuda:0", engine_settings().inference)


def test_the_unpadded_forward_gives_the_padded_forwards_vectors(torch_backend, minilm_dir, reference_model):
    # The default torch path computes no padding; a backend with it switched off pads. Both must
    # give sentence-transformers' vectors for a batch of very mixed lengths (one past the cap).
    from app.inference.backends import unpadded_bert

    assert torch_backend.forward_kind == "unpadded"  # scripted: runs without the GIL
    inference = engine_settings().inference.model_copy(update={"unpadded": False})
    padded_backend = load_backend(minilm_spec(), minilm_dir, "cpu", inference)
    try:
        assert padded_backend.forward_kind == "padded"
        texts = ["a", *SAMPLE_TEXTS, "short one", "a somewhat longer sentence about vector search " * 3]
        ids = torch_backend.token_ids(texts)
        for normalize in (True, False):
            unpadded = torch_backend.encode_ids(ids, normalize)
            padded = padded_backend.encode_ids(ids, normalize)
            np.testing.assert_allclose(unpadded, padded, atol=1e-5)
            direct = reference_model.encode(texts, normalize_embeddings=normalize, convert_to_numpy=True)
            np.testing.assert_allclose(unpadded, direct, atol=1e-5)
        # A text alone and inside a mixed batch embeds the same (no leak across packed texts).
        alone = torch_backend.encode_ids(ids[:1], True)
        np.testing.assert_allclose(alone, torch_backend.encode_ids(ids, True)[:1], atol=1e-6)
    finally:
        padded_backend.close()
    assert unpadded_bert.supports(reference_model)


def test_a_cpu_backend_runs_concurrent_passes_on_its_share_of_the_cores(torch_backend, reference_model):
    # Two passes at once (the CPU default where there are 2 cores or more), each on its threads:
    # every pass gets its own texts' vectors, by ids and by texts (encode serialises the tokenizer).
    import torch

    from app.inference import cpu_share

    inference = engine_settings().inference
    assert torch_backend.passes_at_once == cpu_share.passes_at_once(inference)
    assert torch.get_num_threads() == cpu_share.threads_per_pass(inference)
    groups = [[f"group {g} text {i} " * (1 + i % 5) for i in range(12)] for g in range(4)]
    expected = [reference_model.encode(group, normalize_embeddings=True, convert_to_numpy=True) for group in groups]
    with ThreadPoolExecutor(max_workers=2) as threads:
        by_ids = list(threads.map(lambda g: torch_backend.encode_ids(torch_backend.token_ids(g), True), groups))
        by_texts = list(threads.map(lambda g: torch_backend.encode(g, True), groups))
    for want, got_ids, got_texts in zip(expected, by_ids, by_texts):
        np.testing.assert_allclose(got_ids, want, atol=1e-5)
        np.testing.assert_allclose(got_texts, want, atol=1e-5)


def test_the_scripted_forward_is_the_eager_function_compiled(reference_model, monkeypatch):
    # The torch this project installs scripts the forward (so a pass runs without the GIL); where
    # torch cannot script it, the encoder falls back to the same function run eagerly, same vectors.
    import torch

    from app.inference.backends import unpadded_bert

    scripted_encoder = unpadded_bert.UnpaddedBertEncoder(reference_model)
    assert scripted_encoder.scripted

    def no_torchscript(_function):
        raise RuntimeError("TorchScript is not available in this torch")

    monkeypatch.setattr(torch.jit, "script", no_torchscript)
    eager_encoder = unpadded_bert.UnpaddedBertEncoder(reference_model)
    assert not eager_encoder.scripted
    texts = ["a", "short one", SAMPLE_TEXTS[0], "a somewhat longer sentence about vector search " * 3]
    ids = [reference_model.tokenizer(t)["input_ids"] for t in texts]
    scripted = scripted_encoder.encode(ids).numpy()
    np.testing.assert_allclose(scripted, eager_encoder.encode(ids).numpy(), atol=1e-6)
    with torch.inference_mode():
        direct = reference_model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(scripted, direct, atol=1e-5)


def test_the_unpadded_forward_refuses_pipelines_it_does_not_reproduce(reference_model):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense

    from app.inference.backends import unpadded_bert

    modules = list(reference_model)
    with_dense = SentenceTransformer(modules=[*modules[:2], Dense(384, 384), modules[2]], device="cpu")
    assert not unpadded_bert.supports(with_dense)
    without_pooling = SentenceTransformer(modules=[modules[0]], device="cpu")
    assert not unpadded_bert.supports(without_pooling)
    bert_config = modules[0].auto_model.config
    try:
        bert_config.hidden_act = "gelu_new"  # the tanh approximation: not what packed_forward applies
        assert not unpadded_bert.supports(reference_model)
    finally:
        bert_config.hidden_act = "gelu"


def test_the_unpadded_forward_reproduces_cls_pooling(reference_model):
    # The bundled model pools by mean; the same transformer under CLS pooling checks the other path.
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling

    from app.inference.backends import unpadded_bert

    cls_model = SentenceTransformer(modules=[list(reference_model)[0], Pooling(384, pooling_mode="cls")], device="cpu")
    assert unpadded_bert.supports(cls_model)
    texts = ["a", "short one", SAMPLE_TEXTS[0], "a somewhat longer sentence about vector search " * 3]
    ids = [cls_model.tokenizer(t)["input_ids"] for t in texts]
    with torch.inference_mode():
        unpadded = unpadded_bert.UnpaddedBertEncoder(cls_model).encode(ids).numpy()
    direct = cls_model.encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(unpadded, direct, atol=1e-5)
