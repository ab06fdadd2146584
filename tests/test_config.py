"""The config contract: defaults, and one clear line per mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hybrid.config import VERIFIER_THRESHOLDS, ConfigError, default_config, load_config, parse_config

GOOD = """
[server]
port = 9000

[[backends]]
name = "cpu"
kind = "llamacpp"
tier = "local"
model = "gemma-3-270m"
context = 8192

[[backends]]
name = "openai"
kind = "openai"
tier = "cloud"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
models = ["gpt-4o-mini", "gpt-4o"]

[routing]
default = "auto"
fallbacks = ["local", "cloud"]
overflow_wait_s = 2
"""


def test_good_config_loads(tmp_path: Path) -> None:
    p = tmp_path / "hybrid.toml"
    p.write_text(GOOD)
    cfg = load_config(p)
    assert cfg.server.port == 9000
    assert [b.name for b in cfg.backends] == ["cpu", "openai"]
    assert cfg.backend("openai").models == ["gpt-4o-mini", "gpt-4o"]
    assert cfg.routing.overflow_wait_s == 2.0 and isinstance(cfg.routing.overflow_wait_s, float)
    assert cfg.tiers == ["local", "cloud"]


def test_semantic_caching_is_opt_in_while_its_sealed_figures_miss_the_targets() -> None:
    """scripts/bench_cache.py on tests/data/cache_pairs_sealed_v15.txt misses both targets (README). Until both are
    met, the default caches exact repeats only; turned on, a candidate is confirmed by the int8 mpnet verifier behind
    the int8 MiniLM embedder, in the one band chosen on v8 and v12 pooled (commit 48e0652's rule)."""
    cfg = default_config().cache
    assert cfg.semantic is False
    assert (cfg.verifier, cfg.verifier_model, cfg.embedder_precision) == ("cross-encoder-int8", "mpnet", "int8")
    assert (cfg.similarity_threshold, cfg.verifier_threshold) == (0.75, 0.95)
    assert (cfg.close_similarity, cfg.close_verifier_threshold) == (0.75, 0.95)
    assert parse_config({"backends": [{"name": "a", "kind": "llamacpp", "model": "m.gguf"}]}).cache.semantic is False


def test_the_readme_config_shows_the_defaults() -> None:
    """The README's full config is what a newcomer copies and edits: each value in it is the default (its cache
    thresholds once lagged two retrainings behind), but for the keys it fills in as examples."""
    import re
    import tomllib

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```toml\n(.*?)```", readme, re.S)
    assert block is not None
    shown, defaults = tomllib.loads(block.group(1)), default_config()
    examples = {("server", "api_keys"), ("server", "teams"), ("server", "key_tags")}
    differ = [(section, key, value) for section in ("server", "limits", "costs", "ledger", "routing", "cache")
              for key, value in shown[section].items()
              if (section, key) not in examples and getattr(getattr(defaults, section), key) != value]
    assert not differ
    assert shown["cache"]["similarity_threshold"] == VERIFIER_THRESHOLDS[("mpnet", "int8")][0]


def test_without_the_verifier_the_default_similarity_threshold_is_the_guards() -> None:
    """The default threshold assumes a verifier confirms each candidate; turning it off without choosing a threshold
    gets the higher one the word-list guard needs, and a chosen one is kept."""
    backends = [{"name": "a", "kind": "llamacpp", "model": "m.gguf"}]
    assert parse_config({"backends": backends, "cache": {"verifier": "off"}}).cache.similarity_threshold == 0.90
    chosen = parse_config({"backends": backends, "cache": {"verifier": "off", "similarity_threshold": 0.6}})
    assert chosen.cache.similarity_threshold == 0.6
    assert parse_config({"backends": backends}).cache.similarity_threshold == default_config().cache.similarity_threshold


def test_each_pair_model_brings_its_own_default_thresholds() -> None:
    """The thresholds were chosen for each verifier model and embedder precision; a threshold the user sets is kept
    whichever they are, and setting either of the main two without the close band's makes one band of them."""
    backends = [{"name": "a", "kind": "llamacpp", "model": "m.gguf"}]

    def thresholds(cache: dict[str, object]) -> tuple[float, ...]:
        c = parse_config({"backends": backends, "cache": cache}).cache
        return c.similarity_threshold, c.verifier_threshold, c.close_similarity, c.close_verifier_threshold

    for model, precision in VERIFIER_THRESHOLDS:
        assert thresholds({"verifier_model": model, "embedder_precision": precision}) == VERIFIER_THRESHOLDS[
            (model, precision)]
    assert VERIFIER_THRESHOLDS[("mpnet", "int8")] == (0.75, 0.95, 0.75, 0.95) != VERIFIER_THRESHOLDS[
        ("minilm", "int8")]
    assert thresholds({"verifier_threshold": 0.97}) == (0.75, 0.97, 0.75, 0.97)  # one band: what was set
    assert thresholds({"similarity_threshold": 0.85}) == (0.85, 0.95, 0.85, 0.95)
    assert thresholds({"close_similarity": 0.9, "close_verifier_threshold": 0.5}) == (0.75, 0.95, 0.9, 0.5)
    assert thresholds({"close_verifier_threshold": 0.9}) == (0.75, 0.95, 0.75, 0.9)
    assert thresholds({"verifier_threshold": 0.97, "close_similarity": 0.9, "close_verifier_threshold": 0.5}) == (
        0.75, 0.97, 0.9, 0.5)
    assert thresholds({"verifier_model": "mpnet", "verifier": "off"})[0] == 0.90
    bars = parse_config({"backends": backends}).cache
    assert [bars.verifier_bar(s) for s in (0.75, 0.8499, 0.85, 1.0)] == [0.95, 0.95, 0.95, 0.95]  # one band
    two = parse_config({"backends": backends, "cache": {"close_similarity": 0.9, "close_verifier_threshold": 0.5}})
    assert [two.cache.verifier_bar(s) for s in (0.75, 0.8999, 0.90, 1.0)] == [0.95, 0.95, 0.50, 0.50]


@pytest.mark.parametrize(("cache", "message"), [
    ({"verifier": "nli"}, "cache.verifier: must be 'cross-encoder', 'cross-encoder-int8' or 'off' (got 'nli')"),
    ({"verifier_threshold": 1.0}, "cache.verifier_threshold: must be in [0, 1)"),
    ({"close_similarity": 0}, "cache.close_similarity: must be in (0, 1]"),
    ({"verifier_threshold": 0.9, "close_verifier_threshold": 0.95}, "cache.close_verifier_threshold: must be in "
     "[0, verifier_threshold = 0.9] (a closer candidate never needs a surer verifier)"),
    ({"verifier_model": "bert"}, "cache.verifier_model: must be one of minilm, mpnet (got 'bert')"),
    ({"embedder_precision": "fp16"}, "cache.embedder_precision: must be one of float32, int8 (got 'fp16')"),
])
def test_bad_verifier_settings_are_refused(cache: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"backends": [{"name": "a", "kind": "llamacpp", "model": "m.gguf"}], "cache": cache})
    assert str(err.value) == message


