"""SQLite storage URLs for Optuna, the one place they are built from a path and read back into one.

A run folder may be named anything: unescaped, `?` would start URL options (the database landing outside
the run), `#` a fragment, and `%20` would read as a space. SQLAlchemy's URL escapes and unescapes them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["sqlite_path", "sqlite_url"]


def sqlite_url(path: Path) -> str:
    """`sqlite:///<absolute path>`, escaped, for Optuna's RDB storage."""
    from sqlalchemy.engine import URL

    return URL.create("sqlite", database=str(Path(path).resolve())).render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    """The database file of a `sqlite:///` URL (unescaped), None for in-memory SQLite or another kind of URL."""
    if not url.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None
