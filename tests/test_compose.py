"""docker/compose.yaml, checked without Docker (no daemon, no base images on the dev machines).

What a `docker compose up` would find out late, found here in seconds: every command is a real
entry point and every flag it passes exists (the `modeltailor` Typer app, `mlflow server`,
`ray start`, the device server's argparse parser); every host:port that one container uses names
a service that listens on that port; MLflow's --allowed-hosts covers the names it is reached by;
every ${VAR} is in docker/.env.example and the secrets are required; the Ray nodes and the API
share one image, one token, the jobs volume and the cache; every build context, Dockerfile and
COPY source exists (and survives the Dockerfile's .dockerignore); the device-server image stays
torch-free. Not checked: that the images build and the containers start (that needs Docker).
"""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import re
import shlex
import sys
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
LOOPBACK = {"localhost", "127.0.0.1", "0.0.0.0", "[::1]"}
SHELLS = {"sh", "/bin/sh", "bash", "/bin/bash"}
KNOWN_IMAGES = {"postgres": {5432}}  # images used as they are: the port their server listens on
IMAGE_TOOLS = {"postgres": {"pg_isready"}}  # programs those images ship (healthchecks)
SCHEME_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "postgres": 5432}
DEVICE_SERVER_MODULE = "modeltailor.devices.server"

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s,'\"]+")
_HOST_PORT = re.compile(r"(?<![\w.:/-])([A-Za-z][A-Za-z0-9-]*|\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})(?![\w.])")


# -- reading the files -----------------------------------------------------------------------------


@cache
def raw() -> dict[str, Any]:
    """compose.yaml as YAML (merge keys resolved), before ${VAR} interpolation."""
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "compose.yaml has no services"
    return data


@cache
def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), f".env.example:{number}: not NAME=value"
        values[name] = value
    return values


def variables(text: str) -> list[tuple[str, str | None]]:
    """(name, operator) of every ${VAR} / $VAR in `text` ($$ is a literal $)."""
    return [(m.group(1) or m.group(4), m.group(2)) for m in _VAR.finditer(text) if m.group(0) != "$$"]


def interpolate(text: str, env: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1) or m.group(4), m.group(2), m.group(3) or ""
        value = env.get(name)
        if op in (":-", "-"):
            return value if value or (op == "-" and value is not None) else arg
        if op in (":?", "?"):
            assert value or (op == "?" and value is not None), f"${{{name}}} unset: {arg}"
            return value or ""
        if op in (":+", "+"):
            return arg if value else ""
        return value or ""

    return _VAR.sub(one, text)


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []


