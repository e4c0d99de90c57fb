"""The ``sendergate`` command line.

Exit statuses: 0 success, 1 an API error (commands that talk to a running gateway),
2 a usage or configuration error. Heavy imports (uvicorn, the app, httpx) happen inside
the commands, so that ``--help`` is quick and a bad config is reported before any of them.

The commands of SPEC §8 that talk to a gateway are thin: parse options, call one
``gateway.client.SenderGateClient`` method, print a table (or JSON with ``--json``). API
errors are reported in one place (``_Main.invoke``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from gateway.errors import ConfigError
from gateway.models import ACTIONS, MAIL_MATCH_TYPES, MATCH_TYPES, MODES, PHONE_MATCH_TYPES
from gateway.rulefiles import FORMATS, Row, RuleFileError, format_of, read_rules, write_rules
from gateway.settings import Settings, config_path_from, load_settings

if TYPE_CHECKING:  # the client (and httpx) are imported when a command needs them
    from starlette.applications import Starlette

    from gateway.client import Rule, SenderGateClient, SenderGateError
    from gateway.logs import JsonLogListener

DEFAULT_URL = "http://127.0.0.1:8080"  # gateway.client.DEFAULT_URL, without importing httpx
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


class _Main(click.Group):
    """The root group: an API error raised anywhere below becomes one line on stderr and
    exit status 1, in this one place."""

    def invoke(self, ctx: click.Context) -> Any:
        from gateway.client import SenderGateError

        try:
            return super().invoke(ctx)
        except SenderGateError as exc:
            _api_failed(ctx, exc)


@click.group(
    cls=_Main,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  sendergate serve --config config.toml
  sendergate config check config.toml
  export SENDERGATE_URL=http://127.0.0.1:8080 SENDERGATE_API_KEY=sg_demo_admin_key
  sendergate mailbox create sales@acme.example --filter-mode whitelist
  sendergate mailbox rules create --mailbox sales@acme.example --action allow \\
      --match-type domain --match-target partner.example
  sendergate --json rules list-all --action block
  sendergate mailbox --help

Docs: docs/cli.md (every command with its output, shell completion).
""",
)
@click.version_option(package_name="sendergate", prog_name="sendergate")
@click.option(
    "--url",
    envvar="SENDERGATE_URL",
    default=DEFAULT_URL,
    show_default=True,
    metavar="URL",
    help="the gateway's base URL [env: SENDERGATE_URL]",
)
@click.option(
    "--api-key",
    envvar="SENDERGATE_API_KEY",
    metavar="KEY",
    help="admin or member API key, sent as a Bearer token [env: SENDERGATE_API_KEY]",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="per request",
)
@click.option(
    "--json", "as_json", is_flag=True, help="machine output: JSON on stdout (also per command)"
)
@click.pass_context
def main(ctx: click.Context, url: str, api_key: str | None, timeout: float, as_json: bool) -> None:
    """SenderGate: an inbound webhook filtering gateway for email and telephony providers.

    The commands other than serve and config talk to a running gateway's admin API.
    """
    ctx.obj = _Cli(url=url, api_key=api_key or None, timeout=timeout, json=as_json)


