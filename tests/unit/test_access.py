"""Scope, grant and tenant logic (app/domain/access.py), key parsing at the edge, the local bucket."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from graphql import parse

from app.domain.access import ANONYMOUS, Principal, Scope, parse_scopes, rejected
from app.domain.filters import And, parse_filter
from app.errors import BadInput, Forbidden, Unauthenticated
from app.graphql.access import introspects
from app.services.rate_limit import LocalBuckets
from app.settings import Settings
from app.web.auth import bearer, ws_secret


def key(*scopes: str, collections=None, filter=None) -> Principal:
    return Principal(kind="key", key_id="k1", name="test", scopes=frozenset(Scope(s) for s in scopes),
                     collections=None if collections is None else frozenset(collections), filter=filter)  # fmt: skip


@pytest.mark.parametrize(
    "held,needed,allowed",
    [("READ", "READ", True), ("READ", "WRITE", False), ("READ", "ADMIN", False), ("WRITE", "READ", True),
     ("WRITE", "WRITE", True), ("WRITE", "ADMIN", False), ("ADMIN", "READ", True), ("ADMIN", "WRITE", True),
     ("ADMIN", "ADMIN", True)],
)  # fmt: skip
def test_scopes_are_levels(held, needed, allowed):
    principal = key(held)
    if allowed:
        principal.require(Scope(needed))
    else:
        with pytest.raises(Forbidden):
            principal.require(Scope(needed))


def test_highest_of_several_scopes_counts():
    both = key("READ", "ADMIN")
    assert both.level == Scope.ADMIN.level and both.is_admin
    both.require(Scope.WRITE)  # no Forbidden: ADMIN covers WRITE
    with pytest.raises(Forbidden):
        key("READ").require(Scope.WRITE)


def test_collection_grants():
    principal = key("ADMIN", collections=["a"])
    principal.require(Scope.ADMIN, "a")
    with pytest.raises(Forbidden) as refused:
        principal.require(Scope.READ, "b")
    assert refused.value.extensions == {"collection": "b"}
    assert principal.may_see("a") and not principal.may_see("b")
    assert key("READ").may_see("anything")


def test_rejected_callers_are_unauthenticated_for_everything():
    nobody = rejected("unknown API key")
    with pytest.raises(Unauthenticated, match="unknown API key"):
        nobody.require(Scope.READ)
    assert not nobody.may_see("a") and not nobody.is_admin


def test_only_unrestricted_admins_manage_keys():
    key("ADMIN").require_key_admin()
    ANONYMOUS.require_key_admin()
    for restricted in (key("ADMIN", collections=["a"]), key("ADMIN", filter={"t": {"eq": 1}}), key("WRITE")):
        with pytest.raises(Forbidden):
            restricted.require_key_admin()


def test_tenant_filter_is_anded_and_never_widened():
    tenant = key("READ", filter={"tenant": {"eq": "acme"}})
    assert tenant.read_filter(None) == parse_filter({"tenant": {"eq": "acme"}})
    wider = parse_filter({"or": [{"tenant": {"eq": "globex"}}, {"n": {"gte": 0}}]})
    combined = tenant.read_filter(wider)
    assert isinstance(combined, And) and combined.items[0] == tenant.tenant and combined.items[1] == wider
    assert key("READ").read_filter(wider) is wider


def test_owns_uses_the_filter_semantics():
    tenant = key("WRITE", filter={"and": [{"tenant": {"eq": "acme"}}, {"tier": {"in": ["gold", "silver"]}}]})
    assert tenant.owns({"tenant": "acme", "tier": "gold"})
    assert tenant.owns({"tenant": ["acme", "x"], "tier": "silver"})  # list values: any element
    assert not tenant.owns({"tenant": "acme"})
    assert not tenant.owns({"tenant": "globex", "tier": "gold"})
    assert not tenant.owns(None)
    assert key("WRITE").owns(None)


def test_a_bad_tenant_filter_or_scope_is_bad_input():
    with pytest.raises(BadInput):
        key("READ", filter={"tenant": {"gtx": 1}})
    with pytest.raises(BadInput):
        parse_scopes(["READ", "OWNER"])


def test_labels_name_the_key_never_a_secret():
    assert key("READ").label == "k1 (test)"
    assert ANONYMOUS.label == "anonymous (anonymous)"


@pytest.mark.parametrize(
    "value,secret",
    [(None, None), ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", ""), ("Bearer", ""), ("abc", ""),
     (42, ""), ("Bearer " + "x" * 600, "")],
)  # fmt: skip
def test_bearer_values(value, secret):
    assert bearer(value) == secret


class _Conn:
    def __init__(self, headers):
        self.headers = headers


def test_connection_init_payload_wins_over_the_upgrade_header():
    conn = _Conn({"authorization": "Bearer from-header"})
    assert ws_secret(conn, {"authorization": "Bearer from-init"}) == "from-init"
    assert ws_secret(conn, {"Authorization": "Bearer from-init"}) == "from-init"
    assert ws_secret(conn, {}) == "from-header"
    assert ws_secret(_Conn({}), None) is None


def test_introspection_is_found_in_fields_and_fragments():
    assert introspects(parse("{ __schema { types { name } } }"))
    assert introspects(parse('query { ...F } fragment F on Query { __type(name: "X") { name } }'))
    assert not introspects(parse("{ __typename health { status } }"))


def test_local_bucket_takes_bursts_then_says_how_long_to_wait(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("app.services.rate_limit.time.monotonic", lambda: now[0])
    buckets = LocalBuckets()
    assert [buckets.take("k", rate=2.0, capacity=3.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k", 2.0, 3.0) == pytest.approx(0.5)
    now[0] += 0.5
    assert buckets.take("k", 2.0, 3.0) == 0.0
    assert buckets.take("other", 2.0, 3.0) == 0.0  # buckets are per key


def test_cors_origins_from_the_environment(monkeypatch):
    monkeypatch.setenv("CITADEL_SERVER__CORS_ORIGINS", "https://app.example/, http://localhost:3000")
    assert Settings(_env_file=None).server.cors_origins == ["https://app.example", "http://localhost:3000"]  # type: ignore[call-arg]
    monkeypatch.setenv("CITADEL_SERVER__CORS_ORIGINS", '["https://a.example"]')
    assert Settings(_env_file=None).server.cors_origins == ["https://a.example"]  # type: ignore[call-arg]


@pytest.mark.parametrize("host,required", [("127.0.0.1", False), ("localhost", False), ("::1", False), ("0.0.0.0", True), ("10.1.2.3", True)])
def test_keys_are_required_by_default_off_loopback(monkeypatch, host, required):
    monkeypatch.setenv("CITADEL_SERVER__HOST", host)
    assert Settings(_env_file=None).auth_required is required  # type: ignore[call-arg]
    monkeypatch.setenv("CITADEL_AUTH__REQUIRED", "true")
    assert Settings(_env_file=None).auth_required is True  # type: ignore[call-arg]


def test_may_write_holds_for_every_reading_of_the_metadata():
    tenant = key("WRITE", filter={"tenant": {"eq": "acme"}})
    assert tenant.may_write({"tenant": "acme"})
    assert tenant.may_write({"tenant": ["acme", "acme"]})
    assert tenant.may_write({"tenant": [["acme"], "acme"]})
    assert not tenant.may_write({"tenant": ["acme", "globex"]})  # globex's filter would see it
    assert not tenant.may_write({"tenant": [["acme"], ["globex"]]})
    assert not tenant.may_write({"tenant": []})
    assert not tenant.may_write({"tenant": None})
    assert not tenant.may_write({"other": "acme"})  # a missing field never holds
    assert not tenant.may_write(None)
    nested = key("WRITE", filter={"org.tenant": {"eq": "acme"}})
    assert nested.may_write({"org": {"tenant": "acme"}})
    assert nested.may_write({"org": [{"tenant": "acme"}, {"tenant": ["acme"]}]})
    assert not nested.may_write({"org": [{"tenant": "acme"}, {"tenant": "globex"}]})
    assert not nested.may_write({"org": [{"tenant": "acme"}, {"name": "x"}, {"tenant": "globex"}]})
    excluded = key("WRITE", filter={"tenant": {"ne": "globex"}})
    assert excluded.may_write({"tenant": "acme"})
    assert not excluded.may_write({"tenant": ["acme", "globex"]})
    assert not excluded.may_write({})  # ne on a missing field: not written under this key
    absent = key("WRITE", filter={"and": [{"tenant": {"eq": "acme"}}, {"archived": {"exists": False}}]})
    assert absent.may_write({"tenant": "acme"})
    assert not absent.may_write({"tenant": "acme", "archived": True})
    assert key("WRITE").may_write({"anything": ["goes"]})


_TENANTS = ["acme", "globex", "initech"]
_values = st.recursive(
    st.sampled_from(_TENANTS) | st.none() | st.integers(0, 2),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["tenant", "x"]), inner, max_size=2),
    max_leaves=8,
)


@given(metadata=st.dictionaries(st.sampled_from(["tenant", "org", "x"]), _values, max_size=3), writer=st.sampled_from(_TENANTS))
def test_a_document_a_tenant_may_write_is_in_no_other_tenants_view(metadata, writer):
    for path in ("tenant", "org.tenant"):
        mine = key("WRITE", filter={path: {"eq": writer}})
        if mine.may_write(metadata):
            for other in _TENANTS:
                if other != writer:
                    assert not key("READ", filter={path: {"eq": other}}).owns(metadata)
                    assert not key("READ", filter={path: {"in": [other, "nobody"]}}).owns(metadata)


def test_a_principal_may_carry_a_share_of_its_own() -> None:
    """A background job's calls take the job's share of the model, not its key's (fair_key_of)."""
    from dataclasses import replace

    from app.inference.callers import fair_key_of

    key = Principal(kind="key", key_id="k1", scopes=frozenset({Scope.WRITE}), filter={"tenant": {"eq": "acme"}})
    job = replace(key, fair_key="job:42")
    assert fair_key_of(key) == "key:k1" and fair_key_of(job) == "job:42"
    assert job.tenant is not None and job.may_write({"tenant": "acme"}) and not job.may_write({"tenant": "globex"})
    assert job == key  # the same caller for every access check
