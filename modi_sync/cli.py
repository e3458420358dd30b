"""The ``modi-sync`` console script (contract section 1)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from .app import create_app, open_storage
from .config import ConfigError, Settings, load_settings
from .logs import configure_logging

log = logging.getLogger("modi_sync")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modi-sync", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the sync and REST server")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument("--data-dir", help="embedded services and secrets (default ./.modi)")

    migrate = commands.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("--data-dir", help="data dir of the embedded services")

    user = commands.add_parser("user", help="manage accounts")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    create = user_commands.add_parser(
        "create", help="create an account; the password is read from a prompt or stdin")
    create.add_argument("email")
    create.add_argument("--admin", action="store_true", help="give the account the admin role")
    create.add_argument("--data-dir", help="data dir of the embedded services")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
            data_dir=getattr(args, "data_dir", None),
        )
    except ConfigError as exc:
        print(f"modi-sync: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    if args.command == "serve":
        return serve(settings)
    if args.command == "migrate":
        return asyncio.run(_migrate(settings))
    if args.command == "user" and args.user_command == "create":
        return _create_user(settings, args.email, admin=args.admin)
    return 2  # argparse rejects unknown commands before this


def serve(settings: Settings) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    # run_app turns SIGINT and SIGTERM into a graceful shutdown: sockets closed with
    # 1001, queued updates stored, embedded services stopped.
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop=loop,
        print=lambda msg: log.info("listening on http://%s:%d", settings.host, settings.port),
        access_log=None,
        shutdown_timeout=10.0,
    )
    return 0


async def _migrate(settings: Settings) -> int:
    from storage.database import migrate

    async with open_storage(settings) as (pool, _redis):
        applied = await migrate(pool)
    log.info("database schema is current (%s)", ", ".join(applied) or "nothing new to apply")
    return 0


def _read_password() -> str:
    """From a prompt on a terminal, else the first line of stdin; never an argument."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat: ") != password:
            raise ValueError("the passwords differ")
        return password
    return sys.stdin.readline().rstrip("\r\n")


def _create_user(settings: Settings, email: str, *, admin: bool) -> int:
    from storage.database import migrate
    from storage.users import EmailTaken, UserStore

    from .api.errors import ApiError
    from .api.validation import email_field, password_field
    from .passwords import hash_password

    try:
        password = _read_password()
        body = {"email": email, "password": password}
        email, password = email_field(body), password_field(body)
    except (ValueError, ApiError) as exc:
        print(f"modi-sync: {exc}", file=sys.stderr)
        return 2

    async def create() -> int:
        async with open_storage(settings) as (pool, _redis):
            await migrate(pool)
            try:
                user = await UserStore(pool).create(
                    email, await hash_password(password), "admin" if admin else "user")
            except EmailTaken:
                print(f"modi-sync: an account with the email {email} exists", file=sys.stderr)
                return 1
        print(f"created {user.role} {user.email} ({user.id})")
        return 0

    return asyncio.run(create())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
