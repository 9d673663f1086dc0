"""``tensorpress``: run the service (``up``, ``serve``, ``worker``), manage its database and keys, and use it
(``models``, ``datasets``, ``jobs``, ``artifacts``: :mod:`tensorpress.cli`)."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import logging
import os
import socket
import sys

from tensorpress.cli import add_commands as add_client_commands
from tensorpress.cli import run as run_client


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_auth(host: str) -> None:
    from app.core.settings import get_settings

    auth = get_settings().auth
    if auth == "disabled" and not _loopback(host):
        sys.exit(f"refusing to listen on {host} with TENSORPRESS_AUTH=disabled: anyone who can reach it could "
                 "use it. Listen on 127.0.0.1, or set TENSORPRESS_AUTH=required.")
    if auth == "required":
        try:
            live = [k for k in _keys() if k.revoked_at is None]
        except Exception:  # the database is not migrated yet (`up` migrates it next)
            live = []
        if not live:
            print("TENSORPRESS_AUTH=required and no API key exists yet: every request will be refused until one "
                  "is made with `tensorpress keys create --tenant NAME`", file=sys.stderr)


def _keys() -> list:
    from app.core.db import session_scope
    from app.keys.service import list_all

    with session_scope() as session:
        keys = list_all(session)
        session.expunge_all()
        return keys


def _server(host: str, port: int, *, embedded: bool = False):
    import uvicorn

    from app.core.confinement import probe
    from app.core.logs import configure_logging
    from app.main import create_app

    configure_logging()
    confinement = probe().describe()
    logging.getLogger("tensorpress").log(logging.INFO if confinement["active"] else logging.WARNING,
                                         "upload inspections confined by %s%s", confinement["mechanism"],
                                         f" — {confinement['detail']}" if confinement["detail"] else "")
    app = create_app(embedded=embedded)
    # What start-up built lives as long as the process: frozen, a full collection no longer walks its ~125,000
    # objects (80 ms each time on 2 cores, a stall every request in flight waits for)
    gc.collect()
    gc.freeze()
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, log_level="info",
                                         timeout_graceful_shutdown=5))


def _worker_argv(queues: str, concurrency: int, hostname: str) -> list[str]:
    # prefork with a fresh child per job (worker_max_tasks_per_child=1): the parent never touches CUDA, each
    # job's child initialises it after the fork and its GPU memory is freed when the child exits.
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues,
            "--pool", "prefork", "--concurrency", str(concurrency), "--loglevel", "INFO", "--without-gossip",
            "--without-mingle", "--hostname", hostname]


def cmd_up(args: argparse.Namespace) -> None:
    from app import embedded
    from app.core.db import get_engine
    from app.core.migrate import upgrade
    from app.core.processes import die_with_parent
    from app.core.settings import get_settings

    _check_auth(args.host)
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    get_engine()
    upgrade(settings.resolved_database_url)
    print(f"TensorPress: data in {settings.data_dir.resolve()}, API on http://{args.host}:{args.port}",
          flush=True)
    supervisor = embedded.Supervisor(lambda node: _worker_argv("cpu", 1, node),
                                     f"tensorpress-cpu@{socket.gethostname()}-{os.getpid()}",
                                     preexec=die_with_parent())
    sys.exit(embedded.run(_server(args.host, args.port, embedded=True), supervisor, f"http://{args.host}:{args.port}",
                          announce=lambda line: print(line, flush=True)))


def cmd_serve(args: argparse.Namespace) -> None:
    _check_auth(args.host)
    _server(args.host, args.port).run()


def cmd_worker(args: argparse.Namespace) -> None:
    from app.core.settings import get_settings
    from workers.heartbeat import gpus

    visible = gpus()
    if args.gpu is not None:
        # One worker process per GPU: it sees only its own device, and runs one job at a time.
        if args.gpu >= len(visible) and not get_settings().fake_gpu_queue:
            sys.exit(f"no GPU {args.gpu} here (nvidia-smi lists {len(visible)})")
        os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
        queues, concurrency = args.queues or "gpu", 1
    else:
        queues, concurrency = args.queues or ("cpu,gpu" if visible else "cpu"), args.concurrency
    if "gpu" in queues.split(",") and not visible and not get_settings().fake_gpu_queue:
        sys.exit("refusing to serve the gpu queue: no GPU is visible here (nvidia-smi lists none)")
    name = f"gpu{args.gpu}" if args.gpu is not None else queues.replace(",", "-")
    argv = _worker_argv(queues, concurrency, f"tensorpress-{name}@%h-{os.getpid()}")
    os.execv(argv[0], argv)


def cmd_db_upgrade(args: argparse.Namespace) -> None:
    from app.core.migrate import upgrade
    from app.core.settings import get_settings

    settings = get_settings()
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url, args.revision)
    print(f"database at {args.revision}")


def cmd_check(args: argparse.Namespace) -> None:
    """Storage against the database: bytes without a row, rows without their bytes."""
    from app.core.consistency import check
    from app.core.db import session_scope
    from app.core.storage import get_store

    with session_scope() as session:
        report = check(session, get_store(), fix=args.fix)
    for prefix in report.orphans:
        print(f"{'removed' if prefix in report.removed else 'orphan'}: {prefix} (stored, no row)")
    for line in report.missing:
        print(f"missing: {line} (row, no bytes)")
    for item in report.removed:
        if item.startswith(".staging/"):
            print(f"removed: {item} (stale staging file)")
    print("consistent" if report.ok else "inconsistent", file=sys.stderr)
    sys.exit(0 if report.ok else 1)


def cmd_keys(args: argparse.Namespace) -> None:
    """API keys, straight in the database (run where the server's settings are)."""
    from app.core.db import session_scope
    from app.keys import service

    if args.keys_command == "create":
        try:
            with session_scope() as session:
                record, key = service.create(session, args.tenant, admin=args.admin)
                key_id = record.id
        except ValueError as exc:
            sys.exit(f"tensorpress keys create: {exc}")
        print(f"key {key_id} for tenant {args.tenant}{' (admin)' if args.admin else ''}; it is shown only now, "
              "store it safely:", file=sys.stderr)
        print(key)
    elif args.keys_command == "list":
        print(f"{'id':16}  {'tenant':20}  {'admin':5}  {'created':25}  revoked")
        for k in _keys():
            revoked = k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else ""
            print(f"{k.id:16}  {k.tenant:20}  {'yes' if k.admin else 'no':5}  "
                  f"{k.created_at.isoformat(timespec='seconds'):25}  {revoked}")
    else:
        with session_scope() as session:
            if not service.revoke(session, args.key_id):
                sys.exit(f"no live key {args.key_id}")
        print(f"key {args.key_id} revoked")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tensorpress", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, helptext in (("up", cmd_up, "API and one CPU worker on this machine (embedded default)"),
                                 ("serve", cmd_serve, "the API only")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        p.set_defaults(func=func)
    p = sub.add_parser("worker", help="a Celery worker for the given queues")
    p.add_argument("--queues", default=None, help="comma-separated: cpu, gpu (default: cpu, plus gpu when a GPU "
                   "is visible)")
    p.add_argument("--concurrency", type=int, default=1, help="jobs at once on this worker")
    p.add_argument("--gpu", type=int, default=None, help="serve the gpu queue with this one GPU only "
                   "(CUDA_VISIBLE_DEVICES); start one worker per GPU")
    p.set_defaults(func=cmd_worker)
    db = sub.add_parser("db", help="database")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    p = dbsub.add_parser("upgrade", help="migrate the database to the latest revision")
    p.add_argument("revision", nargs="?", default="head")
    p.set_defaults(func=cmd_db_upgrade)
    p = sub.add_parser("check", help="storage against the database: orphaned bytes, rows without bytes")
    p.add_argument("--fix", action="store_true", help="delete bytes no row has claimed for an hour, and stale "
                   "staging files (rows without bytes are only reported)")
    p.set_defaults(func=cmd_check)
    keys = sub.add_parser("keys", help="API keys (TENSORPRESS_AUTH=required)")
    keysub = keys.add_subparsers(dest="keys_command", required=True)
    p = keysub.add_parser("create", help="make a key for a tenant and print it once")
    p.add_argument("--tenant", required=True, help="lower-case letters, digits, '.', '_', '-'")
    p.add_argument("--admin", action="store_true", help="may read and manage every tenant's resources")
    p.set_defaults(func=cmd_keys)
    keysub.add_parser("list", help="every key, without secrets").set_defaults(func=cmd_keys)
    p = keysub.add_parser("revoke", help="refuse a key from now on")
    p.add_argument("key_id")
    p.set_defaults(func=cmd_keys)
    add_client_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if hasattr(args, "client_command"):  # models, datasets, jobs, artifacts: a client of a server
        run_client(args)
    args.func(args)


if __name__ == "__main__":
    main()
