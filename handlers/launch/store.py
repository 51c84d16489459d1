"""The ledger's object store: the Cloud Storage JSON API, spoken directly over ``requests``.

The ledger needs six small operations (read with generation, create-only and compare-and-swap
writes, delete, list with metadata, read metadata) on objects of a few KB. google-cloud-storage
would bring google-api-core, protobuf and its own retry stack into every cold start (about 120 ms and
7 MB, measured by ``make bench``) for those six calls, so this module makes them itself, with the
process's HTTP session and the project's retry policy:

- a create is ``POST /upload/storage/v1/b/B/o?uploadType=multipart&ifGenerationMatch=0``, a
  compare-and-swap the same with ``ifGenerationMatch=<generation read>``: ``412`` -> :class:`Conflict`;
- a read is ``GET /storage/v1/b/B/o/NAME?alt=media``; the generation comes back in the
  ``x-goog-generation`` header;
- 408/409/429/5xx, timeouts and connection errors are retried with backoff (``handlers.core.retry``) within
  :data:`RETRY_BUDGET_SECONDS`, then raised as :class:`LedgerUnavailable` (the event is redelivered).
  A conditional write whose answer was lost and is retried answers 412: callers already treat a
  conflict as "re-read and decide", which is what makes that retry safe.

``STORAGE_EMULATOR_HOST`` points it at fake-gcs-server, without credentials, as google-cloud-storage
does.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

from handlers.core import clients, http, retry
from handlers.core.errors import BackendRejected, BackendUnavailable, LedgerUnavailable, NotFound

GCS_ENDPOINT = "https://storage.googleapis.com"
RETRY_BUDGET_SECONDS = 30.0
T = TypeVar("T")


class Conflict(Exception):
    """A conditional write lost: the object exists (create) or changed since it was read (update)."""


def endpoint() -> str:
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "").rstrip("/")
    if not emulator:
        return GCS_ENDPOINT
    return emulator if "://" in emulator else f"http://{emulator}"


def default_session() -> Any:
    return clients.plain_session() if os.environ.get("STORAGE_EMULATOR_HOST") else clients.google_session()


class GcsStore:
    """:class:`handlers.launch.ledger.Store` over one bucket of the Cloud Storage JSON API."""

    def __init__(
        self, bucket: str, session: Any = None, base_url: str | None = None, timeout: Any = None
    ) -> None:
        self.bucket = bucket
        self._session = session
        self.base_url = (base_url or endpoint()).rstrip("/")
        self.timeout = timeout or http.default_timeout()

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = default_session()
        return self._session

    # -- plumbing ---------------------------------------------------------------------------------
    def _object_url(self, name: str) -> str:
        return f"{self.base_url}/storage/v1/b/{quote(self.bucket, safe='')}/o/{quote(name, safe='')}"

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn`` with retries; 412 -> Conflict, budget spent -> LedgerUnavailable, 404 passes."""
        try:
            return retry.call(fn, budget_seconds=RETRY_BUDGET_SECONDS, what=f"ledger {what}")
        except BackendUnavailable as exc:
            raise LedgerUnavailable(f"ledger gs://{self.bucket}: {exc.message}") from exc  # names `what`
        except BackendRejected as exc:
            if exc.context().get("status") == 412:
                raise Conflict(what) from exc
            raise LedgerUnavailable(f"ledger gs://{self.bucket}: {what}: {exc.message}") from exc

    def _send(self, method: str, url: str, what: str, **kwargs: Any) -> Any:
        try:
            return http.send(self.session, method, url, what=f"gcs {what}", timeout=self.timeout, **kwargs)
        except BackendRejected as exc:
            if exc.context().get("status") == 409:  # a concurrent update of the object: try again
                raise BackendUnavailable(exc.message, status=409) from exc
            raise

    def _upload(
        self, name: str, data: bytes, content_type: str, metadata: Mapping[str, str] | None, **params: Any
    ) -> Any:
        boundary = "ledger" + uuid.uuid4().hex
        resource: dict[str, Any] = {"name": name, "contentType": content_type}
        if metadata:
            resource["metadata"] = dict(metadata)
        body = b"".join(
            [
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
                json.dumps(resource).encode(),
                f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode(),
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        url = f"{self.base_url}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o"
        return self._send(
            "POST",
            url,
            f"write {name}",
            params={"uploadType": "multipart", **params},
            data=body,
            headers={"Content-Type": f"multipart/related; boundary={boundary}"},
        ).json()

    # -- the Store contract ---------------------------------------------------------------------
    def read(self, name: str) -> tuple[bytes, int] | None:
        def get() -> tuple[bytes, int] | None:
            try:
                answer = self._send("GET", self._object_url(name), f"read {name}", params={"alt": "media"})
            except NotFound:
                return None
            generation = answer.headers.get("x-goog-generation")
            if generation is None:
                raise BackendUnavailable(f"gcs read {name}: no x-goog-generation header in the answer")
            return answer.content, int(generation)

        return self._call(f"read {name}", get)

    def _write(self, name: str, data: bytes, generation: int, content_type: str = "application/json") -> int:
        def put() -> int:
            try:
                resource = self._upload(name, data, content_type, None, ifGenerationMatch=str(generation))
            except NotFound as exc:  # the bucket is missing (a CAS on a deleted object answers 412)
                raise BackendRejected(f"ledger bucket {self.bucket!r} not found", status=404) from exc
            return int(resource["generation"])

        return self._call(f"write {name}", put)

    def create(self, name: str, data: bytes, content_type: str = "application/json") -> int:
        return self._write(name, data, 0, content_type)

    def replace(self, name: str, data: bytes, generation: int) -> int:
        return self._write(name, data, generation)

    def delete(self, name: str) -> None:
        def remove() -> None:
            try:
                self._send("DELETE", self._object_url(name), f"delete {name}")
            except NotFound:
                pass

        self._call(f"delete {name}", remove)

    def list(self, prefix: str) -> Iterator[str]:
        for name, _ in self.list_meta(prefix):
            yield name

    def put_meta(self, name: str, metadata: Mapping[str, str]) -> None:
        """An empty object carrying ``metadata``, written unconditionally (markers only)."""
        self._call(f"write {name}", lambda: self._upload(name, b"", "text/plain", metadata))

    def read_meta(self, name: str) -> Mapping[str, str] | None:
        def get() -> Mapping[str, str] | None:
            try:
                resource = self._send("GET", self._object_url(name), f"read {name}").json()
            except NotFound:
                return None
            return dict(resource.get("metadata") or {})

        return self._call(f"read {name}", get)

    def _list_page(self, url: str, prefix: str, params: dict[str, str]) -> dict[str, Any]:
        try:
            return dict(self._send("GET", url, f"list {prefix}", params=params).json())
        except NotFound as exc:  # listing a prefix never 404s: the bucket is missing
            raise BackendRejected(f"ledger bucket {self.bucket!r} not found", status=404) from exc

    def list_meta(self, prefix: str) -> Iterator[tuple[str, Mapping[str, str]]]:
        """Every object under ``prefix`` with its custom metadata (1,000 per listing call)."""
        for item in self.list_objects(prefix, fields="items(name,metadata)"):
            yield item["name"], dict(item.get("metadata") or {})

    def list_objects(
        self, prefix: str, *, start_offset: str | None = None, fields: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every object resource under ``prefix`` in name order, page by page (1,000 per listing
        call); ``start_offset``: only names at or after it; ``fields``: the resource fields wanted
        (``items(...)``; default: the whole resource)."""
        url = f"{self.base_url}/storage/v1/b/{quote(self.bucket, safe='')}/o"
        token: str | None = None
        while True:
            params = {"prefix": prefix}
            if fields:
                params["fields"] = f"{fields},nextPageToken"
            if start_offset:
                params["startOffset"] = start_offset
            if token:
                params["pageToken"] = token
            page: dict[str, Any] = self._call(
                f"list {prefix}", functools.partial(self._list_page, url, prefix, params)
            )
            yield from page.get("items") or ()
            token = page.get("nextPageToken")
            if not token:
                return
