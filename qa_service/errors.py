"""Domain errors. The API maps each to one HTTP status in `qa_service.api.errors`."""

from __future__ import annotations


class QAError(Exception):
    """Base class: the message is written for the user and safe to show."""


class DocumentNotFoundError(QAError, KeyError):
    def __init__(self, document_id: str) -> None:
        super().__init__(f"no document with id {document_id!r}")
        self.document_id = document_id

    def __str__(self) -> str:
        return str(self.args[0])


class IndexNotFoundError(QAError, FileNotFoundError):
    """No index has been built in the index folder yet."""


class IndexCorruptError(QAError):
    """The index on disk is damaged or unreadable; `qa index` rebuilds it."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"{detail}. Rebuild the index with `qa index`.")


class IndexStaleError(QAError):
    """The index was built from another corpus, model or passage settings."""


class ClusterError(QAError):
    """The distributed setup cannot work as configured: Ray is not installed, its cluster does
    not answer, or a sharded index misses a shard. The message says how to fix it."""


class IndexReplacedError(QAError):
    """Another process made current an index this server cannot serve (another model or other
    settings): it goes on answering from the one it has, and refuses writes until restarted."""


class ServiceBusyError(QAError):
    """A question waited longer than its budget for the model (QA_MAX_WAIT_SECONDS)."""


class ServiceNotReadyError(QAError):
    """The model or index is not loaded yet, or the service is shutting down."""


class IndexBusyError(QAError):
    """Another writer held the index folder's lock for too long."""


class DocumentExistsError(QAError):
    """A new document's id is taken (POST; PUT replaces)."""


class LastDocumentError(QAError):
    """Removing every document would leave an index with nothing to search."""


class InvalidDocumentError(QAError):
    """A document that cannot be added: a bad id, or a file that is unreadable or empty."""


class UnsupportedDocumentTypeError(InvalidDocumentError):
    """A file in a format no loader reads."""


class StorageError(QAError, OSError):
    """The corpus or index folder cannot be written (permissions, a full disk)."""


class ReadOnlyError(QAError):
    """A write to a service that serves an index it has no folder to write to (an evaluation's)."""
