"""Benchmarks as corpus + queries + qrels: BEIR-layout Parquet (ViDoRe, REAL-MM-RAG) and dataset build outputs.

The BEIR layout as published on the Hugging Face hub (e.g. ``vidore/esg_reports_v2``,
``ibm-research/REAL-MM-RAG_FinReport_BEIR``) is a directory with one folder per table holding shards named
``{split}-{i:05d}-of-{n:05d}.parquet`` (``corpus/test-00000-of-00001.parquet``, ``queries/...``, ``qrels/...``;
ViDoRe V2 and REAL-MM-RAG also have a ``docs/`` table, not needed here). Columns: corpus ``corpus-id`` (int64)
and ``image`` (the ``datasets`` image struct ``{bytes, path}``), sometimes ``doc-id`` and a text column;
queries ``query-id``, ``query`` (multilingual ViDoRe V2 sets add ``language``); qrels ``query-id``,
``corpus-id``, ``score`` (int or float). Classic BEIR names (``_id``, ``text``) and one file per table
(``corpus.parquet``), optionally under ``data/``, are read too.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from docrerank.core import storage

log = logging.getLogger(__name__)

CORPUS_ID_COLUMNS = ("corpus-id", "corpus_id", "_id", "id", "page_id")
TEXT_COLUMNS = ("text", "markdown", "ocr", "ocr_text", "text_description", "page_text", "content")
QUERY_ID_COLUMNS = ("query-id", "query_id", "_id", "id", "qid")
QUERY_TEXT_COLUMNS = ("query", "text", "question")
QREL_QUERY_COLUMNS = ("query-id", "query_id", "qid")
QREL_CORPUS_COLUMNS = ("corpus-id", "corpus_id", "doc_id", "docid", "page_id")
QREL_SCORE_COLUMNS = ("score", "relevance", "label")
SHARD_NAME = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}\.parquet$")
BUILD_SPLITS = {"heldout": "examples_heldout", "train": "examples"}


@dataclass
class Benchmark:
    """A retrieval benchmark over document pages; the per-page lists are aligned with ``corpus_ids``."""

    name: str
    corpus_ids: list[str]
    texts: list[str]
    images: list[bytes | None]
    image_formats: list[str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    dropped_queries: int = 0  # queries without any relevant page (left out of ``queries``)
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.corpus_ids)
        for col in ("texts", "images", "image_formats"):
            if len(getattr(self, col)) != n:
                raise ValueError(f"Benchmark {self.name!r}: {col} has {len(getattr(self, col))} entries, "
                                 f"corpus_ids has {n}")
        self._index = {c: i for i, c in enumerate(self.corpus_ids)}
        if len(self._index) != n:
            raise ValueError(f"Benchmark {self.name!r}: duplicate corpus ids")

    def page(self, corpus_id: str) -> dict:
        """``{"page_id", "image", "image_format", "text"}`` of one corpus page."""
        try:
            i = self._index[corpus_id]
        except KeyError:
            raise KeyError(f"page {corpus_id!r} is not in the corpus of {self.name!r}") from None
        return {"page_id": corpus_id, "image": self.images[i], "image_format": self.image_formats[i],
                "text": self.texts[i]}


def image_format(data: bytes | None) -> str:
    """``"png"``, ``"jpeg"``, ``"webp"``, ``"gif"``, ``"tiff"`` or ``"bmp"`` from magic bytes; ``""`` if unknown."""
    if not data:
        return ""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:2] == b"BM":
        return "bmp"
    return ""


def _id(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _pick(columns: list[str], candidates: tuple[str, ...], table: str, where: str) -> str:
    found = next((c for c in candidates if c in columns), None)
    if found is None:
        raise ValueError(f"{where}: {table} has none of the columns {list(candidates)}; it has {columns}")
    return found


def _table_files(root: storage.Location, table: str, split: str | None) -> list[str]:
    """The Parquet files of ``table`` (corpus/queries/qrels) under ``root``, for ``split`` when given."""
    looked = []
    files: list[str] = []
    for base in (root, root.join("data")):
        sub = base.join(table)
        looked += [f"{sub.uri}/*.parquet", f"{sub.uri}.parquet", f"{base.uri}/{table}[-_]*.parquet"]
        if storage.is_dir(sub):
            files = storage.list_files(sub, suffixes=(".parquet",))
        if not files and storage.exists(base.join(f"{table}.parquet")):
            files = [base.join(f"{table}.parquet").path]
        if not files and storage.is_dir(base):
            pattern = re.compile(rf"^{table}[-_.].*\.parquet$")
            files = [f for f in storage.list_files(base, suffixes=(".parquet",))
                     if f.rsplit("/", 1)[0] == base.path.rstrip("/") and pattern.match(f.rsplit("/", 1)[1])]
        if files:
            break
    if not files:
        raise ValueError(f"no {table} table under {root.uri}; looked for {', '.join(looked)}")
    return _select_split(files, split, table, root.uri)


def _select_split(files: list[str], split: str | None, table: str, where: str) -> list[str]:
    by_split: dict[str, list[str]] = {}
    for f in files:
        base = f.rsplit("/", 1)[1]
        for prefix in (f"{table}-", f"{table}_"):  # data/corpus-test-00000-of-00001.parquet style
            base = base.removeprefix(prefix)
        m = SHARD_NAME.match(base)
        by_split.setdefault(m.group("split") if m else "", []).append(f)
    named = sorted(s for s in by_split if s)
    if split is not None:
        if split in by_split:
            return by_split[split]
        if not named:  # one file per table (corpus.parquet): the names carry no split
            return files
        raise ValueError(f"{where}: no {table} file of split {split!r}; splits found: {named}")
    if len(named) > 1 or (named and "" in by_split):
        if "test" in by_split:
            log.info("%s: %s has splits %s; using 'test' (pass split= to choose)", where, table, named)
            return by_split["test"]
        raise ValueError(f"{where}: {table} has several splits {named}; pass split= to choose one")
    return files


def _read(root: storage.Location, files: list[str], wanted: list[str]):
    """Concatenate ``files`` reading only the ``wanted`` columns that exist."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for f in files:
        have = pq.read_schema(f, filesystem=root.fs).names
        tables.append(pq.read_table(f, columns=[c for c in wanted if c in have], filesystem=root.fs))
    return pa.concat_tables(tables, promote_options="default")


