"""The Docker files cannot be built here (no Docker engine): check by parsing that every
fedsilo command they run exists with the options they pass, and that images run unprivileged."""

import json
import re
from pathlib import Path

import click
import typer
import yaml

from common.cli import app

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def _check_command(args: list[str]) -> None:
    command: click.Command = typer.main.get_command(app)
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        assert name in command.commands, f"fedsilo has no command {name!r} ({args})"
        command = command.commands[name]
    options = {opt for param in command.params for opt in param.opts + param.secondary_opts}
    options.add("--help")
    used = {arg.split("=")[0] for arg in rest if arg.startswith("--")}
    assert used <= options, f"unknown options {sorted(used - options)} in {args}"


def test_compose_services_run_existing_commands_with_existing_options():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"coordinator", "site-de", "site-fr", "site-it"} <= services.keys()
    for name, service in services.items():
        _check_command(service["command"])
        ports = service.get("ports", [])
        assert all(port.startswith("127.0.0.1:") for port in ports), name


def test_dockerfile_commands_exist_and_images_run_unprivileged():
    text = (DOCKER / "Dockerfile").read_text()
    for cmd in re.findall(r"^CMD (\[.*\])$", text, flags=re.M):
        _check_command(json.loads(cmd))
    assert re.search(r"^USER fedsilo$", text, flags=re.M)
    assert "ARG TORCH_VARIANT=cpu" in text and 'torch==2.13.0' in text
    assert "--constraint docker/constraints.txt" in text


def test_the_setup_script_uses_existing_commands():
    script = (DOCKER / "local-federation.sh").read_text()
    calls = re.findall(r"fedsilo ((?:coordinator|site|run|data|config|model)[^\n;|>]*)", script)
    assert len(calls) >= 6
    for call in calls:
        args = [a.strip("'\"") for a in call.replace("\\", " ").split()]
        args = [a for a in args if not a.startswith("$") and "/" not in a or a.startswith("--")]
        _check_command([a for a in args if a])