def test_embedded_default_is_the_bundled_model() -> None:
    cfg = default_config()
    assert [(b.kind, b.tier, b.model) for b in cfg.backends] == [("llamacpp", "local", "gemma-3-270m")]
    assert cfg.server.host == "127.0.0.1" and cfg.server.api_keys == []


BAD_CA = "/etc/hostname"  # a file that is not a PEM bundle


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (('kind = "llamacpp"', 'kind = "ollama"'), "backends[0].kind: must be one of llamacpp, openai, vllm (got 'ollama')"),
        (("port = 9000", 'port = "9000"'), "server.port: must be an integer"),
        (("port = 9000", "port = 70000"), "server.port: must be between 0 and 65535"),
        (("context = 8192", "contxt = 8192"), "backends[0].contxt: unknown key"),
        (('base_url = "https://api.openai.com/v1"', 'base_url = "api.openai.com"'), "backends[1].base_url: must start with http"),
        (('name = "openai"', 'name = "cpu"'), "backends[1].name: duplicate backend name 'cpu'"),
        (('models = ["gpt-4o-mini", "gpt-4o"]', "models = []"), "backends[1].models: list the model ids"),
        (("overflow_wait_s = 2", "overflow_wait_s = -1"), "routing.overflow_wait_s: must be >= 0"),
        (("[routing]", "[routeing]"), "routeing: unknown section"),
        (('api_key_env = "OPENAI_API_KEY"', 'proxy = "socks5://127.0.0.1:1080"'),
         "backends[1].proxy: '' (from the environment), 'none', or an http:// URL"),
        (('api_key_env = "OPENAI_API_KEY"', 'ca_file = "/nowhere/ca.pem"'), "backends[1].ca_file: no such file"),
        # each of these once gave a traceback instead of one line
        (("[routing]", '[routing]\nscorer = "no.such.module:Scorer"'), "routing.scorer: cannot load 'no.such.module:Scorer'"),
        (("[routing]", '[routing]\nscorer = "complex"'), "routing.scorer: cannot load 'complex'"),
        (("context = 8192", 'context = 8192\nchat_format = "alpaca"'), "backends[0].chat_format: must be one of"),
        (("port = 9000", 'port = 9000\nlog_level = "loud"'), "server.log_level: must be one of"),
        (('api_key_env = "OPENAI_API_KEY"', f'ca_file = "{BAD_CA}"'), "backends[1].ca_file: not a PEM bundle"),
        (('base_url = "https://api.openai.com/v1"', 'base_url = "http://"'), "backends[1].base_url: the URL has no host"),
        (('base_url = "https://api.openai.com/v1"', 'base_url = "http://h:port/v1"'), "backends[1].base_url: not a valid URL"),
        (('api_key_env = "OPENAI_API_KEY"', 'proxy = "http://"'), "backends[1].proxy: the URL has no host"),
        (('name = "openai"', 'name = "open\\r\\nai"'), "backends[1].name: letters, digits"),
        (('name = "openai"', 'name = "opénai"'), "backends[1].name: letters, digits"),
        (('tier = "cloud"', 'tier = "cl oud"'), "backends[1].tier: letters, digits"),
        (("[routing]", '[cache]\npath = "/etc"\n[routing]'), "cache.path: /etc is a folder"),
        (("[routing]", '[cache]\npath = "/etc/hostname/cache.sqlite3"\n[routing]'), "cache.path: cannot create or write"),
        (("port = 9000", 'port = 9000\nstatus_access = "open"'), "server.status_access: must be 'keyed' or 'public'"),
        (("port = 9000", "port = 9000\nmax_header_bytes = 0"), "server.max_header_bytes: must be positive"),
    ],
)
def test_mistakes_name_the_key(mutation: tuple[str, str], message: str) -> None:
    import tomllib

    old, new = mutation
    assert old in GOOD
    with pytest.raises(ConfigError) as info:
        parse_config(tomllib.loads(GOOD.replace(old, new, 1)))
    assert message in str(info.value)


