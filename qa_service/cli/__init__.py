"""The `qa` command line: index, serve, ask, eval."""

from qa_service.cli.main import app

__all__ = ["app"]
