"""The ``sendergate`` command line.

Exit statuses: 0 success, 1 an API error (commands that talk to a running gateway),
2 a usage or configuration error. Heavy imports (uvicorn, the app) happen inside the
commands, so that ``--help`` is quick and a bad config is reported before any of them.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import NoReturn

import click

from gateway.errors import ConfigError
from gateway.settings import Settings, config_path_from, load_settings

CONFIG_HELP = "config file [default: $SENDERGATE_CONFIG, else ./config.toml]"


def _config_failed(exc: ConfigError) -> NoReturn:
    """Report a bad config the way every command does: one line naming the key, exit 2."""
    click.echo(f"config error: {exc.detail}", err=True)
    sys.exit(2)


def _load(path: str | None) -> Settings:
    """Load and fully validate a config: the settings, then each source's provider, which
    checks its secret's format and its ``[sources.NAME.options]`` (offline)."""
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        _config_failed(exc)
    from gateway.providers import build_provider

    def no_fetch(url: str) -> bytes:  # building an SES provider fetches nothing
        raise RuntimeError(f"not fetched while checking the config: {url}")

    for source in settings.sources.values():
        try:
            build_provider(source, cert_loader=no_fetch)
        except ConfigError as exc:
            _config_failed(exc)
    return settings


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  sendergate serve --config config.toml
  sendergate config check config.toml
  sendergate serve --help
""",
)
@click.version_option(package_name="sendergate", prog_name="sendergate")
def main() -> None:
    """SenderGate: an inbound webhook filtering gateway for email and telephony providers."""


@main.command(
    epilog="""\b
Examples:
  sendergate serve                                  # ./config.toml, host/port from [server]
  sendergate serve --config /etc/sendergate/config.toml --host 0.0.0.0 --port 8080
  SENDERGATE_CONFIG=prod.toml sendergate serve --workers 4 --access-log
""",
)
@click.option("--config", "config_path", metavar="PATH", help=CONFIG_HELP)
@click.option("--host", metavar="H", help="bind address [default: [server] host]")
@click.option(
    "--port", type=click.IntRange(0, 65535), metavar="P", help="port [default: [server] port]"
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="worker processes (each builds the app from the same config file)",
)
@click.option(
    "--access-log/--no-access-log",
    default=None,
    help="log one line per HTTP request [default: [server] access_log]",
)
def serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    workers: int,
    access_log: bool | None,
) -> None:
    """Run the gateway (uvicorn; uvloop and httptools when installed)."""
    settings = _load(config_path)
    server = dataclasses.replace(
        settings.server,
        host=settings.server.host if host is None else host,
        port=settings.server.port if port is None else port,
        access_log=settings.server.access_log if access_log is None else access_log,
    )
    settings = dataclasses.replace(settings, server=server)

    import uvicorn

    # loop="auto" and http="auto" (uvicorn's defaults) pick uvloop and httptools.
    if workers == 1:
        from gateway.app import create_app

        try:
            app = create_app(settings)
        except ConfigError as exc:
            _config_failed(exc)
        uvicorn.run(
            app,
            host=server.host,
            port=server.port,
            log_level="info",
            access_log=server.access_log,
            lifespan="on",
        )
    else:
        # Worker processes cannot share an app object: each one imports the zero-argument
        # factory, which reads the same file through SENDERGATE_CONFIG.
        assert settings.config_path is not None  # load_settings always records it
        os.environ["SENDERGATE_CONFIG"] = settings.config_path
        uvicorn.run(
            "gateway.app:app_from_env",
            factory=True,
            workers=workers,
            host=server.host,
            port=server.port,
            log_level="info",
            access_log=server.access_log,
            lifespan="on",
        )


@main.group(
    epilog="""\b
Examples:
  sendergate config check
  sendergate config check deploy/config.toml
"""
)
def config() -> None:
    """Work with config files."""


@config.command(
    "check",
    epilog="""\b
Examples:
  sendergate config check                  # $SENDERGATE_CONFIG, else ./config.toml
  sendergate config check staging.toml
  TWILIO_AUTH_TOKEN=x sendergate config check prod.toml   # env: secrets must be set
""",
)
@click.argument("path", required=False, metavar="[PATH]")
def config_check(path: str | None) -> None:
    """Validate a config file offline, with the current environment for env: secrets.

    PATH defaults to $SENDERGATE_CONFIG, else ./config.toml. Prints a summary and exits 0,
    or prints the offending key and exits 2. Nothing is contacted.
    """
    settings = _load(config_path_from(path))
    rules = (
        sum(len(m.rules) for m in settings.mailboxes)
        + sum(len(n.rules) for n in settings.numbers)
        + len(settings.org_mail_rules)
        + len(settings.org_phone_rules)
    )
    for source in settings.sources.values():
        if not source.verify:
            click.echo(
                f"warning: sources.{source.name}: verify = false, its webhooks are NOT "
                "authenticated",
                err=True,
            )
    click.echo(
        f"config OK: {len(settings.sources)} sources, {len(settings.mailboxes)} mailboxes, "
        f"{len(settings.numbers)} numbers, {rules} rules"
    )
