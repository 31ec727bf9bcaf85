"""Registries, the LLM interface contract and the ``hicur`` command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hicur_monai import registry
from hicur_monai.cli import COMMAND_MODULES, build_parser, main
from hicur_monai.llm.base import ChatModel, GenerationConfig, validate_messages


def test_registry_create_and_errors():
    @registry.NETWORKS("unit_test_net", "a test entry")
    class Net:
        def __init__(self, width: int = 2) -> None:
            self.width = width

    assert "unit_test_net" in registry.names("networks")
    assert registry.create("networks", "unit_test_net", width=5).width == 5
    with pytest.raises(KeyError, match="no component 'nope' in registry 'networks'"):
        registry.get("networks", "nope")
    with pytest.raises(KeyError, match="unknown registry"):
        registry.get("gadgets", "x")


def test_registry_create_from_a_bundle_config():
    from monai.bundle import ConfigParser

    @registry.TEXT_ENCODERS("unit_test_encoder", "a test entry")
    def make(dim: int) -> dict:
        return {"dim": dim}

    parser = ConfigParser({"enc": {"_target_": "hicur_monai.registry.create", "store": "text_encoders",
                                   "name": "unit_test_encoder", "dim": 7}})
    assert parser.get_parsed_content("enc") == {"dim": 7}


def test_chat_model_contract():
    class Echo(ChatModel):
        def chat(self, messages, config=None):
            return messages[-1]["content"].upper()

    assert Echo()([{"role": "user", "content": "hi"}], GenerationConfig()) == "HI"
    with pytest.raises(ValueError, match=r"messages\[0\]\['role'\]"):
        validate_messages([{"role": "wizard", "content": "x"}])
    with pytest.raises(ValueError, match="empty"):
        validate_messages([])


def test_cli_lists_every_command_module():
    import argparse
    import importlib

    help_text = build_parser().format_help()
    for module, commands in COMMAND_MODULES.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).add_parser(sub)  # every command module imports cleanly
        assert tuple(sub.choices) == commands, module  # and adds exactly the commands declared for it
        assert all(c in help_text for c in commands)


def test_cli_imports_only_the_module_a_command_needs():
    parser = build_parser("demo-data")
    choices = parser._subparsers._group_actions[0].choices
    assert set(choices) == {"demo-data", "demo"}


def test_cli_demo_data_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["demo-data", str(tmp_path / "c"), "--preset", "tiny", "--patients", "3", "--workers", "1"]) == 0
    assert "patients=3" in capsys.readouterr().out
    assert (tmp_path / "c" / "datalist.json").is_file()


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "hicur_monai.cli", "--version"],
                         capture_output=True, text=True, check=True)
    assert "hicur-monai" in out.stdout
