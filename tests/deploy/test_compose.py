"""docker-compose.yml and docker/mmserve.env, in step with `Settings`, without a Docker engine.

Every setting reaches the container through the env file, the example names every setting at its
default, the variables that shape only the compose files are no settings (so passing them in changes
nothing), and no mount makes Docker create a folder in the checkout. docker/smoke-test.sh runs the files
for real (`docker compose config`, then `up`) where an engine is available.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from service.settings import Settings
from tests.support.server import REPO_ROOT

COMPOSE_FILES = [REPO_ROOT / "docker-compose.yml", *sorted((REPO_ROOT / "docker").glob("compose*.yml"))]
ENV_EXAMPLE = REPO_ROOT / "docker" / "mmserve.env"
SETTING_LINE = re.compile(r"^#?\s*(MMSERVE_\w+)=(.*)$")
INTERPOLATED = re.compile(r"\$\{(\w+)")  # ${NAME}, ${NAME:-default}, ${NAME-default}


class _ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags (!reset, !override), read as plain values."""


_ComposeLoader.add_multi_constructor("!", lambda loader, suffix, node: _plain(loader, node))


def _plain(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_scalar(node)


def _load(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)  # a SafeLoader subclass: no arbitrary objects


def _api() -> dict[str, Any]:
    return _load(REPO_ROOT / "docker-compose.yml")["services"]["api"]


def _setting(variable: str) -> str:
    return variable.removeprefix("MMSERVE_").lower()


def test_every_setting_reaches_the_container_through_the_env_file() -> None:
    api = _api()
    assert {"path": ".env", "required": False} in api["env_file"]  # optional: `up` works without one
    environment = api["environment"]
    unknown = {name for name in environment if _setting(name) not in Settings.model_fields}
    assert not unknown, f"not settings: {unknown}"
    models = {f"MMSERVE_{name.upper()}" for name in Settings.model_fields if name.endswith("model")}
    assert models <= set(environment), models - set(environment)  # MMSERVE_TRANSCRIBE_MODEL among them
    assert environment["MMSERVE_HOST"] == "0.0.0.0" and environment["MMSERVE_PORT"] == "8000"  # the image's


def test_the_example_env_file_names_every_setting_at_its_default() -> None:
    shown: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := SETTING_LINE.match(line):
            assert match[1] not in shown, f"{match[1]} twice"
            shown[match[1]] = match[2]
    names = {_setting(variable) for variable in shown}
    missing = [f"# MMSERVE_{name.upper()}={field.default}" for name, field in Settings.model_fields.items()
               if name not in names]  # fmt: skip
    assert not missing, f"add to {ENV_EXAMPLE.name}: {missing}"
    assert names <= set(Settings.model_fields), names - set(Settings.model_fields)
    for variable, value in shown.items():
        name = _setting(variable)
        default = Settings.model_fields[name].default
        if default is not None:  # an unset one shows an example value
            parsed = getattr(Settings.model_validate({name: value}), name)
            assert parsed == default, f"{variable}={value}, but the default is {default!r}"


def test_the_compose_only_variables_are_no_settings() -> None:
    """They go into the container with the rest of .env; being no settings, the service ignores them."""
    environment = set(_api()["environment"])
    for path in COMPOSE_FILES:
        for variable in set(INTERPOLATED.findall(path.read_text())) - environment:
            if variable.startswith("MMSERVE_"):
                assert _setting(variable) not in Settings.model_fields, f"{path.name}: {variable} is a setting"


def test_no_mount_creates_a_folder_in_the_checkout() -> None:
    """A short-syntax bind mount of a missing folder makes Docker create it, owned by root."""
    for path in COMPOSE_FILES:
        for name, service in _load(path).get("services", {}).items():
            for volume in service.get("volumes", []):
                if isinstance(volume, str):  # a fixed file or folder of the repository only
                    source = volume.split(":")[0]
                    assert "$" not in source and (REPO_ROOT / source).exists(), f"{path.name} {name}: {volume}"
                elif volume["type"] == "bind":
                    assert volume["bind"]["create_host_path"] is False, f"{path.name} {name}: {volume}"
    [models] = _api()["volumes"]
    assert models["source"] == "${MMSERVE_MODELS_DIR:-./models}" and models["read_only"] is True
    assert (REPO_ROOT / "models").is_dir()  # the default is in the checkout (its README is tracked)
