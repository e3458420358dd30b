"""The ``modi-sync`` console script (docs/api.md, "Processes and configuration")."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from aiohttp import web

from . import food_import, history_commands
from .access_log import AccessLog, access_logger
from .accounts import Accounts, check_password, checked_email
from .app import create_app
from .audit import Actor
from .collector import cycle_collection
from .config import ConfigError, Settings, load_settings
from .documents import Documents, open_documents
from .errors import Conflict, Invalid, ModiError, NotFound
from .export import Chunks, Exporter
from .history_commands import NOT_FOUND, USAGE, UsageError, parse_doc_ref, parse_timestamp
from .listening import bound_sockets
from .logs import configure_logging
from .retention import retention_pass
from .retention import summary as retention_summary
from .runtime import open_storage
from .tokens import SecretError, load_or_create_secret

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

    compact = commands.add_parser("compact", help="compact document history")
    which = compact.add_mutually_exclusive_group(required=True)
    which.add_argument("--doc", metavar="USER_ID/NAME", help="one document")
    which.add_argument("--all", action="store_true", help="every document")
    compact.add_argument("--min-updates", type=int, metavar="N",
                         help="only documents with at least N stored updates "
                              "(default 2; 1 with --purge)")
    compact.add_argument("--purge", action="store_true",
                         help="then drop every earlier snapshot of each document (erasing "
                              "deleted entries now, not after the retention period)")
    compact.add_argument("--dry-run", action="store_true",
                         help="report what compaction would do; change nothing")
    compact.add_argument("--data-dir", help="data dir of the embedded services")

    history = commands.add_parser("history", help="list a document's snapshots")
    history.add_argument("doc", metavar="USER_ID/NAME")
    history.add_argument("--data-dir", help="data dir of the embedded services")

    restore = commands.add_parser(
        "restore", help="bring a document back to its content at a time, as a new update")
    restore.add_argument("doc", metavar="USER_ID/NAME")
    restore.add_argument("--at", required=True, metavar="TIMESTAMP",
                         help="ISO 8601, e.g. 2026-11-20T08:00:00Z (no zone: UTC)")
    restore.add_argument("--data-dir", help="data dir of the embedded services")

    retention = commands.add_parser("retention", help="remove what is past its retention")
    retention_commands = retention.add_subparsers(dest="retention_command", required=True)
    run = retention_commands.add_parser(
        "run", help="remove old audit entries and snapshots (one pass, now)")
    run.add_argument("--data-dir", help="data dir of the embedded services")

    user = commands.add_parser("user", help="manage accounts")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    create = user_commands.add_parser(
        "create", help="create an account; the password is read from a prompt or stdin")
    create.add_argument("email")
    create.add_argument("--admin", action="store_true", help="give the account the admin role")
    create.add_argument("--data-dir", help="data dir of the embedded services")
    delete = user_commands.add_parser(
        "delete", help="erase an account and all its data (GDPR erasure)")
    delete.add_argument("account", metavar="EMAIL|ID")
    delete.add_argument("--yes", action="store_true",
                        help="do not ask for the account's email as confirmation")
    delete.add_argument("--data-dir", help="data dir of the embedded services")
    export = user_commands.add_parser(
        "export", help="everything held about an account, as JSON (the GDPR export)")
    export.add_argument("account", metavar="EMAIL|ID")
    export.add_argument("--output", metavar="FILE",
                        help="write here (created with mode 0600) instead of stdout")
    export.add_argument("--data-dir", help="data dir of the embedded services")

    worker = commands.add_parser(
        "worker", help="read nutrition labels from uploaded photos (the ocr extra)")
    worker.add_argument("--data-dir", help="data dir of the embedded services")

    foods = commands.add_parser("foods", help="the shared food database")
    foods_commands = foods.add_subparsers(dest="foods_command", required=True)
    load = foods_commands.add_parser(
        "import", help="load or update foods from a CSV or JSON file (docs/foods.md)")
    which_foods = load.add_mutually_exclusive_group()
    which_foods.add_argument("file", nargs="?", metavar="FILE",
                             help=".csv, .json, .csv.gz or .json.gz")
    which_foods.add_argument("--dataset", action="store_true",
                             help="the shipped USDA SR28 dataset (also: no FILE)")
    load.add_argument("--source", help="the source of rows that name none (default: the "
                                       "file's name without its extensions)")
    load.add_argument("--skip-invalid", action="store_true",
                      help="import the valid rows; still report the invalid ones")
    load.add_argument("--data-dir", help="data dir of the embedded services")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(
            server=args.command == "serve",  # a command starts without the server's own
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
    if args.command in ("compact", "history", "restore"):
        try:
            return asyncio.run(_history_command(settings, args))
        except UsageError as exc:
            print(f"modi-sync: {exc}", file=sys.stderr)
            return USAGE
    if args.command == "retention":
        return asyncio.run(_retention(settings))
    if args.command == "user" and args.user_command == "delete":
        return asyncio.run(_delete_user(settings, args.account, confirmed=args.yes))
    if args.command == "user" and args.user_command == "create":
        return _create_user(settings, args.email, admin=args.admin)
    if args.command == "user" and args.user_command == "export":
        return asyncio.run(_export_user(settings, args.account, args.output))
    if args.command == "foods":
        return asyncio.run(_import_foods(settings, args))
    if args.command == "worker":
        return _worker(settings)
    return 2  # argparse rejects unknown commands before this


def serve(settings: Settings) -> int:
    try:
        load_or_create_secret(settings.jwt_secret, settings.data_dir)  # refused: no start
    except SecretError as exc:
        print(f"modi-sync: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    app = create_app(settings)
    if settings.gc_full_seconds > 0:
        app.cleanup_ctx.append(cycle_collection(settings.gc_full_seconds))
    # The shipped food dataset, on a first start on the embedded PostgreSQL: loaded in
    # the background while the server already serves (MODI_FOODS_AUTOLOAD).
    app.cleanup_ctx.append(food_import.autoload_dataset)
    # run_app turns SIGINT and SIGTERM into a graceful shutdown: sockets closed with
    # 1001, queued updates stored, embedded services stopped.
    web.run_app(
        app,
        sock=bound_sockets(settings.host, settings.port),  # with deferred accept
        loop=loop,
        print=lambda msg: log.info("listening on http://%s:%d", settings.host, settings.port),
        access_log_class=AccessLog,
        access_log=access_logger(settings),  # None: off, at no cost
        shutdown_timeout=10.0,
        # aiohttp's default of 128 overflows when a few hundred phones reconnect at once
        # (after a deploy, say): the kernel drops their handshakes and they retry later.
        backlog=1024,
        # No SO_KEEPALIVE per socket (a system call each): with Linux's two-hour default
        # it finds nothing that aiohttp's idle timeout (HTTP) or the keep-alive sweep
        # (sync sockets, keepalive.py) has not closed long before.
        tcp_keepalive=False,
    )
    return 0


def _worker(settings: Settings) -> int:
    """``worker``: the reader is loaded first (seconds), then jobs are taken until
    SIGTERM or SIGINT; the job under way is finished."""
    try:
        from ocr_worker.reader import LabelReader  # noqa: PLC0415 - torch: only here
        reader = LabelReader()
    except ImportError as exc:
        print(f"modi-sync: the worker needs the ocr extra, pip install 'modi-sync[ocr]' "
              f"(README.md): {exc}", file=sys.stderr)
        return 2

    def read(data: bytes) -> dict[str, Any]:
        return reader.read(data).as_json()

    async def work() -> None:
        from ocr_worker.worker import run_worker  # noqa: PLC0415

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run_worker(settings, read, stop=stop)

    try:
        asyncio.run(work())
    finally:
        reader.close()  # its temporary folder
    return 0


async def _migrate(settings: Settings) -> int:
    async with open_storage(settings) as storage:  # migrates
        applied = storage.migrations_applied
    log.info("database schema is current (%s)", ", ".join(applied) or "nothing new to apply")
    return 0


async def _history_command(settings: Settings, args: argparse.Namespace) -> int:
    doc_ref = getattr(args, "doc", None)
    target = parse_doc_ref(doc_ref) if doc_ref else None
    at = parse_timestamp(args.at) if args.command == "restore" else None
    if args.command == "compact" and args.min_updates is None:
        args.min_updates = 1 if args.purge else 2  # an erasure must not skip a short log
    if args.command == "compact" and args.min_updates < 1:
        raise UsageError("--min-updates must be at least 1")
    async with open_storage(settings) as storage, open_documents(storage) as documents:
        if args.command == "history":
            assert target is not None
            code = await history_commands.history(documents, *target)
        elif args.command == "restore":
            assert target is not None and at is not None
            code = await history_commands.restore(documents, *target, at)
        else:
            code = await _compact(settings, documents, target, args)
    if code == NOT_FOUND:
        print(f"modi-sync: no document {doc_ref}", file=sys.stderr)
    return code


async def _compact(settings: Settings, documents: Documents, target: tuple[UUID, str] | None,
                   args: argparse.Namespace) -> int:
    if target is None:
        targets = await documents.with_updates(args.min_updates)
    else:
        try:
            info = await documents.info(*target)
        except NotFound:
            return NOT_FOUND
        targets = [info] if info.updates >= args.min_updates else []
    # An operator's compaction always keeps a snapshot (when snapshots are on at all),
    # and purges the ones past their retention.
    keep = settings.snapshot_every is not None
    return await history_commands.compact(
        documents, targets,
        snapshot_every=timedelta(0) if keep else None,
        retention=timedelta(days=settings.snapshot_retention_days) if keep else None,
        dry_run=args.dry_run,
        purge=args.purge,
    )


async def _retention(settings: Settings) -> int:
    """``retention run``: one pass now; 75 (as scripts/nightly-compact) when another
    instance is doing one."""
    async with open_storage(settings) as storage:
        removed = await retention_pass(storage)
    if removed is None:
        print("modi-sync: another instance is running retention; nothing done",
              file=sys.stderr)
        return 75
    print(retention_summary(removed))
    return 0


async def _delete_user(settings: Settings, account: str, *, confirmed: bool) -> int:
    """``user delete``: erase the account (docs/gdpr.md, "Erasure"). What it prints
    names the account by id only: the output may be kept in a log, the email may not."""
    async with open_storage(settings) as storage:
        accounts = Accounts(storage)
        try:
            user = await accounts.find(account)
        except NotFound as exc:
            print(f"modi-sync: {exc}", file=sys.stderr)
            return NOT_FOUND
        if not confirmed and not _confirmed_by_email(user.email):
            print("modi-sync: the email typed does not match; nothing erased", file=sys.stderr)
            return 1
        erased = await accounts.delete(user.id, Actor.command("user-delete"))
    if erased is None:  # erased by someone else meanwhile
        print(f"modi-sync: no account {account}", file=sys.stderr)
        return NOT_FOUND
    print(f"erased account {user.id}: its documents and their history, consents and "
          f"sessions; {erased.foods_deleted} unverified foods deleted; "
          f"{erased.audit_entries_stripped} audit entries stripped of email and address")
    return 0


def _confirmed_by_email(email: str) -> bool:
    """The operator types the account's email: at a prompt on a terminal, else as the
    first line of stdin (a script that means it passes --yes)."""
    if sys.stdin.isatty():
        typed = input(f"Erase the account {email} and all its data? Type its email: ")
    else:
        typed = sys.stdin.readline()
    return typed.strip().lower() == email.lower()


def _read_password() -> str:
    """From a prompt on a terminal, else the first line of stdin; never an argument."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat: ") != password:
            raise ValueError("the passwords differ")
        return password
    return sys.stdin.readline().rstrip("\r\n")


