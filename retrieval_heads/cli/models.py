"""``retrieval-heads models``: list the embedded zoo, or fetch one model for offline use."""

from __future__ import annotations

from .base import Command
from .tables import format_table


class Models(Command):
    name = "models"
    help = "list the embedded model zoo or pull a model into the cache"

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        sub.add_parser("list", help="list zoo models and whether they are cached")
        pull = sub.add_parser("pull", help="download and convert a zoo model")
        pull.add_argument("name")

    def run(self, args) -> int:
        from .. import zoo
        from ..models import converted_dir, pull

        if args.action == "pull":
            path = pull(zoo.lookup(args.name).name)
            print(f"{args.name}: ready in {path}")
            return 0
        rows = [[m.name, "yes" if (converted_dir(m.name) / "config.json").exists() else "no", m.description] for m in zoo.ZOO.values()]
        print(format_table(["name", "cached", "description"], rows))
        print(f"cache: {zoo.cache_root()}")
        return 0