def _resolve(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {k: _resolve(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, env) for v in node]
    return node


@cache
def services() -> dict[str, dict[str, Any]]:
    """The services as compose would run them with .env.example, its empty secrets filled in."""
    required = {name for text in _strings(raw()) for name, op in variables(text) if op in (":?", "?")}
    env = {k: v or (f"secret-{k.lower()}" if k in required else "") for k, v in env_example().items()}
    return _resolve(raw()["services"], env)


def environment(spec: dict[str, Any]) -> dict[str, str]:
    env = spec.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def mounts(spec: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (a named volume, or a bind-mounted path as written)."""
    out = {}
    for item in spec.get("volumes") or []:
        if isinstance(item, dict):
            out[item["target"]] = item.get("source", "")
        else:
            source, _, rest = item.partition(":")
            out[rest.split(":")[0]] = source
    return out


@cache
def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    lines, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip().removesuffix("\\") + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


def build_of(spec: dict[str, Any]) -> tuple[Path, Path] | None:
    """(context, Dockerfile) of a service that builds its image."""
    build = spec.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        build = {"context": build}
    context = (DOCKER / build.get("context", ".")).resolve()
    return context, (context / build.get("dockerfile", "Dockerfile")).resolve()


def _exec_form(text: str) -> list[str] | None:
    if text.startswith("["):
        return list(json.loads(text))
    return ["/bin/sh", "-c", text] if text else None


def image_default(spec: dict[str, Any], instruction: str) -> list[str] | None:
    found = build_of(spec)
    if found is None:
        return None
    values = [rest for word, rest in dockerfile(found[1]) if word == instruction]
    return _exec_form(values[-1]) if values else None


def argv(spec: dict[str, Any]) -> list[str]:
    """What the container runs: compose's entrypoint/command over the image's ENTRYPOINT/CMD."""
    entry, command = spec.get("entrypoint"), spec.get("command")
    entry = shlex.split(entry) if isinstance(entry, str) else entry
    command = shlex.split(command) if isinstance(command, str) else command
    if entry is not None:  # compose: an entrypoint also drops the image's CMD
        return [*entry, *(command or [])]
    image_entry = image_default(spec, "ENTRYPOINT") or []
    return [*image_entry, *(command if command is not None else image_default(spec, "CMD") or [])]


def simple_commands(words: list[str]) -> list[list[str]]:
    """`sh -c 'a && exec b'` -> [[a...], [b...]]; anything else -> [words]."""
    if len(words) >= 3 and words[0] in SHELLS and words[1] == "-c":
        lexer = shlex.shlex(words[2], posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        commands: list[list[str]] = [[]]
        for token in lexer:
            if token in ("&&", "||", ";", "|"):
                commands.append([])
            else:
                commands[-1].append(token)
        return [c[1:] if c and c[0] == "exec" else c for c in commands if c]
    return [words] if words else []


def healthcheck_argv(spec: dict[str, Any]) -> list[list[str]]:
    test = (spec.get("healthcheck") or {}).get("test")
    if test is None:
        return []
    if isinstance(test, str):
        return simple_commands(["/bin/sh", "-c", test])
    if test[0] == "CMD-SHELL":
        return simple_commands(["/bin/sh", "-c", " ".join(test[1:])])
    assert test[0] == "CMD", f"healthcheck test must start with CMD or CMD-SHELL: {test}"
    return [list(test[1:])]


def image_name(spec: dict[str, Any]) -> str:
    return str(spec.get("image", "")).split("/")[-1].split(":")[0]


# -- the programs: their real command-line interfaces ----------------------------------------------


@cache
def console_script(name: str) -> str | None:
    found = [ep.value for ep in importlib.metadata.entry_points(group="console_scripts") if ep.name == name]
    return found[0] if found else None


@cache
def click_root(program: str) -> Any:
    """The click command behind a console script (Typer apps through typer.main.get_command)."""
    target = console_script(program)
    assert target, f"`{program}` is no installed console script"
    if program == "modeltailor":
        import typer

        from modeltailor.service.cli import app

        assert target == "modeltailor.service.cli:main", target
        return typer.main.get_command(app)
    module, _, attr = target.partition(":")
    if program == "ray":  # console script `ray.scripts.scripts:main` wraps the click group `cli`
        attr = "cli"
    command = getattr(__import__(module, fromlist=[attr]), attr)
    assert isinstance(command, click.Command), f"{target} is not a click command"
    return command


# Typer >= 0.25 runs on its own copy of click (typer._click): compare by shape, not by class
def _is_group(command: Any) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def _is_option(param: Any) -> bool:
    return getattr(param, "param_type_name", None) == "option"


def resolve_click(program: str, words: list[str]) -> tuple[Any, list[str], list[str]]:
    """(the (sub)command, its path, its arguments) for `program words...`."""
    command, path = click_root(program), [program]
    rest = list(words)
    while _is_group(command) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        sub = command.commands.get(name)
        assert sub is not None, (
            f"`{' '.join(path)} {name}`: no such command (there are: {', '.join(sorted(command.commands))})"
            + (" -- `modeltailor serve` is the API command; this fails until it lands in service/cli.py"
               if path == ["modeltailor"] and name == "serve" else "")
        )
        command, path = sub, [*path, name]
    return command, path, rest


def click_options(command: Any) -> dict[str, Any]:
    return {opt: p for p in command.params if _is_option(p) for opt in (*p.opts, *p.secondary_opts)}


def flags(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("-") and w != "-" and not re.fullmatch(r"-\d.*", w)]


def option_value(words: list[str], *names: str) -> str | None:
    """The value given to --name (as `--name value` or `--name=value`), last one wins."""
    value = None
    for i, word in enumerate(words):
        for name in names:
            if word == name and i + 1 < len(words):
                value = words[i + 1]
            elif word.startswith(name + "="):
                value = word.split("=", 1)[1]
    return value


def _option_strings(call: ast.expr) -> set[str]:
    """The option names of a `click.option("--a", "-a", ...)` call ("--x/--no-x": both)."""
    if not isinstance(call, ast.Call):
        return set()
    return {name for arg in call.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            and arg.value.startswith("-") for name in arg.value.split("/")}


def _options_in_source(cli_file: Path, function: str, shared_file: Path) -> frozenset[str]:
    """The options of the click command `function` (decorated with `@cli.command`), read from
    its source: `@click.option(...)` and shared `@cli_args.NAME` options (NAME = click.option(...))."""
    shared = {target.id: _option_strings(node.value) for node in ast.parse(shared_file.read_text()).body
              if isinstance(node, ast.Assign) for target in node.targets if isinstance(target, ast.Name)}
    [func] = [n for n in ast.parse(cli_file.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == function]
    options: set[str] = set()
    registered = False
    for decorator in func.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and target.attr == "command" and getattr(target.value, "id", "") == "cli":
            registered = True
        elif isinstance(target, ast.Attribute) and target.attr == "option":
            options |= _option_strings(decorator)
        elif isinstance(target, ast.Attribute) and getattr(target.value, "id", "") == "cli_args":
            options |= shared[target.attr]
    assert registered, f"{cli_file}: {function} is not a `cli` command"
    return frozenset(options)


@cache
def mlflow_server_options() -> frozenset[str]:
    """`mlflow server`'s options. Importing mlflow.cli takes seconds, so they are read from its
    source first; where that source has another shape, from the click command itself."""
    origin = importlib.util.find_spec("mlflow").origin  # finds the package without importing it
    base = Path(origin or "").parent
    options: frozenset[str] = frozenset()
    with contextlib.suppress(OSError, SyntaxError, LookupError, ValueError, AssertionError):
        options = _options_in_source(base / "cli" / "__init__.py", "server", base / "utils" / "cli_args.py")
    if not {"--backend-store-uri", "--host", "--port", "--allowed-hosts"} <= options:
        command, _, _ = resolve_click("mlflow", ["server"])
        options = frozenset(click_options(command))
    return options


@cache
def device_server_flags() -> frozenset[str]:
    """The device server's options, from its own --help (argparse, run as `python -m ...`)."""
    from modeltailor.devices import server

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        server.main(["--help"])
    return frozenset(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", out.getvalue()))


def check_program(service: str, words: list[str]) -> None:
    """Fail unless `words` runs a real entry point with options it has."""
    spec = services()[service]
    program, args = words[0], words[1:]
    where = f"service {service}: `{shlex.join(words)}`"
    if program == "mlflow" and args[:1] == ["server"]:
        assert console_script("mlflow") == "mlflow.cli:cli", console_script("mlflow")
        unknown = [f for f in flags(args[1:]) if f not in mlflow_server_options()]
        assert not unknown, f"{where}: `mlflow server` has no option {', '.join(unknown)}"
    elif program in ("modeltailor", "ray", "mlflow"):
        command, path, rest = resolve_click(program, args)
        assert not _is_group(command), f"{where}: `{' '.join(path)}` needs a subcommand"
        known = click_options(command)
        unknown = [f for f in flags(rest) if f not in known]
        assert not unknown, f"{where}: `{' '.join(path)}` has no option {', '.join(unknown)}"
        missing = [p.opts[0] for p in command.params if _is_option(p) and p.required
                   and not p.envvar and not set(p.opts) & set(flags(rest))]
        assert not missing, f"{where}: `{' '.join(path)}` requires {', '.join(missing)}"
    elif program in ("python", "python3") and args[:1] == ["-m"]:
        assert args[1] == DEVICE_SERVER_MODULE, f"{where}: unknown module {args[1]} (add a check here)"
        unknown = [f for f in flags(args[2:]) if f not in device_server_flags()]
        assert not unknown, f"{where}: the device server has no option {', '.join(unknown)}"
    elif program in ("python", "python3") and args[:1] == ["-c"]:
        ast.parse(args[1])  # a syntax error would make the healthcheck fail forever
    elif program in IMAGE_TOOLS.get(image_name(spec), set()):
        pass
    else:
        pytest.fail(f"{where}: unknown program {program!r} (add its check to tests/test_compose.py)")


def main_command(service: str) -> list[str]:
    """The long-running command of a service: the last of its simple commands."""
    commands = simple_commands(argv(services()[service]))
    return commands[-1] if commands else []


def runs(service: str, *prefix: str) -> bool:
    return any(c[: len(prefix)] == list(prefix) for c in simple_commands(argv(services()[service])))


def is_ray_node(service: str) -> bool:
    return runs(service, "ray", "start")


@cache
def listen_ports(service: str) -> frozenset[int]:
    """The TCP ports a service's server listens on, from its own command (or known defaults)."""
    spec = services()[service]
    if image_name(spec) in KNOWN_IMAGES and spec.get("build") is None:
        return frozenset(KNOWN_IMAGES[image_name(spec)])
    ports: set[int] = set()
    for words in simple_commands(argv(spec)):
        program, args = words[0], words[1:]
        if program == "mlflow" and args[:1] == ["server"]:
            ports.add(int(option_value(args, "--port", "-p") or 5000))  # MLflow's default port
        elif program == "modeltailor":
            command, _, rest = resolve_click(program, args)
            param = click_options(command).get("--port")
            if param is not None:
                ports.add(int(option_value(rest, *param.opts) or param.default))
        elif program == "ray" and args[:1] == ["start"] and "--head" in args:
            ports.add(int(option_value(args, "--port") or 6379))
        elif program in ("python", "python3") and args[:2] == ["-m", DEVICE_SERVER_MODULE]:
            port = option_value(args, "--port")
            assert port, f"service {service}: give the device server --port explicitly"
            ports.add(int(port))
    return frozenset(ports)


def references(text: str) -> list[tuple[str, int]]:
    """(host, port) of every URL and bare HOST:PORT in `text`."""
    found = []
    for url in _URL.findall(text):
        parts = urlsplit(url)
        if parts.hostname:
            port = parts.port or SCHEME_PORTS.get(parts.scheme.split("+")[0])
            assert port, f"{url}: give the port"
            found.append((parts.hostname, port))
    rest = _URL.sub(" ", text)
    found += [(host, int(port)) for host, port in _HOST_PORT.findall(rest)]
    return found


def devices_file(service: str) -> Path | None:
    """The repository file mounted as $MODELTAILOR_DEVICES in a service, if any."""
    target = environment(services()[service]).get("MODELTAILOR_DEVICES")
    if not target:
        return None
    source = mounts(services()[service]).get(target)
    assert source and source.startswith("."), f"service {service}: MODELTAILOR_DEVICES={target} is not bind-mounted"
    return (DOCKER / source).resolve()


def service_references(service: str) -> list[tuple[str, int, str]]:
    """(host, port, where) of every address a service uses: its environment, commands,
    healthcheck and the device profiles it is given."""
    spec = services()[service]
    texts = [(f"environment {k}", v) for k, v in environment(spec).items()]
    texts += [("command", w) for w in argv(spec)]
    texts += [("healthcheck", w) for c in healthcheck_argv(spec) for w in c]
    profiles = devices_file(service)
    if profiles is not None:
        texts += [(str(profiles.relative_to(ROOT)), s) for s in _strings(yaml.safe_load(profiles.read_text()))]
    return [(host, port, where) for where, text in texts for host, port in references(text)]


# -- the tests -------------------------------------------------------------------------------------


SERVICES = sorted(raw()["services"])


@pytest.mark.parametrize("service", SERVICES)
def test_every_command_is_a_real_entry_point_with_real_flags(service: str) -> None:
    spec = services()[service]
    commands = simple_commands(argv(spec)) + healthcheck_argv(spec)
    if not commands:
        assert image_name(spec) in KNOWN_IMAGES, f"service {service} runs nothing known"
    for words in commands:
        check_program(service, words)


@pytest.mark.parametrize("service", SERVICES)
def test_every_address_names_a_service_listening_there(service: str) -> None:
    spec = services()[service]
    defined = services()
    for host, port, where in service_references(service):
        if host in LOOPBACK:
            assert port in listen_ports(service), (
                f"service {service} ({where}): {host}:{port}, but it listens on {sorted(listen_ports(service))}")
        else:
            assert host in defined, f"service {service} ({where}): {host}:{port} names no service"
            assert port in listen_ports(host), (
                f"service {service} ({where}): {host}:{port}, but {host} listens on {sorted(listen_ports(host))}")
    for mapping in spec.get("ports") or []:
        container_port = int(str(mapping).split(":")[-1].split("/")[0])
        assert container_port in listen_ports(service), f"service {service} publishes {mapping}: nothing listens there"
    if spec.get("ports") or any(h == service for s in defined if s != service for h, _, _ in service_references(s)):
        for words in simple_commands(argv(spec)):
            host = option_value(words, "--host", "-h")
            assert host in (None, "0.0.0.0"), f"service {service} is reached from outside but listens on {host}"


def test_depends_on_names_services_and_waits_only_on_healthchecks() -> None:
    defined = services()
    for service, spec in defined.items():
        depends = spec.get("depends_on") or {}
        depends = dict.fromkeys(depends, {}) if isinstance(depends, list) else depends
        for name, how in depends.items():
            assert name in defined, f"service {service} depends on {name}, which is not defined"
            if (how or {}).get("condition") == "service_healthy":
                assert defined[name].get("healthcheck"), f"{service} waits for {name} to be healthy: it has no healthcheck"


def test_mlflow_allowed_hosts_cover_every_name_it_is_reached_by() -> None:
    servers = [s for s in services() if main_command(s)[:2] == ["mlflow", "server"]]
    assert len(servers) == 1, f"one `mlflow server` service expected, found {servers}"
    (name,) = servers
    words = main_command(name)
    allowed = {h.strip() for h in (option_value(words, "--allowed-hosts") or "").split(",") if h.strip()}
    assert allowed, "mlflow server needs --allowed-hosts in a container (MLflow >= 3.5 checks the Host header)"
    needed = {f"{host}:{port}" for other in services() if other != name
              for host, port, _ in service_references(other) if host == name}
    for mapping in services()[name].get("ports") or []:
        host_port = str(mapping).split(":")[-2]
        needed |= {f"localhost:{host_port}", f"127.0.0.1:{host_port}"}
    assert needed, "nothing uses the MLflow server"
    assert needed <= allowed, f"--allowed-hosts lacks {sorted(needed - allowed)}"


def test_every_variable_is_in_env_example_and_secrets_are_required() -> None:
    example = env_example()
    used = {name: op for text in _strings(raw()) for name, op in variables(text)}
    assert used.keys() <= example.keys(), f"not in docker/.env.example: {sorted(used.keys() - example.keys())}"
    assert example.keys() <= used.keys(), f"in docker/.env.example but unused: {sorted(example.keys() - used.keys())}"
    ops: dict[str, set[str | None]] = {}
    for text in _strings(raw()):
        for name, op in variables(text):
            ops.setdefault(name, set()).add(op)
    for name, seen in ops.items():
        if ":?" in seen:
            assert seen == {":?"}, f"${{{name}}} is required in one place, not in another: {seen}"
            assert example[name] == "", f"{name} is a secret: leave it empty in .env.example"
    secrets = {n for n in ops if "TOKEN" in n or "PASSWORD" in n}
    assert secrets and all(ops[n] == {":?"} for n in secrets), "every token/password must be ${VAR:?...}"
    ignores = (DOCKER / ".gitignore").read_text().split()
    assert ".env" in ignores, "docker/.env holds secrets: docker/.gitignore must list it"


def test_ray_nodes_and_api_share_image_token_jobs_and_cache() -> None:
    defined, data = services(), raw()["services"]
    nodes = [s for s in defined if is_ray_node(s)]
    heads = [s for s in nodes if "--head" in next(c for c in simple_commands(argv(defined[s])) if c[:2] == ["ray", "start"])]
    assert len(heads) == 1, f"one Ray head expected, found {heads}"
    clients = [s for s in defined if runs(s, "modeltailor") and option_value(main_command(s), "--address")]
    assert clients, "no modeltailor service connects to the Ray cluster"
    cluster = sorted(set(nodes) | set(clients))
    builds = {s: build_of(defined[s]) for s in cluster}
    assert len(set(builds.values())) == 1 and None not in builds.values(), f"one image for Ray and the API: {builds}"
    for s in cluster:
        env, raw_env = environment(defined[s]), environment(data[s])
        assert env.get("RAY_AUTH_MODE") == "token", f"service {s}: RAY_AUTH_MODE=token (Ray 2.60 token auth)"
        # the head is addressed by service name: Ray's gRPC must resolve it like the rest of the system
        assert env.get("GRPC_DNS_RESOLVER") == "native", f"service {s}: GRPC_DNS_RESOLVER=native"
        assert raw_env.get("RAY_AUTH_TOKEN") == environment(data[heads[0]]).get("RAY_AUTH_TOKEN"), (
            f"service {s}: the Ray token must be the head's")
    for client in clients:
        words = main_command(client)
        address = option_value(words, "--address") or ""
        assert address.split(":")[0] == heads[0], f"{client} connects to {address}, not the head {heads[0]}"
        # a driver given HOST:PORT attaches to a raylet on its own host: the client container is a node
        assert is_ray_node(client), f"service {client}: run `ray start --address=...` before the driver"
        jobs = option_value(words, "--jobs")
        shared = {"jobs": jobs, "MODELTAILOR_CACHE": environment(defined[client]).get("MODELTAILOR_CACHE")}
        for what, path in shared.items():
            assert path, f"service {client}: no {what}"
            volume = mounts(defined[client]).get(path)
            assert volume and volume in (raw().get("volumes") or {}), f"service {client}: {what} {path} is no named volume"
            for node in nodes:
                assert mounts(defined[node]).get(path) == volume, (
                    f"service {node}: trials need {what} as volume {volume} at {path}, like {client}")
                assert environment(defined[node]).get("MODELTAILOR_CACHE") == shared["MODELTAILOR_CACHE"]


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)b?", str(text).strip().lower())
    assert m, f"size {text!r}"
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def test_ray_object_stores_fit_in_shm() -> None:
    for service in (s for s in services() if is_ray_node(s)):
        spec = services()[service]
        start = next(c for c in simple_commands(argv(spec)) if c[:2] == ["ray", "start"])
        store = option_value(start, "--object-store-memory")
        assert store and spec.get("shm_size"), f"service {service}: set --object-store-memory and shm_size"
        assert int(store) < _size(spec["shm_size"]), f"service {service}: object store {store} > shm_size"


def test_named_volumes_and_bind_mounts_exist() -> None:
    declared = raw().get("volumes") or {}
    for service, spec in services().items():
        for target, source in mounts(spec).items():
            assert target.startswith("/"), f"service {service}: mount target {target}"
            if source.startswith((".", "/")):
                assert (DOCKER / source).resolve().exists(), f"service {service}: {source} does not exist"
            else:
                assert source in declared, f"service {service}: volume {source} is not declared"


def test_device_profiles_given_to_the_stack_load() -> None:
    from modeltailor.devices.profiles import list_devices

    files = {devices_file(s) for s in services()} - {None}
    assert files, "no service gets the stack's device profiles"
    for path in files:
        assert path is not None and path.is_file(), path
        names = dict(list_devices(path))
        remote = [spec for name, spec in names.items() if spec.kind == "remote" and "device-server" in spec.where]
        assert remote, f"{path}: no profile points at the stack's device server"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; a match of a folder covers it."""
    prefixes = ["/".join(path.split("/")[: i + 1]) for i in range(path.count("/") + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.removeprefix("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def _dockerignore(context: Path, dockerfile_path: Path) -> list[str]:
    for candidate in (dockerfile_path.with_name(dockerfile_path.name + ".dockerignore"), context / ".dockerignore"):
        if candidate.is_file():
            return [line.strip() for line in candidate.read_text().splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    return []


def built_images() -> dict[tuple[Path, Path], list[str]]:
    images: dict[tuple[Path, Path], list[str]] = {}
    for service, spec in services().items():
        found = build_of(spec)
        if found is not None:
            images.setdefault(found, []).append(service)
    return images


def test_build_contexts_dockerfiles_and_copy_sources_exist() -> None:
    assert built_images()
    for (context, path), users in built_images().items():
        assert context.is_dir(), f"{users}: build context {context} does not exist"
        assert path.is_file(), f"{users}: Dockerfile {path} does not exist"
        ignore = _dockerignore(context, path)
        for word, rest in dockerfile(path):
            if word not in ("COPY", "ADD"):
                continue
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            assert not rest.startswith("--from"), f"{path.name}: multi-stage COPY: extend this test"
            for source in parts[:-1]:
                matches = sorted(context.glob(source))
                assert matches, f"{path.name}: COPY {source}: nothing in {context} matches"
                for match in matches:
                    relative = match.relative_to(context).as_posix()
                    assert not _ignored(relative, ignore), f"{path.name}: COPY {relative}, but its .dockerignore drops it"


def _pip_installs(path: Path) -> list[str]:
    """The requirement names of every `pip install` in a Dockerfile's RUN lines."""
    names = []
    for word, rest in dockerfile(path):
        if word != "RUN":
            continue
        for segment in re.split(r"&&|;", rest):
            tokens = shlex.split(segment)
            if "pip" in tokens and "install" in tokens:
                args = tokens[tokens.index("install") + 1:]
                skip = False
                for token in args:
                    if skip:
                        skip = False
                    elif token in ("--index-url", "-i", "--extra-index-url", "-r", "-c"):
                        skip = True
                    elif not token.startswith("-") and token != ".":
                        names.append(re.split(r"[<>=!~\[; ]", token, maxsplit=1)[0].lower())
    return names


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _with_dependencies(names: list[str]) -> set[str]:
    """`names` and everything they require (as installed here; extras left out)."""
    seen: set[str] = set()
    todo = [_canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            for requirement in importlib.metadata.requires(name) or []:
                if "extra ==" not in requirement:
                    todo.append(_canonical(re.split(r"[<>=!~\[; (]", requirement, maxsplit=1)[0]))
    return seen


def test_device_server_image_is_torch_free_and_has_what_it_imports() -> None:
    servers = [s for s in services() if main_command(s)[:3] == ["python", "-m", DEVICE_SERVER_MODULE]]
    assert servers, "no device-server service"
    for service in servers:
        found = build_of(services()[service])
        assert found is not None, f"service {service}: build the device server image"
        context, path = found
        installed = _pip_installs(path)
        assert installed and not any(n.startswith("torch") for n in installed), f"{path.name} installs {installed}"
        available = _with_dependencies(installed)
        assert not any(n.startswith("torch") for n in available), f"{path.name} pulls in torch: {sorted(available)}"
        distributions = importlib.metadata.packages_distributions()
        copied = [context / s for w, rest in dockerfile(path) if w == "COPY" for s in shlex.split(rest)[:-1]]
        files = [f for c in copied for f in ([c] if c.is_file() else sorted(c.rglob("*.py")))]
        assert files
        for file in files:
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top == "modeltailor":
                        continue
                    assert {_canonical(d) for d in distributions.get(top, [top])} & available, (
                        f"{file.relative_to(ROOT)} imports {name}, which {path.name} does not install")


def test_mlflow_image_can_reach_its_backend_store() -> None:
    for service in (s for s in services() if main_command(s)[:2] == ["mlflow", "server"]):
        store = option_value(main_command(service), "--backend-store-uri") or ""
        found = build_of(services()[service])
        assert found is not None, f"service {service}: build the MLflow image"
        installed = _pip_installs(found[1])
        assert "mlflow" in installed, installed
        scheme = store.split("://")[0]
        if scheme.split("+")[0] in ("postgresql", "postgres"):
            # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg (3); name the driver the image has
            driver = scheme.partition("+")[2] or "psycopg"
            assert any(n == driver or n.startswith(driver + "-") for n in installed), (
                f"{found[1].name} lacks the {driver} driver of {scheme}:// (installs {installed})")


def test_makefile_has_up_and_down() -> None:
    text = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", text, re.M)
    assert phony and {"up", "down"} <= set(phony.group(1).split())
    for target, action in (("up", "up -d --build"), ("down", "down")):
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n?)+)", text, re.M)
        assert recipe, f"Makefile: no `{target}` target"
        assert f"docker compose -f docker/compose.yaml --env-file docker/.env {action}" in recipe.group(1)
        assert "docker/.env.example" in recipe.group(1) or target == "down"


def test_the_checks_catch_mistakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above are not vacuous: a wrong flag, subcommand or address is caught."""
    monkeypatch.setitem(services(), "probe", {"entrypoint": ["ray", "start", "--no-such-flag"]})
    with pytest.raises(AssertionError, match="no option --no-such-flag"):
        check_program("probe", ["ray", "start", "--no-such-flag"])
    with pytest.raises(AssertionError, match="no such command"):
        check_program("probe", ["ray", "strat", "--head"])
    with pytest.raises(AssertionError, match=r"no option --allowed-host\n"):
        check_program("probe", ["mlflow", "server", "--allowed-host=mlflow:5000"])
    assert {"--serve-artifacts", "--no-serve-artifacts", "-p", "--workers"} <= mlflow_server_options()
    with pytest.raises(AssertionError, match="no option --tracking"):
        check_program("probe", ["modeltailor", "campaign", "--config", "c.yaml", "--tracking", "x"])
    with pytest.raises(AssertionError, match="no option --prot"):
        check_program("probe", ["python", "-m", DEVICE_SERVER_MODULE, "--prot", "1"])
    assert references("postgresql://u:p@postgres:5432/db,ray-head:6379 http://localhost:8000/v1") == [
        ("postgres", 5432), ("localhost", 8000), ("ray-head", 6379)]
    assert _ignored(".venv/lib/x.py", ["*", "!devices"]) and not _ignored("devices/a.py", ["*", "!devices"])
    assert _ignored("devices/__pycache__/a.pyc", ["*", "!devices", "**/__pycache__"])