def _create_user(settings: Settings, email: str, *, admin: bool) -> int:
    try:
        password = _read_password()
        email = checked_email(email)
        check_password(password)
    except (ValueError, Invalid) as exc:
        print(f"modi-sync: {exc}", file=sys.stderr)
        return 2

    async def create() -> int:
        async with open_storage(settings) as storage:
            accounts = Accounts(storage)
            try:
                user = await accounts.create(email, password, "admin" if admin else "user")
            except Conflict:
                print(f"modi-sync: an account with the email {email} exists", file=sys.stderr)
                return 1
        print(f"created {user.role} {user.email} ({user.id})")
        return 0

    return asyncio.run(create())


async def _export_user(settings: Settings, account: str, output: str | None) -> int:
    """``user export``: what ``GET /api/v1/users/me/export`` answers, logged as this run."""
    async with open_storage(settings) as storage, open_documents(storage) as documents:
        try:
            user = await Accounts(storage).find(account)
        except NotFound as exc:
            print(f"modi-sync: {exc}", file=sys.stderr)
            return 3
        chunks = await Exporter(storage, documents).open(user.id,
                                                         Actor.command("user-export"))
        try:
            async with contextlib.aclosing(chunks):
                if output is None:
                    async for chunk in chunks:
                        sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
                else:
                    await _write_private(output, chunks)
        except ModiError as exc:  # a document unavailable, say: what was written is cut
            print(f"modi-sync: the export stopped midway: {exc}", file=sys.stderr)
            return 1
    return 0