@main.command(
    epilog="""\b
Examples:
  sendergate serve                                  # ./config.toml, host/port from [server]
  sendergate serve --config /etc/sendergate/config.toml --host 0.0.0.0 --port 8080
  SENDERGATE_CONFIG=prod.toml sendergate serve --workers 4 --access-log
  sendergate serve --graceful-timeout 20 --log-level warning

\b
Logs are JSON lines on stderr (docs/operations.md): one per decided event at info level,
uvicorn's own lines, and one per request with --access-log. On SIGTERM the gateway stops
accepting connections, lets in-flight webhooks finish (up to --graceful-timeout), then
writes what it has buffered and exits.
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
    help="worker processes (each builds the app from the same config file; /metrics of "
    "any of them counts all of them)",
)
@click.option(
    "--access-log/--no-access-log",
    default=None,
    help="log one line per HTTP request, without its query string [default: [server] access_log]",
)
@click.option(
    "--graceful-timeout",
    type=click.IntRange(min=1),
    metavar="SECONDS",
    help="on SIGTERM, how long in-flight requests may take to finish before they are "
    "cancelled [default: the longest forward timeout of the config + 1]",
)
@click.option(
    "--log-level",
    type=click.Choice(("debug", "info", "warning", "error")),
    default="info",
    show_default=True,
    help="info includes the line per event",
)
def serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    workers: int,
    access_log: bool | None,
    graceful_timeout: int | None,
    log_level: str,
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
    graceful = graceful_timeout if graceful_timeout is not None else _graceful_default(settings)

    import logging
    import shutil
    import tempfile

    import uvicorn

    from gateway.logs import setup_logging

    # JSON lines on stderr, written by a thread; uvicorn's loggers go through the same
    # queue (log_config=None: uvicorn adds no handlers of its own).
    listener = setup_logging(log_level, access_log=server.access_log)
    log = logging.getLogger("sendergate.serve")
    metrics_dir: str | None = None
    try:
        # loop="auto" and http="auto" (uvicorn's defaults) pick uvloop and httptools.
        if workers == 1:
            from gateway.app import create_app

            try:
                app = create_app(settings)
            except ConfigError as exc:
                _config_failed(exc)
            _stop_logs_after_shutdown(app, listener)
            _freeze_gc_after_startup(app)
            log.info("serve: 1 worker, graceful shutdown timeout %d s", graceful)
            uvicorn.run(
                app,
                host=server.host,
                port=server.port,
                log_config=None,
                log_level=log_level,
                access_log=server.access_log,
                lifespan="on",
                timeout_graceful_shutdown=graceful,
            )
        else:
            # Worker processes cannot share an app object: each one imports the
            # zero-argument factory, which reads the same file through SENDERGATE_CONFIG.
            # They are started fresh (spawn) and inherit this environment, so the metrics
            # directory is set before any of them imports prometheus-client.
            assert settings.config_path is not None  # load_settings always records it
            metrics_dir = tempfile.mkdtemp(prefix="sendergate-metrics-")
            os.environ["SENDERGATE_CONFIG"] = settings.config_path
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
            os.environ[_WORKER_LOG_LEVEL] = log_level
            os.environ[_WORKER_ACCESS_LOG] = "1" if server.access_log else "0"
            log.info(
                "serve: %d workers, graceful shutdown timeout %d s, metrics aggregated in %s",
                workers,
                graceful,
                metrics_dir,
            )
            uvicorn.run(
                "gateway.cli:worker_app",
                factory=True,
                workers=workers,
                host=server.host,
                port=server.port,
                log_config=None,
                log_level=log_level,
                access_log=server.access_log,
                lifespan="on",
                timeout_graceful_shutdown=graceful,
            )
    finally:
        listener.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


# How serve passes its logging options to the worker processes of --workers N.
_WORKER_LOG_LEVEL = "SENDERGATE_LOG_LEVEL"
_WORKER_ACCESS_LOG = "SENDERGATE_ACCESS_LOG"


def _graceful_default(settings: Settings) -> int:
    """Long enough for the slowest forward to end on its own: the longest forward timeout
    of the config, plus a second for the gateway's own work."""
    import math

    timeouts = [settings.forward.timeout_s]
    timeouts += [s.timeout_s for s in settings.sources.values() if s.timeout_s]
    return math.ceil(max(timeouts)) + 1


def _stop_logs_after_shutdown(app: Starlette, listener: JsonLogListener) -> None:
    """Write the queued log lines when the app's lifespan ends, and later ones directly.

    uvicorn ends a process that it shut down on SIGTERM by raising that signal again (so
    that the exit status says so): no ``finally`` after ``uvicorn.run`` runs then, and a
    line still in the queue would be lost with the writer thread."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        try:
            async with inner(app_) as state:
                yield state
        finally:
            listener.stop()

    app.router.lifespan_context = lifespan


def _freeze_gc_after_startup(app: Starlette) -> None:
    """Once the app has started (modules imported, phone metadata and the rule snapshot
    loaded), move every object that exists to the collector's permanent generation.

    Why: the cyclic garbage collector's full (generation 2) pass walks every long-lived
    object, and a serving process has a million or more of them that never become
    garbage (modules, phonenumbers' metadata, the snapshot). Measured under a steady
    1,500 drops/s, that pass came every 1.5 s and blocked the event loop for 16 to 25 ms
    each time, which set the p99 latency; after the freeze it walks only what was created
    since, under 1 ms (docs/performance.md). Objects still die by reference counting as before; only
    a reference cycle that existed at the freeze is never collected (a few, once)."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with inner(app_) as state:
            gc.collect()
            gc.freeze()
            yield state

    app.router.lifespan_context = lifespan


def worker_app() -> Starlette:
    """The app of one ``serve --workers N`` worker (uvicorn's factory, called in the worker
    process): JSON logging as in the parent process, then ``gateway.app.app_from_env``."""
    from gateway.app import app_from_env
    from gateway.logs import setup_logging

    listener = setup_logging(
        os.environ.get(_WORKER_LOG_LEVEL, "info"),
        access_log=os.environ.get(_WORKER_ACCESS_LOG) == "1",
    )
    app = app_from_env()
    _stop_logs_after_shutdown(app, listener)
    _freeze_gc_after_startup(app)
    return app


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


# --- talking to a running gateway ------------------------------------------------------


@dataclasses.dataclass
class _Cli:
    """The root group's options, shared by every command below it (``ctx.obj``)."""

    url: str
    api_key: str | None
    timeout: float
    json: bool = False
    _client: SenderGateClient | None = None

    def client(self) -> SenderGateClient:
        """The API client, opened on first use and closed with the command."""
        if self._client is None:
            from gateway.client import SenderGateClient

            self._client = SenderGateClient(self.url, self.api_key, self.timeout)
            click.get_current_context().call_on_close(self._client.close)
        return self._client


def _cli() -> _Cli:
    obj = click.get_current_context().find_object(_Cli)
    assert obj is not None, "the root group always sets ctx.obj"
    return obj


def _api() -> SenderGateClient:
    return _cli().client()


def _api_failed(ctx: click.Context, exc: SenderGateError) -> NoReturn:
    click.echo(f"error: {exc.message}", err=True)
    obj = ctx.find_object(_Cli)
    if exc.status == 401 and obj is not None and obj.api_key is None:
        click.echo("hint: pass --api-key KEY or set SENDERGATE_API_KEY", err=True)
    if exc.status == 0:
        click.echo("hint: pass --url URL or set SENDERGATE_URL", err=True)
    ctx.exit(1)


F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        root = ctx.find_object(_Cli)
        if root is not None:
            root.json = True


def _json_option(f: F) -> F:
    """``--json`` on a leaf command: the same as ``sendergate --json ...``."""
    return click.option(
        "--json",
        is_flag=True,
        expose_value=False,
        callback=_set_json,
        help="machine output: JSON on stdout",
    )(f)


# --- output --------------------------------------------------------------------------------


def _text(value: Any, limit: int | None = None) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = " ".join(str(value).split()) if limit else str(value)
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, limit: int = 40) -> str:
    """A plain text table: a header line, then one line per row, columns padded to the
    widest cell; ``None`` shows as ``-`` and cells longer than ``limit`` are cut."""
    cells = [[_text(v, limit) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [headers, *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def pairs(items: Iterable[tuple[str, Any]]) -> str:
    """``name  value`` lines, the values aligned."""
    listed = [(k, _text(v)) for k, v in items]
    width = max((len(k) for k, _ in listed), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in listed)


def _emit(data: Any, human: Callable[[], str]) -> None:
    """JSON on stdout with ``--json``, else the human rendering."""
    if _cli().json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        click.echo(human())


def _page_footer(page: Mapping[str, Any], noun: str) -> str:
    """``3 rules``, or where this page is in the list and how to get the next one."""
    shown, offset, total = len(page["items"]), page["offset"], page["total"]
    if offset == 0 and shown == total:
        one = noun[:-2] if noun.endswith("xes") else noun[:-1]
        return f"{total} {one if total == 1 else noun}"
    if not shown:
        return f"no {noun} at offset {offset} (total {total})"
    line = f"{noun} {offset + 1}-{offset + shown} of {total}"
    if offset + shown < total:
        line += f"; next page: --offset {offset + shown}"
    return line


# --- shared option helpers -------------------------------------------------------------

RELATIVE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _expires(value: str | None) -> str | None:
    """``--expires-at``: RFC 3339 as given, a duration from now (``30m``, ``12h``, ``7d``,
    ``2w``), or ``""`` for none (clears it on update)."""
    if value is None or not value.strip():
        return None
    found = RELATIVE.match(value)
    if found:
        delta = timedelta(**{UNITS[found[2]]: int(found[1])})
        moment = datetime.now(UTC).replace(microsecond=0) + delta
        return moment.isoformat().replace("+00:00", "Z")
    return value.strip()


def _cleared(value: str | None) -> str | None:
    """An option where ``""`` means "remove": ``None`` for the API."""
    return value if value else None


def _nothing_to_change(changes: Mapping[str, Any]) -> None:
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")


PAGE_OPTIONS = (
    click.option("--limit", type=click.IntRange(1, 200), help="page size, 1-200 [default: 50]"),
    click.option("--offset", type=click.IntRange(min=0), help="items to skip [default: 0]"),
)


def _paged(f: F) -> F:
    for option in reversed(PAGE_OPTIONS):
        f = option(f)
    return f


# --- mailboxes and numbers -------------------------------------------------------------


def _target_row(t: Mapping[str, Any], urls: Sequence[str]) -> list[Any]:
    return [
        t.get("address") or t.get("number"),
        t["filter_mode"],
        "enforce" if t["enforce"] else "shadow",
        *(t.get(u) for u in urls),
        t.get("rate_limit"),
        t["created_at"],
    ]


def _target_text(t: Mapping[str, Any]) -> str:
    out = pairs((k, v) for k, v in t.items() if k != "filter_mode_change_notice")
    notice = t.get("filter_mode_change_notice")
    if notice:
        out += (
            f"\nnote: filter mode is now {notice['new_filter_mode']}; "
            f"{notice['redundant_rule_count']} active {notice['redundant_rule_action']} "
            "rule(s) of this target are now redundant"
        )
    return out


def _target_group(kind: str) -> click.Group:
    """``mailbox`` or ``number``: create, list, get, update, delete (+ ``rules``)."""
    mailbox = kind == "mailbox"
    arg = "ADDRESS" if mailbox else "NUMBER"
    example = "sales@acme.example" if mailbox else "+14155550100"
    urls = ("forward_url",) if mailbox else ("voice_url", "sms_url")
    plural = "mailboxes" if mailbox else "numbers"
    what = "our email addresses" if mailbox else "our phone numbers, E.164"
    url_example = (
        "--forward-url http://127.0.0.1:9000/sales"
        if mailbox
        else "--voice-url http://127.0.0.1:9000/voice"
    )

    @click.group(
        kind,
        epilog=f"""\b
Examples:
  sendergate {kind} create {example} --filter-mode whitelist
  sendergate {kind} list
  sendergate {kind} rules list --{kind} {example}
""",
    )
    def group() -> None:
        pass

    group.help = f"{plural.capitalize()} ({what}) and their rules."

    def fields_options(f: F) -> F:
        f = click.option("--rate-limit", metavar="N/UNIT", help=rate_help)(f)
        for name in reversed(urls):
            flag = "--" + name.replace("_", "-")
            f = click.option(flag, name, metavar="URL", help=url_help[name])(f)
        f = click.option(
            "--enforce/--shadow",
            default=None,
            help="shadow: decide and record, but deliver everything [default: enforce]",
        )(f)
        return click.option(
            "--filter-mode",
            type=click.Choice(MODES),
            help="blacklist: deliver unless blocked; whitelist: drop unless allowed",
        )(f)

    rate_help = "per-sender limit, e.g. 20/hour (second, minute, hour, day); '' clears"
    url_help = {
        "forward_url": "where this mailbox's events go (overrides the source's); '' clears",
        "voice_url": "where this number's calls go (overrides the source's); '' clears",
        "sms_url": "where this number's messages go (overrides the source's); '' clears",
    }

    def changes_of(opts: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in opts.items():
            if value is None:
                continue
            out[name] = _cleared(value) if name in (*urls, "rate_limit") else value
        return out

    @group.command(
        epilog=f"""\b
Examples:
  sendergate {kind} create {example}
  sendergate {kind} create {example} --filter-mode whitelist {url_example}
  sendergate {kind} create {example} --shadow --rate-limit 20/hour
""",
    )
    @click.argument("target_id", metavar=arg)
    @fields_options
    @_json_option
    def create(target_id: str, **opts: Any) -> None:
        """Create a target; it is stored and shown normalised."""
        fields = changes_of(opts)
        api = _api()
        made = (
            api.create_mailbox(target_id, **fields)
            if mailbox
            else api.create_number(target_id, **fields)
        )
        _emit(made, lambda: _target_text(made))

    create.help = f"Create a {kind}; the {arg.lower()} is stored and shown normalised."

    @group.command(
        "list",
        epilog=f"""\b
Examples:
  sendergate {kind} list
  sendergate {kind} list --limit 10 --offset 10
  sendergate --json {kind} list
""",
    )
    @_paged
    @_json_option
    def list_(limit: int | None, offset: int | None) -> None:
        api = _api()
        page = (
            api.list_mailboxes(limit=limit, offset=offset)
            if mailbox
            else api.list_numbers(limit=limit, offset=offset)
        )
        headers = [arg, "MODE", "ENFORCE", *(u.upper() for u in urls), "RATE_LIMIT", "CREATED"]

        def render() -> str:
            rows = [_target_row(t, urls) for t in page["items"]]
            body = table(headers, rows) + "\n" if rows else ""
            return body + _page_footer(page, plural)

        _emit(page, render)

    list_.help = f"List {plural}, newest first (a member key sees its own)."

    @group.command(epilog=f"\b\nExamples:\n  sendergate {kind} get {example}\n")
    @click.argument("target_id", metavar=arg)
    @_json_option
    def get(target_id: str) -> None:
        api = _api()
        found = api.get_mailbox(target_id) if mailbox else api.get_number(target_id)
        _emit(found, lambda: _target_text(found))

    get.help = f"Show one {kind}."

    @group.command(
        epilog=f"""\b
Examples:
  sendergate {kind} update {example} --filter-mode whitelist
  sendergate {kind} update {example} --shadow
  sendergate {kind} update {example} --{urls[0].replace("_", "-")} ''     # back to the source's
""",
    )
    @click.argument("target_id", metavar=arg)
    @fields_options
    @_json_option
    def update(target_id: str, **opts: Any) -> None:
        changes = changes_of(opts)
        _nothing_to_change(changes)
        api = _api()
        updated = (
            api.update_mailbox(target_id, **changes)
            if mailbox
            else api.update_number(target_id, **changes)
        )
        _emit(updated, lambda: _target_text(updated))

    update.help = (
        f"Change a {kind}'s filter mode, enforcement, URLs or rate limit. A filter mode "
        "change reports how many rules it made redundant."
    )

    @group.command(epilog=f"\b\nExamples:\n  sendergate {kind} delete {example}\n")
    @click.argument("target_id", metavar=arg)
    @_json_option
    def delete(target_id: str) -> None:
        api = _api()
        if mailbox:
            api.delete_mailbox(target_id)
        else:
            api.delete_number(target_id)
        _emit({"deleted": kind, "id": target_id}, lambda: f"deleted {kind} {target_id}")

    delete.help = f"Delete a {kind} and all its rules."

    group.add_command(
        _rules_group(
            scope_option=click.option(
                f"--{kind}",
                "scope",
                required=True,
                metavar=arg,
                help=f"the {kind} whose rules these are",
            ),
            scope_flag=f"--{kind} {example}",
            match_types=MAIL_MATCH_TYPES if mailbox else PHONE_MATCH_TYPES,
            what=f"one {kind}",
            examples=(
                ("domain", "spam.example") if mailbox else ("number_prefix", "+1900"),
                ("exact_email", "boss@partner.example")
                if mailbox
                else ("exact_number", "+14155550123"),
            ),
        )
    )
    return group


# --- rules of one scope (a mailbox, a number, an org-wide list) ------------------------

RULE_HEADERS = (
    "ID",
    "SCOPE",
    "ACTION",
    "MATCH_TYPE",
    "MATCH_TARGET",
    "STATUS",
    "EXPIRES_AT",
    "HITS",
    "SOURCE",
    "NOTE",
)


def _rule_row(r: Rule) -> list[Any]:
    return [
        r["id"],
        r["scope"],
        r["action"],
        r["match_type"],
        r["match_target"]
        if r["match_type"] != "domain" or r["include_subdomains"]
        else f"{r['match_target']} (exact)",
        r["status"],
        r["expires_at"],
        r["hits"],
        r["source"],
        r["note"],
    ]


def _rules_text(page: Mapping[str, Any]) -> str:
    rows = [_rule_row(r) for r in page["items"]]
    body = table(RULE_HEADERS, rows) + "\n" if rows else ""
    return body + _page_footer(page, "rules")


def _rule_text(rule: Mapping[str, Any]) -> str:
    hide = () if rule["match_type"] == "domain" else ("include_subdomains",)
    return pairs((k, v) for k, v in rule.items() if k not in hide)


def _rules_group(
    *,
    scope_option: Decorator,
    scope_flag: str,
    match_types: Sequence[str],
    what: str,
    examples: Sequence[tuple[str, str]],
) -> click.Group:
    """``rules create|list|get|update|delete`` for a kind of scope; ``scope_option``
    provides the ``scope`` argument (``--mailbox``, ``--number`` or ``--channel``)."""
    (type1, target1), (type2, target2) = examples
    prefix = f"sendergate {_scope_command(scope_flag)} rules"

    @click.group(
        "rules",
        epilog=f"""\b
Examples:
  {prefix} create {scope_flag} --action block \\
      --match-type {type1} --match-target {target1}
  {prefix} list {scope_flag} --action block
  {prefix} update 12 {scope_flag} --status paused
""",
    )
    def group() -> None:
        pass

    group.help = f"Manage the contact rules of {what}."

    @group.command(
        epilog=f"""\b
Examples:
  {prefix} create {scope_flag} --action block \\
      --match-type {type1} --match-target {target1}
  {prefix} create {scope_flag} --action allow \\
      --match-type {type2} --match-target {target2} --note "agreed" --expires-at 30d
  {prefix} create {scope_flag} --action mute \\
      --match-type {type1} --match-target {target1} --status paused
""",
    )
    @scope_option
    @click.option("--action", required=True, type=click.Choice(ACTIONS))
    @click.option("--match-type", required=True, type=click.Choice(match_types))
    @click.option(
        "--match-target",
        metavar="TARGET",
        help="address, domain, E.164 number or prefix; not needed for invalid/anonymous",
    )
    @click.option(
        "--include-subdomains/--exact-domain",
        default=None,
        help="domain rules: also match subdomains [default: include]",
    )
    @click.option("--status", type=click.Choice(("active", "paused")), help="[default: active]")
    @click.option(
        "--expires-at",
        metavar="TIME",
        help="RFC 3339 (2026-12-31T23:59:00Z) or a duration from now: 30m, 12h, 7d, 2w",
    )
    @click.option("--note", metavar="TEXT")
    @_json_option
    def create(
        scope: str,
        action: Any,
        match_type: Any,
        match_target: str | None,
        include_subdomains: bool | None,
        status: Any,
        expires_at: str | None,
        note: str | None,
    ) -> None:
        """Create a rule (source "cli"). A duplicate is refused with the existing rule's id."""
        options: dict[str, Any] = {"source": "cli"}
        if include_subdomains is not None:
            options["include_subdomains"] = include_subdomains
        if status is not None:
            options["status"] = status
        if expires_at:
            options["expires_at"] = _expires(expires_at)
        if note:
            options["note"] = note
        rule = _api().create_rule(scope, action, match_type, match_target, **options)
        _emit(rule, lambda: _rule_text(rule))

    @group.command(
        "list",
        epilog=f"""\b
Examples:
  {prefix} list {scope_flag}
  {prefix} list {scope_flag} --action block --status active
  {prefix} list {scope_flag} --status deleted --limit 200
""",
    )
    @scope_option
    @click.option("--action", type=click.Choice(ACTIONS))
    @click.option("--match-type", type=click.Choice(match_types))
    @click.option(
        "--status",
        type=click.Choice(("active", "paused", "deleted")),
        help="[default: active and paused]",
    )
    @_paged
    @_json_option
    def list_(
        scope: str,
        action: Any,
        match_type: Any,
        status: Any,
        limit: int | None,
        offset: int | None,
    ) -> None:
        """List rules, newest first."""
        page = _api().list_rules(
            scope,
            action=action,
            match_type=match_type,
            status=status,
            limit=limit,
            offset=offset,
        )
        _emit(page, lambda: _rules_text(page))

    @group.command(epilog=f"\b\nExamples:\n  {prefix} get 12 {scope_flag}\n")
    @click.argument("rule_id", type=int)
    @scope_option
    @_json_option
    def get(rule_id: int, scope: str) -> None:
        """Show one rule, with its hits and when it last matched."""
        rule = _api().get_rule(scope, rule_id)
        _emit(rule, lambda: _rule_text(rule))

    @group.command(
        epilog=f"""\b
Examples:
  {prefix} update 12 {scope_flag} --status paused
  {prefix} update 12 {scope_flag} --action allow --note "a customer after all"
  {prefix} update 12 {scope_flag} --expires-at ''      # never expires
""",
    )
    @click.argument("rule_id", type=int)
    @scope_option
    @click.option("--action", type=click.Choice(ACTIONS))
    @click.option("--status", type=click.Choice(("active", "paused")))
    @click.option(
        "--expires-at",
        metavar="TIME",
        help="RFC 3339, a duration from now (30m, 12h, 7d, 2w), or '' for never",
    )
    @click.option("--note", metavar="TEXT", help="'' removes it")
    @_json_option
    def update(
        rule_id: int,
        scope: str,
        action: Any,
        status: Any,
        expires_at: str | None,
        note: str | None,
    ) -> None:
        """Change a rule's action, status, expiry or note. The match never changes: delete
        the rule and create another."""
        changes: dict[str, Any] = {}
        if action is not None:
            changes["action"] = action
        if status is not None:
            changes["status"] = status
        if expires_at is not None:
            changes["expires_at"] = _expires(expires_at)
        if note is not None:
            changes["note"] = _cleared(note)
        _nothing_to_change(changes)
        rule = _api().update_rule(scope, rule_id, **changes)
        _emit(rule, lambda: _rule_text(rule))

    @group.command(epilog=f"\b\nExamples:\n  {prefix} delete 12 {scope_flag}\n")
    @click.argument("rule_id", type=int)
    @scope_option
    @_json_option
    def delete(rule_id: int, scope: str) -> None:
        """Delete a rule (it stays listed with --status deleted)."""
        _api().delete_rule(scope, rule_id)
        _emit({"deleted": "rule", "id": rule_id}, lambda: f"deleted rule {rule_id}")

    return group


def _scope_command(scope_flag: str) -> str:
    """The command path in front of ``rules`` for a scope flag (for the examples)."""
    flag = scope_flag.split()[0]
    return {"--mailbox": "mailbox", "--number": "number"}.get(flag, "org")


main.add_command(_target_group("mailbox"))
main.add_command(_target_group("number"))


@main.group(
    epilog="""\b
Examples:
  sendergate org rules create --channel mail --action block --match-type domain \\
      --match-target xyz
  sendergate org rules list --channel phone
""",
)
def org() -> None:
    """The org-wide rule lists: one for every mailbox (mail), one for every number (phone)."""


org.add_command(
    _rules_group(
        scope_option=click.option(
            "--channel",
            "scope",
            required=True,
            type=click.Choice(("mail", "phone")),
            callback=lambda ctx, param, value: f"org:{value}",
            help="mail: the list for every mailbox; phone: for every number",
        ),
        scope_flag="--channel mail",
        match_types=MATCH_TYPES,
        what="an org-wide list (admin key)",
        examples=(("domain", "xyz"), ("exact_email", "ceo@partner.example")),
    )
)


# --- rules across scopes: list-all, import, export ---------------------------------------


@main.group(
    epilog="""\b
Examples:
  sendergate rules list-all --action block --channel mail
  sendergate rules export -o rules.csv
  sendergate rules import rules.csv
""",
)
def rules() -> None:
    """Rules of every scope: list them, export them to a file, import a file (admin key)."""


@rules.command(
    "list-all",
    epilog="""\b
Examples:
  sendergate rules list-all
  sendergate rules list-all --action block --match-target spam.example
  sendergate rules list-all --scope org:mail --status paused
  sendergate --json rules list-all --channel phone --limit 200 --offset 200
""",
)
@click.option("--scope", metavar="SCOPE", help="a mailbox, a number, org:mail or org:phone")
@click.option("--channel", type=click.Choice(("mail", "phone", "email", "sms", "voice")))
@click.option("--action", type=click.Choice(ACTIONS))
@click.option("--match-type", type=click.Choice(MATCH_TYPES))
@click.option(
    "--match-target",
    metavar="TARGET",
    help="exact stored target (normalised when --match-type is given)",
)
@click.option(
    "--status",
    type=click.Choice(("active", "paused", "deleted")),
    help="[default: active and paused]",
)
@_paged
@_json_option
def rules_list_all(
    scope: str | None,
    channel: Any,
    action: Any,
    match_type: Any,
    match_target: str | None,
    status: Any,
    limit: int | None,
    offset: int | None,
) -> None:
    """List the rules of every scope, newest first."""
    page = _api().list_all_rules(
        scope=scope,
        channel=channel,
        action=action,
        match_type=match_type,
        match_target=match_target,
        status=status,
        limit=limit,
        offset=offset,
    )
    _emit(page, lambda: _rules_text(page))


BATCH_BYTES = 512 * 1024  # under the server's default 1 MiB admin body limit
EXPORT_PAGE = 200


class _Progress:
    """A progress bar on stderr when it is a terminal, nothing otherwise."""

    def __init__(self, length: int, label: str) -> None:
        self._bar: Any = None
        if length and sys.stderr.isatty():
            self._bar = click.progressbar(length=length, label=label, file=sys.stderr)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc_info)

    def update(self, steps: int) -> None:
        if self._bar is not None:
            self._bar.update(steps)


def _batches(rows: Sequence[Row], max_items: int) -> Iterator[list[Row]]:
    """Rows with a rule, in order, in batches of at most ``max_items`` rules and about
    ``BATCH_BYTES`` of JSON."""
    batch: list[Row] = []
    size = 0
    for row in rows:
        if row.rule is None:
            continue
        cost = len(json.dumps(row.rule, ensure_ascii=False).encode()) + 1
        if batch and (len(batch) >= max_items or size + cost > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += cost
    if batch:
        yield batch


BATCH_PREFIX = re.compile(r"^rules\[\d+\]\.")


@dataclasses.dataclass
class _ImportReport:
    file: str
    rows: int
    created: int = 0
    skipped: int = 0
    refused: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stopped_at: int | None = None  # the first line not imported, when a call failed

    def refuse(self, line: int, reason: str) -> None:
        self.refused.append({"line": line, "reason": BATCH_PREFIX.sub("", reason)})

    @property
    def done(self) -> int:
        return self.created + self.skipped + len(self.refused)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "file": self.file,
            "rows": self.rows,
            "created": self.created,
            "skipped": self.skipped,
            "refused": sorted(self.refused, key=lambda r: r["line"]),
            "complete": self.stopped_at is None,
        }
        if self.stopped_at is not None:
            out["first_line_not_imported"] = self.stopped_at
        return out

    def text(self, unit: str) -> str:
        head = (
            f"{self.file}: {self.rows} rules: {self.created} created, {self.skipped} skipped "
            f"(duplicates), {len(self.refused)} refused"
        )
        if self.stopped_at is not None:
            head += f", {self.rows - self.done} not imported (from {unit} {self.stopped_at})"
        lines = [head]
        for item in sorted(self.refused, key=lambda r: r["line"]):
            lines.append(f"  refused {unit} {item['line']}: {item['reason']}")
        return "\n".join(lines)


@rules.command(
    "import",
    epilog="""\b
CSV columns (with a header line; the last three optional):
  scope,action,match_type,match_target,status,expires_at,note
  org:mail,block,domain,spam.example,,,
  sales@acme.example,allow,exact_email,boss@partner.example,paused,2026-12-31T00:00:00Z,vip
  +14155550100,block,number_prefix,+1900,,,premium rate
JSON: a list of objects with the same keys.

\b
Examples:
  sendergate rules import rules.csv
  sendergate rules import rules.json
  sendergate rules export | sendergate rules import --format csv -
""",
)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), help="[default: from the extension, else csv]"
)
@_json_option
def rules_import(file: str, fmt: str | None) -> None:
    """Create the rules of a CSV or JSON file (source "cli"), in batches.

    Rules that exist already are skipped, so importing a file twice is harmless and an
    interrupted import is finished by running it again. Rules the gateway refuses (a bad
    value, a mailbox or number that does not exist yet) are listed with their line. Exit
    status 1 when a rule was refused or a call failed.
    """
    from gateway.client import BATCH_MAX, SenderGateError

    fmt_ = format_of(file, fmt)
    with click.open_file(file, encoding="utf-8-sig") as handle:
        text = handle.read()
    try:
        rows = read_rules(text, fmt_)
    except RuleFileError as exc:
        raise click.BadParameter(str(exc), param_hint="FILE") from None
    unit = "line" if fmt_ == "csv" else "item"
    report = _ImportReport(file=file, rows=len(rows))
    for row in rows:
        if row.error is not None:
            report.refuse(row.line, row.error)
    api = _api()
    with _Progress(len(rows), "importing") as progress:
        progress.update(len(report.refused))
        for batch in _batches(rows, BATCH_MAX):
            try:
                result = api.batch_create_rules([row.rule for row in batch if row.rule])
            except SenderGateError as exc:
                report.stopped_at = batch[0].line
                _import_failed(report, exc, unit)
            for row, item in zip(batch, result["items"], strict=True):
                if item["status"] == "created":
                    report.created += 1
                elif item["status"] == "duplicate":
                    report.skipped += 1
                else:
                    report.refuse(row.line, item.get("reason", "refused"))
            progress.update(len(batch))
    _emit(report.as_json(), lambda: report.text(unit))
    if report.refused:
        click.get_current_context().exit(1)


def _import_failed(report: _ImportReport, exc: SenderGateError, unit: str) -> NoReturn:
    ctx = click.get_current_context()
    _emit({**report.as_json(), "error": exc.problem}, lambda: report.text(unit))
    click.echo(f"error: {exc.message}", err=True)
    click.echo(
        f"import stopped at {unit} {report.stopped_at}: {report.done} of {report.rows} rules "
        f"were handled before it ({report.created} created, {report.skipped} skipped, "
        f"{len(report.refused)} refused); {unit} {report.stopped_at} and the ones after it "
        "were not imported. Run the same import again to finish: rules created already "
        "are skipped.",
        err=True,
    )
    ctx.exit(1)


@rules.command(
    "export",
    epilog="""\b
Examples:
  sendergate rules export > rules.csv
  sendergate rules export -o rules.json            # format from the extension
  sendergate rules export --format json --scope org:mail
  sendergate rules export --channel phone -o phone-rules.csv
""",
)
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), help="[default: from -o's extension, else csv]"
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    help="file to write [default: stdout]",
)
@click.option("--scope", metavar="SCOPE", help="only this mailbox, number or org list")
@click.option("--channel", type=click.Choice(("mail", "phone")), help="only mail or phone")
@_json_option
def rules_export(fmt: str | None, output: str, scope: str | None, channel: Any) -> None:
    """Write every rule that is not deleted (active and paused) as CSV or JSON, oldest
    first: a file that `rules import` reads back."""
    api = _api()
    found: dict[int, Rule] = {}
    page = api.list_all_rules(scope=scope, channel=channel, limit=EXPORT_PAGE, offset=0)
    total = page["total"]
    with _Progress(total, "exporting") as progress:
        while page["items"]:
            for rule in page["items"]:
                found[rule["id"]] = rule  # a rule moved by a concurrent write is kept once
            progress.update(len(page["items"]))
            offset = page["offset"] + len(page["items"])
            if offset >= page["total"]:
                break
            page = api.list_all_rules(
                scope=scope, channel=channel, limit=EXPORT_PAGE, offset=offset
            )
    ordered = [found[k] for k in sorted(found)]
    fmt_ = format_of("" if output == "-" else output, fmt)
    # atomic: a failed export never leaves half a file in place of a good one
    with click.open_file(output, "w", encoding="utf-8", atomic=output != "-") as out:
        write_rules(ordered, fmt_, out)
    if output != "-":
        _emit(
            {"exported": len(ordered), "file": output, "format": fmt_},
            lambda: f"exported {len(ordered)} rules to {output}",
        )


