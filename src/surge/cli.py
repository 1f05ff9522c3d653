"""The `surge` command: serve | worker | dead-letters | db migrate | db seed | token."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from surge import config


def _parser() -> argparse.ArgumentParser:
    settings_flags = argparse.ArgumentParser(add_help=False)
    group = settings_flags.add_argument_group("settings (each also an env var SURGE_*)")
    config.add_arguments(group)  # type: ignore[arg-type]

    parser = argparse.ArgumentParser(prog="surge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("serve", parents=[settings_flags], help="run the HTTP server")
    commands.add_parser(
        "worker",
        parents=[settings_flags],
        help="relay the outbox and run the consumers (mail, audit log)",
    )
    dead = commands.add_parser("dead-letters", help="events the consumers gave up on")
    dead_commands = dead.add_subparsers(dest="dead_command", required=True)
    listing = dead_commands.add_parser("list", parents=[settings_flags], help="list them")
    listing.add_argument("--limit", type=int, default=100, help="at most this many")
    replay = dead_commands.add_parser(
        "replay",
        parents=[settings_flags],
        help="put them back on the stream for the group that gave up on them",
    )
    replay.add_argument("ids", nargs="*", metavar="ID", help="dead-letter ids (see list)")
    replay.add_argument("--all", action="store_true", help="every dead letter")

    db = commands.add_parser("db", help="database schema and demo data")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser(
        "migrate", parents=[settings_flags], help="bring the schema to the newest revision"
    )
    seed = db_commands.add_parser("seed", parents=[settings_flags], help="insert demo data")
    seed.add_argument("--orders", type=int, default=1000, help="orders to insert")
    seed.add_argument(
        "--users",
        type=int,
        default=100,
        help="users owning them: order k belongs to user((k-1) %% U + 1)",
    )
    seed.add_argument("--reset", action="store_true", help="empty orders and sales first")
    seed.add_argument(
        "--if-empty", action="store_true", help="do nothing when orders already exist"
    )

    token = commands.add_parser(
        "token", parents=[settings_flags], help="print a bearer token for USER"
    )
    token.add_argument("user", metavar="USER")
    roles = token.add_mutually_exclusive_group()
    roles.add_argument("--admin", action="store_true", help="with the admin role")
    roles.add_argument(
        "--service",
        action="store_true",
        help="with the service role: publishes into rooms (POST /rooms/{room}/messages)",
    )
    token.add_argument("--ttl", type=float, default=86_400.0, help="lifetime in seconds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    overrides = {f.name: getattr(args, f.name, None) for f in config.FIELDS}
    try:
        settings = config.load(overrides=overrides)
        if args.command in ("serve", "token"):
            config.check_secret(settings)
    except config.ConfigError as exc:
        print(f"surge: configuration error: {exc}", file=sys.stderr)
        return 2

    from surge.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if args.command == "serve":
        return _serve(settings)
    if args.command == "token":
        return _token(settings, args.user, args.admin, args.ttl, args.service)
    if args.command == "worker":
        return _worker(settings)
    if args.command == "dead-letters":
        return _dead_letters(settings, args)
    if args.db_command == "migrate":
        from surge import db

        db.migrate(settings.database_url)
        print("schema is at the newest revision")
        return 0
    return _seed(settings, args)


def _serve(settings: config.Settings) -> int:
    from surge import lifecycle

    if not _schema_ready(settings):
        return 2
    return lifecycle.run(settings)


def _worker(settings: config.Settings) -> int:
    import uvloop

    from surge.worker_process import run_worker

    if not _schema_ready(settings):
        return 2
    return uvloop.run(run_worker(settings))


def _schema_ready(settings: config.Settings) -> bool:
    from surge import db

    if settings.database_url.startswith("sqlite"):
        db.migrate(settings.database_url)  # embedded: first start creates the schema
        return True
    if not db.schema_is_current(settings.database_url):
        print("surge: the database schema is not current; run `surge db migrate`", file=sys.stderr)
        return False
    return True


def _dead_letters(settings: config.Settings, args: argparse.Namespace) -> int:
    from surge.worker_process import list_dead_letters, replay_dead_letters

    if args.dead_command == "list":
        for line in asyncio.run(list_dead_letters(settings, max(1, args.limit))):
            print(line)
        return 0
    if not args.ids and not args.all:
        print("surge: name dead-letter ids to replay, or --all", file=sys.stderr)
        return 2
    replayed = asyncio.run(replay_dead_letters(settings, args.ids, args.all))
    print(f"replayed {replayed} dead letter(s)")
    return 0 if args.all or replayed == len(args.ids) else 1


def _token(
    settings: config.Settings, user: str, admin: bool, ttl: float, service: bool = False
) -> int:
    from surge.auth import load_or_create_secret, mint

    if not 0 < len(user) <= 64:
        print("surge: USER must be 1-64 characters", file=sys.stderr)
        return 2
    secret = settings.jwt_secret or load_or_create_secret(settings.secret_path)
    print(mint(secret, user, admin=admin, ttl=ttl, role="service" if service else ""))
    return 0


def _seed(settings: config.Settings, args: argparse.Namespace) -> int:
    from surge import db

    if args.orders < 0 or args.users < 1:
        print("surge: --orders must be >= 0 and --users >= 1", file=sys.stderr)
        return 2
    db.migrate(settings.database_url)
    if args.if_empty and asyncio.run(db.has_orders(settings.database_url)):
        print("orders already present; nothing seeded")
        return 0
    result = asyncio.run(db.seed(settings.database_url, args.orders, args.users, args.reset))
    print(
        f"seeded {result.orders} orders (ids from {result.first_order_id}) and "
        f"{result.sales} sales for {args.users} users in {result.seconds:.2f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