def _image_bytes(value: Any, root: storage.Location) -> bytes | None:
    """Image bytes from a ``datasets`` image struct ``{bytes, path}`` or plain binary."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        path = value.get("path")
        if path:
            loc = root.join(path)
            if storage.exists(loc):
                return storage.read_bytes(loc)
        return None
    raise TypeError(f"{root.uri}: image values must be binary or a {{bytes, path}} struct, got {type(value).__name__}")


def load_beir(path: str, name: str | None = None, split: str | None = None, load_images: bool = True,
              text_column: str | None = None, language: str | None = None) -> Benchmark:
    """Load a BEIR-layout benchmark from a local directory or a pyarrow filesystem URI.

    ``split`` picks the shards whose file name starts with it (default: the only split, else ``"test"``).
    ``text_column`` forces the corpus text column (else the first of :data:`TEXT_COLUMNS` present, else "").
    ``language`` keeps only queries whose ``language`` column equals it (multilingual ViDoRe V2 sets).
    Queries without a relevant page (score > 0) are dropped and counted in ``dropped_queries``; a relevant
    qrel pointing to a page missing from the corpus raises ValueError.
    """
    root = storage.resolve(path)
    name = name or root.path.rstrip("/").rsplit("/", 1)[-1]
    where = root.uri

    corpus_files = _table_files(root, "corpus", split)
    schema_cols = _read_schema_names(root, corpus_files[0])
    id_col = _pick(schema_cols, CORPUS_ID_COLUMNS, "corpus", where)
    if text_column is not None and text_column not in schema_cols:
        raise ValueError(f"{where}: text_column {text_column!r} is not a corpus column; columns: {schema_cols}")
    text_col = text_column or next((c for c in TEXT_COLUMNS if c in schema_cols and c != id_col), None)
    wanted = [id_col] + ([text_col] if text_col else []) + (["image"] if load_images else [])
    corpus = _read(root, corpus_files, wanted)
    corpus_ids = [_id(v) for v in corpus.column(id_col).to_pylist()]
    if len(set(corpus_ids)) != len(corpus_ids):
        dup = sorted({c for c in corpus_ids if corpus_ids.count(c) > 1})
        raise ValueError(f"{where}: duplicate corpus ids, e.g. {dup[:5]}")
    texts = [t or "" for t in corpus.column(text_col).to_pylist()] if text_col else [""] * len(corpus_ids)
    if load_images and "image" in corpus.column_names:
        images = [_image_bytes(v, root) for v in corpus.column("image").to_pylist()]
    else:
        images = [None] * len(corpus_ids)
    del corpus

    qfiles = _table_files(root, "queries", split)
    qcols = _read_schema_names(root, qfiles[0])
    qid_col = _pick(qcols, QUERY_ID_COLUMNS, "queries", where)
    qtext_col = _pick([c for c in qcols if c != qid_col], QUERY_TEXT_COLUMNS, "queries", where)
    if language is not None and "language" not in qcols:
        raise ValueError(f"{where}: language={language!r} given but queries have no 'language' column")
    qtable = _read(root, qfiles, [qid_col, qtext_col] + (["language"] if language is not None else []))
    queries: dict[str, str] = {}
    langs = qtable.column("language").to_pylist() if language is not None else [None] * qtable.num_rows
    for qid, text, lang in zip(qtable.column(qid_col).to_pylist(), qtable.column(qtext_col).to_pylist(), langs):
        if language is not None and lang != language:
            continue
        qid = _id(qid)
        if qid in queries and queries[qid] != text:
            raise ValueError(f"{where}: query id {qid!r} has two different texts (several languages? pass "
                             "language=...)")
        queries[qid] = text or ""

    rfiles = _table_files(root, "qrels", split)
    rcols = _read_schema_names(root, rfiles[0])
    rq, rc = _pick(rcols, QREL_QUERY_COLUMNS, "qrels", where), _pick(rcols, QREL_CORPUS_COLUMNS, "qrels", where)
    rs = _pick(rcols, QREL_SCORE_COLUMNS, "qrels", where)
    rtable = _read(root, rfiles, [rq, rc, rs])
    known = set(corpus_ids)
    qrels: dict[str, dict[str, int]] = {}
    unknown: set[str] = set()
    for qid, cid, score in zip(*(rtable.column(c).to_pylist() for c in (rq, rc, rs))):
        if score is None or score <= 0:
            continue
        qid, cid = _id(qid), _id(cid)
        if cid not in known:
            unknown.add(cid)
            continue
        if qid in queries:
            qrels.setdefault(qid, {})[cid] = max(round(score), 1)
    if unknown:
        raise ValueError(f"{where}: qrels point to {len(unknown)} corpus ids missing from the corpus, "
                         f"e.g. {sorted(unknown)[:5]}")
    dropped = [q for q in queries if q not in qrels]
    if dropped:
        log.info("%s: dropped %d of %d queries without a relevant page", name, len(dropped), len(queries))
    queries = {q: t for q, t in queries.items() if q in qrels}
    return Benchmark(name=name, corpus_ids=corpus_ids, texts=texts, images=images,
                     image_formats=[image_format(b) for b in images], queries=queries, qrels=qrels,
                     dropped_queries=len(dropped))


def _read_schema_names(root: storage.Location, file: str) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_schema(file, filesystem=root.fs).names


def load_build_split(build_output: str, split: str = "heldout", name: str | None = None,
                     load_images: bool = True, part: str = "all", questions: str | None = None,
                     seed: int = 0) -> Benchmark:
    """A benchmark from a dataset build output: the positive queries of one split over its documents' pages.

    ``split`` "heldout" reads ``examples_heldout/``, "train" reads ``examples/``. Each group's positive row
    (label 1) is a query (id = group_id) whose relevant page is its page_id. The corpus is every page in
    ``pages/`` of the documents those examples come from (all their pages, not only the judged ones), plus any
    example page missing from ``pages/``; without ``pages/`` it is the pages seen in the examples.

    ``part`` ``validation`` / ``test`` keeps half of those documents (``data.heldout.part_of``, seeded by
    ``seed``): choices such as a fusion weight are made on one part, results reported on the other.
    ``questions``: a questions file (``data.heldout.read_questions``) whose questions about these documents are
    the queries, with every page they list as relevant, instead of the split's positives (which exist only for the
    positives that got negatives, one page each).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from docrerank.data.heldout import part_of, read_questions

    if split not in BUILD_SPLITS:
        raise ValueError(f"split must be one of {list(BUILD_SPLITS)}, got {split!r}")
    if part not in ("all", "validation", "test"):
        raise ValueError(f"part must be 'all', 'validation' or 'test', got {part!r}")
    root = storage.resolve(build_output)
    name = name or f"{root.path.rstrip('/').rsplit('/', 1)[-1]}-{split}" + ("" if part == "all" else f"-{part}")
    ex_loc = root.join(BUILD_SPLITS[split])
    ex_files = storage.list_files(ex_loc, suffixes=(".parquet",))
    if not ex_files:
        raise ValueError(f"{ex_loc.uri}: no Parquet files; is {build_output!r} a dataset build output?")
    page_cols = ["page_id", "text", "image_format"] + (["image"] if load_images else []) + (
        ["source_uri", "page_number"] if questions else [])
    examples = storage.read_parquet_dir(ex_loc, columns=["group_id", "query", "page_id", "label"])

    def in_part(page_id: str) -> bool:
        return part == "all" or part_of(page_id.rsplit("-p", 1)[0], seed) == part

    examples = examples.filter(pa.array([in_part(p) for p in examples.column("page_id").to_pylist()], pa.bool_()))
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    positives = examples.filter(pc.equal(examples.column("label"), 1))
    for gid, query, page_id in zip(*(positives.column(c).to_pylist() for c in ("group_id", "query", "page_id"))):
        queries.setdefault(gid, query)
        qrels.setdefault(gid, {})[page_id] = 1

    pages: dict[str, dict] = {}
    pages_loc = root.join("pages")
    page_files = storage.list_files(pages_loc, suffixes=(".parquet",)) if storage.is_dir(pages_loc) else []
    example_pages = set(examples.column("page_id").to_pylist())
    if page_files:
        ids = storage.read_parquet_dir(pages_loc, columns=["page_id", "doc_id"])
        doc_of = dict(zip(ids.column("page_id").to_pylist(), ids.column("doc_id").to_pylist()))
        docs = sorted({doc_of.get(p) or p.rsplit("-p", 1)[0] for p in example_pages})
        for f in page_files:  # filtered per file: only the split's documents' images are read
            t = pq.read_table(f, columns=page_cols, filesystem=root.fs, filters=[("doc_id", "in", docs)])
            for row in t.to_pylist():
                pages.setdefault(row["page_id"], row)
    else:
        log.info("%s: no pages/ table; the corpus is the %d pages seen in the examples", name, len(example_pages))
    if questions:
        if not pages:
            raise ValueError(f"{root.uri}: questions={questions!r} needs the build's pages/ table (file names)")
        names = {(r["source_uri"].rsplit("/", 1)[-1], r["page_number"]): p for p, r in pages.items()}
        queries, qrels = read_questions(questions, names)
    missing = sorted(example_pages - set(pages))
    if missing:  # pages absent from pages/ come from the example rows, which carry the page
        rows = storage.read_parquet_dir(ex_loc, columns=page_cols)
        rows = rows.filter(pc.is_in(rows.column("page_id"), value_set=pa.array(missing, pa.string())))
        for row in rows.to_pylist():
            pages.setdefault(row["page_id"], row)

    corpus_ids = sorted(pages)
    images = [pages[p].get("image") if load_images else None for p in corpus_ids]
    formats = [(pages[p].get("image_format") or image_format(b)) if b else "" for p, b in zip(corpus_ids, images)]
    return Benchmark(name=name, corpus_ids=corpus_ids, texts=[pages[p].get("text") or "" for p in corpus_ids],
                     images=images, image_formats=formats, queries=queries, qrels=qrels)