# --- check, events, quarantine -----------------------------------------------------------


@main.command(
    epilog="""\b
Examples:
  sendergate check --from promo@spam.example --to sales.team@acme.example
  sendergate check --from +19005550000 --to +14155550100 --channel voice
  sendergate check --from boss@partner.example --to sales.team@acme.example --unauthenticated
  sendergate check --from promo@spam.example          # every scope that matches (admin)
""",
)
@click.option("--from", "sender", required=True, metavar="SENDER", help="address or number")
@click.option("--to", "recipient", metavar="RECIPIENT", help="one of our mailboxes or numbers")
@click.option(
    "--channel",
    type=click.Choice(("email", "sms", "voice")),
    help="[default: email for addresses, else sms]",
)
@click.option(
    "--unauthenticated",
    is_flag=True,
    help="email: the From domain failed DMARC/SPF/DKIM (allow rules may not count)",
)
@_json_option
def check(sender: str, recipient: str | None, channel: Any, unauthenticated: bool) -> None:
    """Explain what the gateway would do with an event from SENDER to RECIPIENT, or (without
    --to) list every scope whose rules block, mute or allow SENDER."""
    api = _api()
    if recipient is None:
        found = api.check_all(sender, channel=channel)

        def render() -> str:
            if not found["scopes"]:
                return f"{found['sender']} ({found['channel']}): no rule matches in any scope"
            rows = [(s["scope"], s["action"], s["rule"]) for s in found["scopes"]]
            return f"{found['sender']} ({found['channel']}):\n" + table(
                ("SCOPE", "ACTION", "RULE"), rows
            )

        _emit(found, render)
        return
    decision = api.check(
        sender, recipient, channel=channel, authenticated=False if unauthenticated else None
    )
    _emit(decision, lambda: pairs(decision.items()))


