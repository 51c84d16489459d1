"""Local implementation of a word-count template, run by the Dataflow emulator.

A template registered with ``behavior.implementation: "wordcount"`` does real work when its job
reaches its success moment: the emulator calls :func:`run` with the job's template parameters.

Parameters:

- ``inputFile``: ``gs://bucket/object`` to read (UTF-8 text);
- ``output``: ``gs://bucket/object`` to write; a value ending in ``/`` gets ``counts.txt`` appended.

Words are runs of letters or digits (any script), lowercased. The output has one ``word: count``
line per word, most frequent first, ties in alphabetical order.

Storage is the Cloud Storage emulator named by ``STORAGE_EMULATOR_HOST`` (for example
``http://127.0.0.1:4443``), reached with google-cloud-storage, anonymous credentials and project
``local``. This module never talks to real Cloud Storage: without that variable :func:`run` fails.
Any failure raises :class:`WordcountError` whose text becomes the failed job's ERROR message.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping

_WORD = re.compile(r"[^\W_]+")
DEFAULT_OUTPUT_NAME = "counts.txt"


class WordcountError(Exception):
    """The word count could not run; the message says why."""


def count_words(text: str) -> Counter[str]:
    """Count lowercased words: maximal runs of letters or digits."""
    return Counter(match.group(0) for match in _WORD.finditer(text.lower()))


def format_counts(counts: Mapping[str, int]) -> str:
    """``word: count`` lines sorted by count (descending) then word; empty string for no words."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return "".join(f"{word}: {count}\n" for word, count in ordered)


def parse_gcs_uri(uri: str, *, allow_prefix: bool = False) -> tuple[str, str]:
    """Split ``gs://bucket/name`` into ``(bucket, name)``; ``name`` may be empty if ``allow_prefix``."""
    if not uri.startswith("gs://"):
        raise WordcountError(f"not a gs:// URI: {uri!r}")
    bucket, _, name = uri[len("gs://") :].partition("/")
    if not bucket or (not name and not allow_prefix):
        raise WordcountError(f"gs:// URI needs a bucket and an object name: {uri!r}")
    return bucket, name


def output_location(uri: str) -> tuple[str, str]:
    """Where to write the result: ``counts.txt`` is appended to a value ending with ``/``."""
    bucket, name = parse_gcs_uri(uri, allow_prefix=True)
    if not name or name.endswith("/"):
        name += DEFAULT_OUTPUT_NAME
    return bucket, name


def _storage_endpoint() -> str:
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
    if not host:
        raise WordcountError("STORAGE_EMULATOR_HOST is not set: no Cloud Storage emulator to read from")
    return host if "://" in host else f"http://{host}"


def _required(parameters: Mapping[str, str], name: str) -> str:
    value = parameters.get(name)
    if not value:
        raise WordcountError(f"missing template parameter {name!r}")
    return value


def run(parameters: Mapping[str, str]) -> str:
    """Count the words of ``inputFile`` into ``output``; returns a one-line summary."""
    input_uri = _required(parameters, "inputFile")
    in_bucket, in_name = parse_gcs_uri(input_uri)
    out_bucket, out_name = output_location(_required(parameters, "output"))
    endpoint = _storage_endpoint()

    from google.api_core import exceptions as gexc  # lazy: only jobs that run wordcount pay the import
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project="local",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )
    try:
        data = client.bucket(in_bucket).blob(in_name).download_as_bytes()
    except gexc.NotFound as exc:
        raise WordcountError(f"input object not found: {input_uri}") from exc
    except gexc.GoogleAPIError as exc:
        raise WordcountError(f"cannot read {input_uri}: {exc}") from exc
    counts = count_words(data.decode("utf-8", errors="replace"))
    try:
        client.bucket(out_bucket).blob(out_name).upload_from_string(
            format_counts(counts), content_type="text/plain; charset=utf-8"
        )
    except gexc.GoogleAPIError as exc:
        raise WordcountError(f"cannot write gs://{out_bucket}/{out_name}: {exc}") from exc
    return f"counted {sum(counts.values())} words ({len(counts)} distinct) into gs://{out_bucket}/{out_name}"
