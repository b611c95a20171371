"""`aggregate` and filtered, sorted `documents` listings on the real PostgreSQL: equal to Python
over the same rows (as PostgreSQL stores them), exactly: counts, min/max/sum/mean, top values,
groups, sort order across pages with no duplicates or gaps; under filters (lists, nested
fields, datetimes) and tenant keys; charged to the scan budget before the work; bad input is
BAD_INPUT, also through GraphQL."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

import pytest

from app.adapters.migrations import upgrade_async
from app.adapters.postgres import DocumentWrite, PostgresRepo
from app.adapters.postgres_pool import create_pool
from app.domain.access import Principal, Scope
from app.domain.aggregation import SortKey
from app.domain.filter_matcher import matches, parse_payload_datetime
from app.domain.filters import And, parse_filter
from app.domain.scans import ScanBudget
from app.errors import BadInput, Forbidden
from app.graphql.context import Context
from app.graphql.schema import build_schema
from app.services import aggregate as aggregate_module
from app.services.documents import DocumentService
from app.settings import Settings
from tests.support.databases import create_database, drop_database

DOCS = 1_300
DELETED = {f"d{i:05d}" for i in range(0, DOCS, 97)}
TENANT = Principal(kind="key", key_id="k1", scopes=frozenset({Scope.READ}), filter={"tenant": {"eq": "t1"}})
ZONES = ["", "Z", "+02:00", "-05:30"]


def metadata_of(i: int, rng: random.Random) -> dict[str, Any]:
    md: dict[str, Any] = {
        "tenant": ["t1", "t3"] if i % 11 == 0 else ("t1" if i % 3 == 0 else "t2"),
        "rank": i % 37,  # many ties: the id decides
        "price": round(rng.uniform(0, 100), rng.choice([1, 2, 3])) + rng.choice([0.1, 0.2, 1e-9]),
        "tags": rng.sample(["red", "green", "blue", "gold", "teal"], rng.randint(0, 3)),
        "author": {"name": rng.choice(["ann", "bob", "cy"]), "age": rng.randint(18, 90)},
        "flag": i % 4 == 0,
        "mixed": i if i % 5 else f"s{i}",  # numbers and strings: no sort, stats of both
        "title": f"title {rng.randint(0, 50):03d}",
    }
    day = 1 + i % 28
    md["when"] = rng.choice(
        [f"2024-03-{day:02d}", f"2024-03-{day:02d}T{i % 24:02d}:{i % 60:02d}:00{rng.choice(ZONES)}",
         f"2024-03-{day:02d} {i % 24:02d}:15:30.5{rng.choice(ZONES)}"]
    )  # fmt: skip
    if i % 7 == 0:
        del md["price"]  # missing
    if i % 13 == 0:
        md["price"] = None  # null
    if i % 17 == 0:
        md["price"] = [1, 2.5, i]  # a list: each element counts
    if i % 19 == 0:
        md["author"] = [{"name": "list"}]  # a list on the path: author.name is missing
    if i % 23 == 0:
        md["when"] = None
    if i % 29 == 0:
        md["rank"] = 10**15 + i  # a large integer
    return md


def corpus() -> list[DocumentWrite]:
    rng = random.Random(7)
    ids = [f"d{i:05d}" for i in range(DOCS)]
    rng.shuffle(ids)  # inserted out of id order
    return [
        DocumentWrite(
            id=doc_id, text=f"text {doc_id}", metadata=metadata_of(int(doc_id[1:]), rng),
            content_hash=f"h{doc_id}", point_id=str(uuid.uuid5(uuid.NAMESPACE_URL, doc_id)),
        )
        for doc_id in ids
    ]  # fmt: skip


@pytest.fixture(scope="module")
async def repo() -> AsyncIterator[PostgresRepo]:
    url = await create_database("citadel_aggregate")
    try:
        await upgrade_async(url)
        pool = await create_pool(url, min_size=1, max_size=4)
        try:
            yield PostgresRepo(pool)
        finally:
            await pool.close()
    finally:
        await drop_database(url)


@pytest.fixture(scope="module")
async def stored(repo: PostgresRepo) -> dict[str, Any]:
    """{id: metadata} of the visible rows, as PostgreSQL gives them back."""
    await repo.create_collection("agg", "m", "rev1", 3, "cosine")
    docs = corpus()
    for start in range(0, DOCS, 500):
        await repo.upsert_documents("agg", docs[start : start + 500])
    assert sorted(await repo.mark_deleting("agg", sorted(DELETED))) == sorted(DELETED)
    rows = await repo.list_documents("agg", None, DOCS + 10)
    assert len(rows) == DOCS - len(DELETED)
    return {r.id: r.metadata for r in rows}


def service(repo: PostgresRepo, max_scan_points: int = 100_000) -> DocumentService:
    settings = Settings()
    settings = settings.model_copy(
        update={"limits": settings.limits.model_copy(update={"max_scan_points": max_scan_points})}
    )
    return DocumentService(settings, repo)


# -- the reference: plain Python over the stored rows ---------------------------------------------

MISSING = object()


def lookup(md: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(md, dict) or key not in md:
            return MISSING
        md = md[key]
    return md


def selected(stored: dict[str, Any], raw_filter: Any, principal: Principal | None = None) -> dict[str, Any]:
    node = parse_filter(raw_filter) if raw_filter is not None else None
    if principal is not None and principal.tenant is not None:
        node = principal.tenant if node is None else And((principal.tenant, node))
    return {i: md for i, md in stored.items() if node is None or matches(node, md)}


def reference_stats(docs: dict[str, Any], field: str) -> dict[str, Any]:
    present = [lookup(md, field) for md in docs.values()]
    present = [v for v in present if v is not MISSING and v is not None and v != []]
    values = [x for v in present for x in (v if isinstance(v, list) else [v])]
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    strings = [v for v in values if isinstance(v, str)]
    out: dict[str, Any] = {"count": len(present), "min": None, "max": None, "mean": None, "sum": None}
    if numbers:
        exact = sum(Fraction(v) for v in numbers)
        out.update(min=min(numbers), max=max(numbers), sum=float(exact), mean=float(exact / len(numbers)))
    elif strings and all(parse_payload_datetime(s) for s in strings):
        dates = [parse_payload_datetime(s) for s in strings]
        out.update(min=min(dates).isoformat(), max=max(dates).isoformat())  # type: ignore[type-var]
    top: Counter = Counter()
    for v in present:
        top.update({(type(x).__name__, x) for x in (v if isinstance(v, list) else [v]) if isinstance(x, (str, int))})
    out["top"] = dict(top)
    return out


def as_reference(summary: Any) -> dict[str, Any]:
    return {
        "count": summary.count, "min": summary.min, "max": summary.max, "mean": summary.mean, "sum": summary.sum,
        "top": {(type(v).__name__, v): n for v, n in summary.top},
    }  # fmt: skip


def reference_order(docs: dict[str, Any], sort: list[SortKey]) -> list[str]:
    """Stable passes from the last key to the first: present values in order, missing last."""
    order = sorted(docs)
    for key in reversed(sort):
        def value(doc_id: str) -> Any:
            v = lookup(docs[doc_id], key.field)
            return None if v is MISSING else v

        present = [i for i in order if value(i) is not None]
        missing = [i for i in order if value(i) is None]
        if present and all(isinstance(value(i), str) and parse_payload_datetime(value(i)) for i in present):
            keyfn: Any = lambda i: parse_payload_datetime(value(i))  # noqa: E731
        else:
            keyfn = value
        order = sorted(present, key=keyfn, reverse=key.descending) + missing
    return order


FILTERS = [
    None,
    {"tags": {"eq": "red"}},  # a list matches if any element does
    {"tags": {"nin": ["red", "blue"]}},
    {"author.name": {"in": ["ann", "cy"]}},  # nested; a list on the path never matches
    {"when": {"gte": "2024-03-10T00:00:00Z", "lt": "2024-03-20"}},  # datetimes across zones
    {"or": [{"price": {"gt": 50}}, {"flag": {"eq": True}}]},
    {"not": {"price": {"exists": True}}},
]
FIELDS = ["price", "rank", "tags", "author.name", "author.age", "when", "flag", "mixed", "title", "nothing"]


@pytest.mark.parametrize("raw_filter", FILTERS)
@pytest.mark.parametrize("tenant", [False, True])
async def test_aggregate_equals_python_over_the_same_rows(repo, stored, raw_filter, tenant):
    principal = TENANT if tenant else Principal(kind="key", key_id="k0", scopes=frozenset({Scope.READ}))
    docs = selected(stored, raw_filter, principal)
    outcome = await service(repo).aggregate("agg", filter=raw_filter, fields=FIELDS, principal=principal)
    assert outcome.count == len(docs)
    assert [s.field for s in outcome.fields] == FIELDS
    for summary in outcome.fields:
        assert as_reference(summary) == reference_stats(docs, summary.field), summary.field
    # The ranking of top values: most frequent first.
    counts = [n for s in outcome.fields for n in [c for _, c in s.top]]
    assert counts  # something was counted
    for summary in outcome.fields:
        assert [n for _, n in summary.top] == sorted((n for _, n in summary.top), reverse=True)


async def test_aggregate_groups_equal_python_per_group(repo, stored):
    raw_filter = {"rank": {"lt": 30}}
    for group_by in ("tags", "author.name", "flag"):
        outcome = await service(repo).aggregate(
            "agg", filter=raw_filter, fields=["price", "when"], group_by=group_by, principal=TENANT
        )
        docs = selected(stored, raw_filter, TENANT)
        groups: dict[Any, dict[str, Any]] = {}
        for doc_id, md in docs.items():
            v = lookup(md, group_by)
            for x in {x for x in (v if isinstance(v, list) else [v]) if isinstance(x, (str, int)) and x is not MISSING}:
                groups.setdefault((type(x).__name__, x), {})[doc_id] = md
        assert outcome.group_count == len(groups) and outcome.groups is not None
        assert {(type(g.value).__name__, g.value) for g in outcome.groups} == set(groups)
        assert [g.count for g in outcome.groups] == sorted((g.count for g in outcome.groups), reverse=True)
        for group in outcome.groups:
            members = groups[(type(group.value).__name__, group.value)]
            assert group.count == len(members)
            for summary in group.fields:
                assert as_reference(summary) == reference_stats(members, summary.field)
    limited = await service(repo).aggregate("agg", group_by="tags", max_groups=2)
    assert limited.group_count == 5 and [g.value for g in limited.groups or []] == [
        g.value for g in (await service(repo).aggregate("agg", group_by="tags")).groups or []
    ][:2]


async def test_a_plain_count_costs_no_scan_and_aggregates_are_charged_before_the_work(repo, stored, monkeypatch):
    pages: list[int] = []
    original = repo.document_metadata_keys

    async def spy(*args: Any) -> Any:
        batch = await original(*args)
        pages.append(len(batch))
        return batch

    monkeypatch.setattr(repo, "document_metadata_keys", spy)
    small = service(repo, max_scan_points=DOCS // 2)
    assert (await small.aggregate("agg")).count == len(stored)  # one COUNT: no scan, nothing charged
    assert pages == []
    budget = ScanBudget(DOCS // 2)
    with pytest.raises(BadInput) as refused:
        await small.aggregate("agg", fields=["price"], budget=budget)
    assert refused.value.to_extensions()["code"] == "BAD_INPUT"
    assert f"{len(stored)} rows" in refused.value.message and "CITADEL_LIMITS__MAX_SCAN_POINTS" in refused.value.message
    assert pages == [] and budget.used == 0  # refused before any page
    # A tenant's plain count scans (its filter is checked per row): charged too.
    with pytest.raises(BadInput):
        await small.aggregate("agg", principal=TENANT)
    assert pages == []
    monkeypatch.setattr(aggregate_module, "SCAN_PAGE_ROWS", 300)
    budget = ScanBudget(2 * DOCS)
    await service(repo).aggregate("agg", fields=["price"], budget=budget)
    assert budget.used == len(stored) and sum(pages) == len(stored) and len(pages) > 1


@pytest.mark.parametrize(
    "sort",
    [
        [SortKey("rank")],
        [SortKey("rank", descending=True)],
        [SortKey("price", descending=True), SortKey("title")],  # price holds lists in some rows: refused there
        [SortKey("when")],
        [SortKey("when", descending=True), SortKey("flag")],
        [SortKey("author.age"), SortKey("rank", descending=True)],
        [SortKey("flag", descending=True), SortKey("title", descending=True)],
    ],
)
@pytest.mark.parametrize("raw_filter", [None, {"tags": {"in": ["red", "gold"]}}, {"price": {"gte": 10, "lt": 80}}])
async def test_sorted_pages_equal_python_order_with_no_duplicates_or_gaps(repo, stored, sort, raw_filter):
    docs = selected(stored, raw_filter, TENANT)
    documents = service(repo)
    if sort[0].field == "price" and raw_filter is None:
        with pytest.raises(BadInput, match="holds a list"):
            await documents.page("agg", None, 10, filter=raw_filter, sort=sort, principal=TENANT)
        return
    if sort[0].field == "price":
        docs = {i: md for i, md in docs.items()}  # the range drops lists only when no element fits
        if any(isinstance(lookup(md, "price"), list) for md in docs.values()):
            with pytest.raises(BadInput, match="holds a list"):
                await documents.page("agg", None, 10, filter=raw_filter, sort=sort, principal=TENANT)
            return
    listed: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        rows, cursor = await documents.page("agg", cursor, 37, filter=raw_filter, sort=sort, principal=TENANT)
        assert len(rows) == 37 or cursor is None
        listed.extend(r.id for r in rows)
        pages += 1
        if cursor is None:
            break
    assert listed == reference_order(docs, sort)
    assert len(set(listed)) == len(listed) and pages == -(-len(docs) // 37)


async def test_filtered_pages_in_id_order_and_todays_arguments(repo, stored):
    documents = service(repo)
    raw_filter = {"author.name": {"eq": "bob"}}
    listed, cursor = [], None
    while True:
        rows, cursor = await documents.page("agg", cursor, 50, filter=raw_filter)
        listed.extend(r.id for r in rows)
        if cursor is None:
            break
    assert listed == sorted(selected(stored, raw_filter))
    rows, cursor = await documents.page("agg", None, 100)  # no filter, no sort: id order as before
    assert [r.id for r in rows] == sorted(stored)[:100] and cursor == sorted(stored)[99]


async def test_bad_input_is_refused(repo, stored):
    documents = service(repo)
    cases = [
        documents.page("agg", None, 10, sort=[SortKey("mixed")]),  # numbers and strings
        documents.page("agg", None, 10, sort=[SortKey("nothing")]),  # no document has it
        documents.page("agg", None, 10, sort=[SortKey("author")]),  # objects
        documents.page("agg", None, 10, sort=[SortKey("a..b")]),
        documents.page("agg", None, 10, sort=[SortKey("rank"), SortKey("rank")]),
        documents.page("agg", "s:garbage", 10, sort=[SortKey("rank")]),
        documents.page("agg", None, 10, filter={"rank": {"gtx": 1}}),
        documents.aggregate("agg", fields=["bad name"]),
        documents.aggregate("agg", group_by=""),
        documents.aggregate("agg", group_by="tags", max_groups=0),
        documents.aggregate("agg", fields=[f"f{i}" for i in range(33)]),
    ]
    for case in cases:
        with pytest.raises(BadInput):
            await case
    # A cursor of one sort is refused by another.
    _, cursor = await documents.page("agg", None, 5, sort=[SortKey("rank")])
    assert cursor is not None
    with pytest.raises(BadInput, match="cursor"):
        await documents.page("agg", cursor, 5, sort=[SortKey("rank", descending=True)])
    with pytest.raises(Forbidden):
        await documents.aggregate("agg", principal=Principal(kind="key", scopes=frozenset({Scope.READ}), collections=frozenset({"x"})))


# -- through GraphQL --------------------------------------------------------------------------


class NoLimit:
    async def check(self, principal: object) -> None:
        return None


async def execute(repo: PostgresRepo, document: str, variables: dict[str, Any] | None = None, principal: Principal | None = None) -> Any:
    documents = service(repo)
    services = SimpleNamespace(documents=documents, settings=documents.settings, limiter=NoLimit())
    context = Context(request=None, response=None, services=services)  # type: ignore[arg-type]
    if principal is not None:
        context.principal = principal
    return await build_schema().execute(document, variable_values=variables, context_value=context)


AGGREGATE = """query($f: JSON, $g: String) {
  aggregate(collection: "agg", filter: $f, fields: ["price", "when"], groupBy: $g) {
    count groupCount
    fields { field count min max mean sum topValues(limit: 3) { value count } }
    groups { value count fields { field count mean } } } }"""


async def test_graphql_aggregate_and_sorted_documents(repo, stored):
    raw_filter = {"flag": {"eq": True}}
    result = await execute(repo, AGGREGATE, {"f": raw_filter, "g": "author.name"}, TENANT)
    assert result.errors is None
    data = result.data["aggregate"]
    docs = selected(stored, raw_filter, TENANT)
    assert data["count"] == len(docs)
    price = reference_stats(docs, "price")
    assert data["fields"][0] == {
        "field": "price", "count": price["count"], "min": price["min"], "max": price["max"],
        "mean": price["mean"], "sum": price["sum"],
        "topValues": [{"value": v, "count": n} for (_, v), n in sorted(price["top"].items(), key=lambda kv: (-kv[1], kv[0][0] != "int", kv[0][1]))][:3],
    }  # fmt: skip
    assert sum(g["count"] for g in data["groups"]) == sum(
        1 for md in docs.values() if isinstance(lookup(md, "author.name"), str)
    )
    query = """query($after: String) { documents(collection: "agg", first: 40, after: $after,
      filter: {tags: {eq: "teal"}}, sort: [{field: "when", order: DESC}]) { items { id } nextCursor } }"""
    listed, cursor = [], None
    while True:
        result = await execute(repo, query, {"after": cursor})
        assert result.errors is None
        listed.extend(item["id"] for item in result.data["documents"]["items"])
        cursor = result.data["documents"]["nextCursor"]
        if cursor is None:
            break
    assert listed == reference_order(selected(stored, {"tags": {"eq": "teal"}}), [SortKey("when", descending=True)])


@pytest.mark.parametrize(
    "document",
    [
        '{ documents(collection: "agg", sort: [{field: "mixed"}]) { items { id } } }',
        '{ documents(collection: "agg", sort: [{field: "no such.field!"}]) { items { id } } }',
        '{ documents(collection: "agg", after: "s:xyz", sort: [{field: "rank"}]) { items { id } } }',
        '{ aggregate(collection: "agg", fields: ["x y"]) { count } }',
        '{ aggregate(collection: "agg", groupBy: "tags", maxGroups: 5000) { count } }',
        '{ aggregate(collection: "agg", fields: ["rank"]) { fields { topValues(limit: 0) { count } } } }',
        '{ aggregate(collection: "agg", filter: {rank: {between: 1}}) { count } }',
    ],
)
async def test_graphql_bad_input_is_bad_input_never_internal(repo, stored, document):
    result = await execute(repo, document)
    assert result.errors, document
    assert {e.extensions["code"] for e in result.errors} == {"BAD_INPUT"}, [e.message for e in result.errors]
