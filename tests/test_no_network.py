"""The test session cannot reach the network (tests/conftest.py blocks it)."""
from __future__ import annotations

import os
import socket
import urllib.request

import pytest


def test_urlopen_is_blocked():
    with pytest.raises(Exception, match="network access blocked"):
        urllib.request.urlopen("http://example.com", timeout=5)


def test_raw_socket_is_blocked():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(RuntimeError, match="network access blocked"):
            s.connect(("93.184.216.34", 80))
    finally:
        s.close()
    with pytest.raises(RuntimeError, match="network access blocked"):
        socket.create_connection(("example.com", 443), timeout=5)


def test_huggingface_download_fails(tmp_path, monkeypatch):
    """Even with offline mode switched off, a Hub download cannot get through."""
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    from huggingface_hub import hf_hub_download

    with pytest.raises(OSError):  # huggingface_hub's LocalEntryNotFoundError: nothing cached, offline
        hf_hub_download("openai/clip-vit-base-patch32", "config.json", cache_dir=tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    with pytest.raises(Exception) as e:
        hf_hub_download("openai/clip-vit-base-patch32", "config.json", cache_dir=tmp_path)
    assert not list(tmp_path.rglob("config.json"))
    chain, err = [], e.value
    while err is not None:
        chain.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    assert any("network access blocked" in c for c in chain), chain


def test_loopback_still_allowed():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        c = socket.create_connection(srv.getsockname(), timeout=5)
        c.close()
    finally:
        srv.close()
