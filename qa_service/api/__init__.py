"""The HTTP API: a thin layer of request/response models over an `AnsweringService`."""

from qa_service.api.app import create_app

__all__ = ["create_app"]