EVENT_HEADERS = (
    "ID",
    "RECEIVED_AT",
    "CHANNEL",
    "SENDER",
    "RECIPIENT",
    "VERDICT",
    "REASON",
    "RULE",
    "OUTCOME",
)


def _events_text(page: Mapping[str, Any]) -> str:
    rows = [
        (
            e["id"],
            e["received_at"],
            e["channel"],
            e["sender"],
            e["recipient"],
            e["decision"]["verdict"],
            e["decision"]["reason"],
            e["decision"]["rule"],
            e["outcome"],
        )
        for e in page["items"]
    ]
    if not rows:
        return "no events"
    out = table(EVENT_HEADERS, rows)
    if page["next_cursor"]:
        out += f"\nnext page: --cursor {page['next_cursor']}"
    return out


def _event_text(event: Mapping[str, Any]) -> str:
    scalars = [
        (k, v) for k, v in event.items() if k not in ("decision", "extra", "headers", "body")
    ]
    scalars += [(f"decision.{k}", v) for k, v in event["decision"].items()]
    scalars += [(f"extra.{k}", v) for k, v in event.get("extra", {}).items()]
    out = pairs(scalars)
    if "headers" in event:
        out += "\nheaders:\n" + "\n".join(f"  {k}: {v}" for k, v in event["headers"])
    if "body" in event:
        out += f"\nbody ({event.get('body_encoding')}):\n{event['body']}"
    return out


