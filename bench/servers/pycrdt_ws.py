"""pycrdt-websocket 0.16 on 127.0.0.1 under uvicorn: in memory, or with its SQLiteYStore.

Run with the anchors' own venv (bench/setup.sh makes it):

    bench/.venv-anchors/bin/python bench/servers/pycrdt_ws.py PORT [--sqlite FILE]

The websocket path is the room name. With ``--sqlite`` each room gets an
``SQLiteYStore`` on that file (the store pycrdt-websocket ships; every update is
written to it, with its default checkpoint every 100 updates) and is loaded from it
when the room is created, which is how Jupyter's collaboration server wires it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

import uvicorn
from anyio import Event
from pycrdt.store import SQLiteYStore, YDocNotFound
from pycrdt.websocket import ASGIServer, WebsocketServer, YRoom


class BenchWebsocketServer(WebsocketServer):
    """pycrdt-websocket's server, with room creation made safe for concurrent clients.

    In 0.16, two clients that open a new room at the same moment both call
    ``start_room``; the second waits forever on the room's start lock (held by the
    first for the room's whole life) and that client never gets a reply. Here the
    first caller creates and starts the room and the others wait for it. With a store,
    the room is also loaded from it before anyone syncs with it.
    """

    def __init__(self, store_class: type[SQLiteYStore] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._store_class = store_class
        self._loading: dict[str, Event] = {}

    async def get_room(self, name: str) -> YRoom:
        loading = self._loading.get(name)
        if loading is not None:
            await loading.wait()
        room = self.rooms.get(name)
        if room is not None and room.started.is_set():
            return room
        loaded = self._loading[name] = Event()
        try:
            if room is None:
                ystore = None if self._store_class is None else self._store_class(
                    path=name, log=self.log)
                room = YRoom(ready=ystore is None, ystore=ystore, log=self.log,
                             exception_handler=self.exception_handler)
                self.rooms[name] = room
            await self.start_room(room)
            if room.ystore is not None and not room.ready:
                await room.ystore.started.wait()
                with contextlib.suppress(YDocNotFound):  # a new document
                    await room.ystore.apply_updates(room.ydoc)
                room.ready = True
        finally:
            loaded.set()
            del self._loading[name]
        return room


async def _create_database(store_class: type[SQLiteYStore]) -> None:
    """Make the tables once, before any room: stores that start together on a new file
    otherwise race to create them ("table yupdates already exists")."""
    from anyio import create_task_group

    store = store_class(path="__bench_init__")
    async with create_task_group() as tg:
        await tg.start(store.start)
        await store.db_initialized.wait()
        await store.stop()
        tg.cancel_scope.cancel()


def _log_exception(exception: Exception, log: logging.Logger) -> bool:
    log.error("pycrdt-websocket: %r", exception)
    return True


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--sqlite", metavar="FILE", help="store updates in this SQLite file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    store_class = None
    if args.sqlite:
        store_class = type("BenchSQLiteYStore", (SQLiteYStore,), {"db_path": args.sqlite})
        await _create_database(store_class)
    websocket_server = BenchWebsocketServer(store_class, exception_handler=_log_exception)
    app = ASGIServer(websocket_server)
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning",
                            lifespan="off", ws_max_size=64 * 1024 * 1024)
    async with websocket_server:
        await uvicorn.Server(config).serve()


if __name__ == "__main__":
    try:
        import uvloop  # the same event loop modi-sync runs on
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