def test_env_key_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = {"server": {"api_keys": ["env:K1", "plain"]}, "backends": [{"name": "a", "kind": "llamacpp", "model": "m.gguf"}]}
    monkeypatch.setenv("K1", "secret")
    assert parse_config(raw).server.api_keys == ["secret", "plain"]
    monkeypatch.delenv("K1")
    with pytest.raises(ConfigError, match=r"server.api_keys\[0\]: environment variable K1 is not set"):
        parse_config(raw)


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hybrid", *args], capture_output=True, text=True, timeout=60)


def test_cli_bad_config_fails_with_one_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(GOOD.replace('kind = "llamacpp"', "kind = 3"))
    res = _run_cli("serve", "--config", str(p))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0] == f"hybrid: config error: {p}: backends[0].kind: must be a string (got 3)"


def test_cli_missing_model_file_fails_with_one_line(tmp_path: Path) -> None:
    p = tmp_path / "missing.toml"
    p.write_text('[[backends]]\nname = "cpu"\nkind = "llamacpp"\nmodel = "/nowhere/model.gguf"\n')
    res = _run_cli("serve", "--config", str(p))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"hybrid: config error: {p}: backends[0].model: model file not found: /nowhere/model.gguf"
    ]


def test_cli_jinja_format_on_a_model_without_template_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "jinja.toml"
    p.write_text('[[backends]]\nname = "cpu"\nkind = "llamacpp"\nmodel = "gemma-3-270m"\nchat_format = "jinja"\n')
    res = _run_cli("serve", "--config", str(p))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"hybrid: config error: {p}: backends[0].chat_format: 'jinja', but gemma-3-270m-q4_k_m.gguf carries no "
        "chat template (use gemma or chatml)"
    ]


def test_cli_invalid_toml(tmp_path: Path) -> None:
    p = tmp_path / "broken.toml"
    p.write_text("[server\n")
    res = _run_cli("serve", "--config", str(p))
    assert res.returncode == 2 and "not valid TOML" in res.stderr