def _event_filters(f: F) -> F:
    f = click.option("--cursor", metavar="CURSOR", help="next page, from the previous answer")(f)
    f = click.option("--limit", type=click.IntRange(1, 200), help="1-200 [default: 50]")(f)
    f = click.option("--since", metavar="TIME", help="RFC 3339, e.g. 2026-01-31T00:00:00Z")(f)
    f = click.option("--sender", metavar="SENDER")(f)
    return click.option("--target", metavar="RECIPIENT", help="one mailbox or number")(f)


@main.group(
    epilog="""\b
Examples:
  sendergate events list --verdict drop
  sendergate events get 01JH6Z3M2N4P5Q6R7S8T9V0W1X
""",
)
def events() -> None:
    """Received webhooks, their decisions and outcomes."""


@events.command(
    "list",
    epilog="""\b
Examples:
  sendergate events list
  sendergate events list --verdict drop --target sales.team@acme.example
  sendergate events list --sender +19005550000 --limit 10
  sendergate --json events list --outcome quarantined
""",
)
@click.option("--verdict", type=click.Choice(("deliver", "mute", "drop")))
@click.option(
    "--outcome", type=click.Choice(("forwarded", "quarantined", "forward_failed", "released"))
)
@_event_filters
@_json_option
def events_list(
    verdict: Any,
    outcome: Any,
    target: str | None,
    sender: str | None,
    since: str | None,
    limit: int | None,
    cursor: str | None,
) -> None:
    """List events, newest first."""
    page = _api().list_events(
        verdict=verdict,
        outcome=outcome,
        target=target,
        sender=sender,
        since=since,
        limit=limit,
        cursor=cursor,
    )
    _emit(page, lambda: _events_text(page))


