"""Filesystem helpers over pyarrow: local paths and URIs (s3://, gs://, ...) alike.

Output shards are written atomically (temp name then rename locally; a single PUT on object stores) under
deterministic names, which is what makes every job resumable without duplicates.
"""

from __future__ import annotations

import io
import os
import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Location:
    """A filesystem and a path on it; ``uri`` is what the user gave (kept for provenance)."""

    fs: Any  # pyarrow.fs.FileSystem
    path: str
    uri: str

    def join(self, *parts: str) -> "Location":
        """This location with ``parts`` appended (to the path and the URI alike)."""
        path = "/".join([self.path.rstrip("/"), *[p.strip("/") for p in parts]])
        uri = "/".join([self.uri.rstrip("/"), *[p.strip("/") for p in parts]])
        return Location(self.fs, path, uri)


def resolve(uri: str) -> Location:
    """Resolve a local path or URI to a pyarrow filesystem and path."""
    import pyarrow.fs as pafs

    if "://" in uri and not uri.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(uri)
        return Location(fs, path, uri)
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    path = os.path.abspath(os.path.expanduser(path))
    return Location(pafs.LocalFileSystem(), path, path)


def uri_of(loc: Location, path: str) -> str:
    """The user-facing URI of ``path`` on ``loc``'s filesystem."""
    if "://" in loc.uri:
        scheme = loc.uri.split("://", 1)[0]
        return f"{scheme}://{path}"
    return path


def exists(loc: Location) -> bool:
    """Whether a file or directory is at ``loc``."""
    import pyarrow.fs as pafs

    return loc.fs.get_file_info(loc.path).type != pafs.FileType.NotFound


def is_dir(loc: Location) -> bool:
    """Whether ``loc`` is a directory."""
    import pyarrow.fs as pafs

    return loc.fs.get_file_info(loc.path).type == pafs.FileType.Directory


def makedirs(loc: Location) -> None:
    """Create the directory ``loc`` and its parents (no-op when it exists)."""
    loc.fs.create_dir(loc.path, recursive=True)


def honour_umask(directory: str) -> None:
    """Give every file under the local ``directory`` the mode a plain ``open()`` gives (0666 less the umask): some
    writers (transformers' ``save_pretrained`` for ``model.safetensors``) create files 0600 through a temp file,
    which other users of a shared output, or a container running as another user, then cannot read."""
    mask = os.umask(0)
    os.umask(mask)
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def read_bytes(loc: Location) -> bytes:
    """The whole file at ``loc``."""
    with loc.fs.open_input_stream(loc.path) as f:
        return f.read()


def _local_atomic(loc: Location, write) -> None:
    """Call ``write(file)`` on a temp file beside ``loc``, flush it to disk, then rename it into place."""
    parent, name = loc.path.rsplit("/", 1)
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the rename must never publish a file whose bytes are not on disk yet
        os.replace(tmp, loc.path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(loc: Location, data: bytes) -> None:
    """Write ``data`` so readers never see a partial file."""
    import pyarrow.fs as pafs

    loc.fs.create_dir(loc.path.rsplit("/", 1)[0], recursive=True)
    if isinstance(loc.fs, pafs.LocalFileSystem):
        _local_atomic(loc, lambda f: f.write(data))
    else:  # object stores: one PUT is atomic
        with loc.fs.open_output_stream(loc.path) as f:
            f.write(data)


BINARY_COLUMNS_UNCOMPRESSED = ("image",)


def write_table_atomic(loc: Location, table, compression: str = "zstd") -> None:
    """Write a pyarrow Table as one Parquet file, atomically (locally straight into a temp file that is renamed;
    on object stores one PUT of the whole file)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    # Page images are PNG/JPEG, already compressed: compressing, dictionary-encoding or keeping min/max statistics
    # of them only costs time.
    plain = [n for n in table.column_names if n not in BINARY_COLUMNS_UNCOMPRESSED]
    codecs = {name: (compression if name in plain else "none") for name in table.column_names}

    def write(f) -> None:
        pq.write_table(table, f, compression=codecs, use_dictionary=plain, write_statistics=plain, row_group_size=64)

    if isinstance(loc.fs, pafs.LocalFileSystem):
        loc.fs.create_dir(loc.path.rsplit("/", 1)[0], recursive=True)
        _local_atomic(loc, write)
    else:
        buf = io.BytesIO()
        write(buf)
        write_bytes_atomic(loc, buf.getvalue())


def list_files(loc: Location, suffixes: tuple[str, ...] = (), ignore_prefixes: tuple[str, ...] = (".", "_")) -> list[str]:
    """Paths of regular files under ``loc`` (recursive), sorted; names with ``ignore_prefixes`` skipped."""
    import pyarrow.fs as pafs

    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True, allow_not_found=True))
    out = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        name = info.path.rsplit("/", 1)[-1]
        if name.startswith(ignore_prefixes):
            continue
        if suffixes and not name.lower().endswith(suffixes):
            continue
        out.append(info.path)
    return sorted(out)


def read_parquet_dir(loc: Location, columns: list[str] | None = None, schema=None):
    """Read every ``*.parquet`` file under ``loc`` into one Table (empty table of ``schema`` when none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = list_files(loc, suffixes=(".parquet",))
    if not files:
        if schema is None:
            return pa.table({})
        sch = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        return sch.empty_table()
    tables = [pq.read_table(f, columns=columns, filesystem=loc.fs) for f in files]
    return pa.concat_tables(tables, promote_options="default")
