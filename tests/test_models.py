"""models.model_fingerprint: the key that ties stored reference log-probs to one model."""

from __future__ import annotations

import os
import shutil

import pytest

from srlm_hpc import models
from srlm_hpc.models import ModelNotFoundError, model_fingerprint


def test_fingerprint_follows_weights_and_config_not_location(tmp_path, tiny_llama):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_llama, a)
    shutil.copytree(tiny_llama, b)
    assert model_fingerprint(a) == model_fingerprint(b)  # a copy elsewhere is the same model
    weights = b / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert model_fingerprint(b) != model_fingerprint(a)
    (a / "config.json").write_text((a / "config.json").read_text().replace('"rms_norm_eps"', '"rms_norm_eps" '))
    assert model_fingerprint(a) != model_fingerprint(tiny_llama)


def test_fingerprint_is_cached_until_a_file_changes(tmp_path, tiny_llama, monkeypatch):
    m = tmp_path / "m"
    shutil.copytree(tiny_llama, m)
    first = model_fingerprint(m)
    hashed = []
    monkeypatch.setattr(models, "sha256_file", lambda p: hashed.append(p) or "x")
    assert model_fingerprint(m) == first and hashed == []  # from the cache: no file read
    st = (m / "model.safetensors").stat()
    os.utime(m / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # rewritten in place
    assert model_fingerprint(m) != first and len(hashed) >= 2


def test_unwritable_cache_only_costs_the_rehash(tmp_path, tiny_llama, monkeypatch):
    expected = model_fingerprint(tiny_llama)
    m = tmp_path / "ro"
    shutil.copytree(tiny_llama, m, ignore=shutil.ignore_patterns(".srlm-fingerprint.json"))

    def read_only(*a, **k):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(models, "atomic_open", read_only)
    assert model_fingerprint(m) == expected
    assert not (m / ".srlm-fingerprint.json").exists()


def test_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json or weight files"):
        model_fingerprint(tmp_path)