@events.command(
    "get",
    epilog="\b\nExamples:\n  sendergate events get 01JH6Z3M2N4P5Q6R7S8T9V0W1X\n",
)
@click.argument("event_id")
@_json_option
def events_get(event_id: str) -> None:
    """Show one event: its decision, outcome, and the request as received."""
    event = _api().get_event(event_id)
    _emit(event, lambda: _event_text(event))


@main.group(
    epilog="""\b
Examples:
  sendergate quarantine list
  sendergate quarantine release 01JH6Z3M2N4P5Q6R7S8T9V0W1X
""",
)
def quarantine() -> None:
    """Dropped events are kept in quarantine: list them, or release one to its application."""


@quarantine.command(
    "list",
    epilog="""\b
Examples:
  sendergate quarantine list
  sendergate quarantine list --target +14155550100
""",
)
@_event_filters
@_json_option
def quarantine_list(
    target: str | None,
    sender: str | None,
    since: str | None,
    limit: int | None,
    cursor: str | None,
) -> None:
    """List quarantined events (the same as `events list --outcome quarantined`)."""
    page = _api().list_events(
        outcome="quarantined",
        target=target,
        sender=sender,
        since=since,
        limit=limit,
        cursor=cursor,
    )
    _emit(page, lambda: _events_text(page))