async def _import_foods(settings: Settings, args: argparse.Namespace) -> int:
    """``foods import``: 0 imported; 65 (EX_DATAERR) invalid rows, so nothing imported,
    or a file refused whole; 66 (EX_NOINPUT) no such file. Each invalid row is
    reported on stderr with its line (CSV) or index (JSON)."""
    path = Path(args.file) if args.file else food_import.DATASET
    shown = path.name

    def rejected(row: food_import.Rejected) -> None:
        print(f"modi-sync: {shown} {row}", file=sys.stderr)

    async with open_storage(settings) as storage:
        try:
            report = await food_import.import_file(
                storage.pool, storage.redis, path, source=args.source,
                skip_invalid=args.skip_invalid, on_rejected=rejected,
                progress=food_import.stderr_progress(f"importing {shown}", _size(path)))
        except FileNotFoundError as exc:
            print(f"modi-sync: {exc}", file=sys.stderr)
            return 66
        except food_import.ImportFileError as exc:
            print(f"modi-sync: {shown}: {exc}; nothing imported", file=sys.stderr)
            return 65
    if not report.imported:
        print(f"modi-sync: {shown}: {report.invalid} invalid rows; nothing imported "
              "(--skip-invalid imports the valid ones)", file=sys.stderr)
        return 65
    print(f"{shown}: {report.summary()}")
    return 0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


async def _write_private(path: str, chunks: Chunks) -> None:
    """Into ``path``, readable by its owner only (it holds personal data); removed again
    if the export stops midway, so no truncated file passes for an export."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file that was there keeps its mode through O_CREAT
    with os.fdopen(fd, "wb") as out:
        try:
            async for chunk in chunks:
                out.write(chunk)
        except BaseException:
            os.unlink(path)
            raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
