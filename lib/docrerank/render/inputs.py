"""The ingest's inputs: which files a spec names (directory, glob, list file, single file, or ``sample:``).

Everything here lists; nothing reads a document. Hidden files (names starting with ``.``) are skipped in
directories and globs.
"""

from __future__ import annotations

import re

from docrerank.core import storage

LIST_SUFFIXES = (".txt", ".lst", ".list")
GLOB_CHARS = "*?["


def glob_regex(pattern: str) -> re.Pattern:
    """A path glob as a regex: ``*`` and ``?`` stay within one path segment, ``**/`` spans any depth."""
    import fnmatch

    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            j = pattern.find("]", i)
            j = len(pattern) - 1 if j < 0 else j
            out.append(fnmatch.translate(pattern[i:j + 1])[4:-3])
            i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def list_file_uris(spec: str, loc: storage.Location) -> list[str]:
    """URIs listed in a list file (one path or URI per line, ``#`` comments), relative paths against its folder."""
    parent = spec.rsplit("/", 1)[0] if "/" in spec else "."
    uris = []
    for line in storage.read_bytes(loc).decode("utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "://" not in line and not line.startswith("/"):
            line = f"{parent}/{line}"
        uris.append(storage.resolve(line).uri)
    return list(dict.fromkeys(uris))


def list_inputs(spec: str, suffixes: list[str]) -> list[str]:
    """URIs of the input files named by ``spec`` (directory, glob, list file or single file), sorted."""
    sfx = tuple(s.lower() for s in suffixes)
    if any(c in spec for c in GLOB_CHARS):
        head = spec
        while any(c in head for c in GLOB_CHARS):
            head = head.rsplit("/", 1)[0] if "/" in head else "."
        base = storage.resolve(head)
        rx = glob_regex(storage.resolve(spec).path)
        return [storage.uri_of(base, p) for p in storage.list_files(base, ignore_prefixes=(".",)) if rx.match(p)]
    loc = storage.resolve(spec)
    if storage.is_dir(loc):
        return [storage.uri_of(loc, p) for p in storage.list_files(loc, suffixes=sfx, ignore_prefixes=(".",))]
    if not storage.exists(loc):
        raise ValueError(f"input: nothing found at {spec!r} (expected a directory, glob, list file or file)")
    if loc.path.lower().endswith(LIST_SUFFIXES):
        return list_file_uris(spec, loc)
    return [loc.uri]


def resolve_inputs(spec: str, output: str, suffixes: list[str]) -> list[str]:
    """The input URIs of an ingest: ``sample:[N]`` first makes the sample corpus under ``output``, then
    :func:`list_inputs`."""
    from docrerank.render.sample_corpus import resolve_input

    return list_inputs(resolve_input(spec, output), suffixes)