@quarantine.command(
    "release",
    epilog="""\b
Examples:
  sendergate quarantine release 01JH6Z3M2N4P5Q6R7S8T9V0W1X
""",
)
@click.argument("event_id")
@_json_option
def quarantine_release(event_id: str) -> None:
    """Forward a quarantined event to its application now (admin key). Exit status 1 if
    the application does not accept it; the event then stays in quarantine."""
    event = _api().release_event(event_id)
    _emit(
        event,
        lambda: (
            f"released {event['id']}: outcome {event['outcome']}, the application answered "
            f"{event.get('response_status')}"
        ),
    )


# --- contacts, review, audit -------------------------------------------------------------

CONTACT_STATES = ("blocked", "whitelisted", "muted", "unset")


def _contact_scope(mailbox: str | None, number: str | None, org: str | None) -> str | None:
    given = [s for s in (mailbox, number, org and f"org:{org}") if s]
    if len(given) > 1:
        raise click.UsageError("give one of --mailbox, --number or --org")
    return given[0] if given else None


def _contact_scope_options(f: F) -> F:
    f = click.option("--org", type=click.Choice(("mail", "phone")), help="an org-wide list")(f)
    f = click.option("--number", metavar="NUMBER", help="contacts of this number")(f)
    return click.option("--mailbox", metavar="ADDRESS", help="contacts of this mailbox")(f)


def _contacts_text(page: Mapping[str, Any]) -> str:
    rows = [
        [
            c["sender"],
            c["scope"],
            c["state"],
            c["count"],
            c["delivered"],
            c["muted"],
            c["dropped"],
            c["last_seen"],
            c.get("category"),
        ]
        for c in page["data"]
    ]
    head = [
        "SENDER",
        "SCOPE",
        "STATE",
        "COUNT",
        "DELIVERED",
        "MUTED",
        "DROPPED",
        "LAST SEEN",
        "CATEGORY",
    ]
    footer = f"page {page['page']} of {max(page['total_pages'], 1)} ({page['total']} contacts)"
    return table(head, rows) + "\n" + footer


@main.group(
    epilog="""\b
Examples:
  sendergate contacts list --mailbox sales.team@acme.example --sort count
  sendergate contacts set bob@spam.example --mailbox sales.team@acme.example --state blocked
""",
)
def contacts() -> None:
    """Every sender the gateway has seen, per mailbox or number, with counts and state."""


@contacts.command(
    "list",
    epilog="""\b
Examples:
  sendergate contacts list --mailbox sales.team@acme.example
  sendergate contacts list --number +14155550100 --state unset --sort last_seen
  sendergate contacts list --channel phone          (every scope; admin key)
""",
)
@_contact_scope_options
@click.option("--state", type=click.Choice(CONTACT_STATES))
@click.option(
    "--sort", type=click.Choice(("count", "last_seen", "first_seen")), help="[default: count]"
)
@click.option("--asc", is_flag=True, help="ascending (default: descending)")
@click.option("--channel", type=click.Choice(("mail", "phone")), help="with no scope only")
@click.option("--page", type=click.IntRange(min=1), help="[default: 1]")
@click.option("--per-page", type=click.IntRange(1, 200), help="[default: 50]")
@_json_option
def contacts_list(
    mailbox: str | None,
    number: str | None,
    org: str | None,
    state: Any,
    sort: Any,
    asc: bool,
    channel: Any,
    page: int | None,
    per_page: int | None,
) -> None:
    """List contacts, most frequent first."""
    scope = _contact_scope(mailbox, number, org)
    if scope is not None and channel is not None:
        raise click.UsageError("--channel only applies without --mailbox/--number/--org")
    result = _api().list_contacts(
        scope,
        state=state,
        sort=sort,
        descending=False if asc else None,
        page=page,
        per_page=per_page,
        channel=channel,
    )
    _emit(result, lambda: _contacts_text(result))


@contacts.command(
    "get",
    epilog="\b\nExamples:\n  sendergate contacts get +14155550123 --number +14155550100\n",
)
@click.argument("sender")
@_contact_scope_options
@_json_option
def contacts_get(sender: str, mailbox: str | None, number: str | None, org: str | None) -> None:
    """Show one contact of a mailbox, number or org list."""
    scope = _contact_scope(mailbox, number, org)
    if scope is None:
        raise click.UsageError("give --mailbox, --number or --org")
    contact = _api().get_contact(scope, sender)
    _emit(contact, lambda: pairs(contact.items()))


@contacts.command(
    "set",
    epilog="""\b
Examples:
  sendergate contacts set bob@spam.example --mailbox sales.team@acme.example --state blocked
  sendergate contacts set +14155550123 --number +14155550100 --state whitelisted
  sendergate contacts set +14155550123 --number +14155550100 --state unset
  sendergate contacts set bob@example.com --mailbox sales.team@acme.example --category vendor
""",
)
@click.argument("sender")
@_contact_scope_options
@click.option(
    "--state",
    type=click.Choice(CONTACT_STATES),
    help="blocked/whitelisted/muted write the sender's exact rule; unset removes it",
)
@click.option("--category", metavar="LABEL", help="a free label; '' removes it")
@_json_option
def contacts_set(
    sender: str,
    mailbox: str | None,
    number: str | None,
    org: str | None,
    state: Any,
    category: str | None,
) -> None:
    """Set a contact's state (its exact rule in that scope) or category (admin key)."""
    scope = _contact_scope(mailbox, number, org)
    if scope is None:
        raise click.UsageError("give --mailbox, --number or --org")
    if state is None and category is None:
        raise click.UsageError("nothing to change: give --state and/or --category")
    contact = _api().set_contact(
        scope, sender, state=state, category=False if category is None else _cleared(category)
    )
    _emit(contact, lambda: pairs(contact.items()))


def _review_text(result: Mapping[str, Any]) -> str:
    rows = [
        [
            p["scope"],
            p["sender"],
            p["state"],
            p["policy"],
            p["action"],
            p["reason"],
            p.get("outcome", "proposed"),
        ]
        for p in result["proposals"]
    ]
    head = ["SCOPE", "SENDER", "STATE", "POLICY", "ACTION", "REASON", "OUTCOME"]
    mode = (
        "dry run: nothing written (add --apply)"
        if result["dry_run"]
        else (f"applied: {result['written']} rules written")
    )
    summary = f"{len(rows)} proposals over {result['reviewed']} contacts; {mode}"
    return (table(head, rows, limit=60) + "\n" + summary) if rows else summary


@main.command(
    epilog="""\b
Examples:
  sendergate review            (dry run: prints what the policies would do)
  sendergate review --apply    (writes the rules, source review:POLICY, audited)
""",
)
@click.option("--apply", "apply_", is_flag=True, help="write the proposed rules (admin key)")
@_json_option
def review(apply_: bool) -> None:
    """Run the [review] policies of the gateway's config over its contacts."""
    result = _api().review(apply=apply_)
    _emit(result, lambda: _review_text(result))


@main.group(epilog="\b\nExamples:\n  sendergate audit list --actor ops\n")
def audit() -> None:
    """Who changed which rule or target, and when."""


@audit.command(
    "list",
    epilog="""\b
Examples:
  sendergate audit list
  sendergate audit list --scope sales.team@acme.example
  sendergate audit list --actor review:junk-tlds
""",
)
@click.option("--scope", metavar="SCOPE", help="a mailbox, a number, org:mail or org:phone")
@click.option("--actor", metavar="NAME", help="an API key name, config, review:POLICY")
@_paged
@_json_option
def audit_list(scope: str | None, actor: str | None, limit: int | None, offset: int | None) -> None:
    """List audit entries, newest first (admin key)."""
    page = _api().list_audit(scope=scope, actor=actor, limit=limit, offset=offset)
    rows = [[e["at"], e["actor"], e["action"], e["scope"], e["rule"]] for e in page["items"]]
    _emit(
        page,
        lambda: (
            table(["AT", "ACTOR", "ACTION", "SCOPE", "RULE"], rows)
            + "\n"
            + _page_footer(page, "entries")
        ),
    )
