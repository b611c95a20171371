"""What one operation of a document executes, found once, for every rule that inspects it.

OperationWalk gathers the fields the chosen operation runs, as graphql-core's execution collects
them: named fragments are resolved and inline fragments entered, @skip and @include are obeyed,
fields that share a response key at one level run once (with the first one's arguments; the
OverlappingFieldsCanBeMerged validation makes them agree), and a fragment spread again at the
same level adds nothing. A field under another field runs once per object of its parent; that
count is unknown before execution and taken as one.

The walk is memoized per merged selection set (a fragment's body is one), so a document whose
fragments spread each other in a doubling tree is walked in linear time while the counts still
say how often each field runs; a fragment cycle (which validation refuses anyway) ends the walk
instead of looping. Variables are the request's values, or the operation's defaults when absent.

Its readers (app/graphql/operation_rules.py): the total of texts and documents
(app/graphql/limits.py) and the storable-string check of arguments (app/graphql/arguments.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    BooleanValueNode,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValueNode,
    VariableNode,
)

# id(node) -> (node, times run): nodes are keyed by identity (their equality compares whole trees).
_Fields = dict[int, tuple[FieldNode, int]]

# Walks that read no variable, by document identity: the parse cache (app/graphql/
# operation_rules.py) hands the same DocumentNode to every request with the same text.
MAX_CACHED_WALKS = 1024
_WALKS: dict[tuple[int, str | None], tuple[DocumentNode, dict[str, ValueNode], _Fields]] = {}


@dataclass(frozen=True)
class Given:
    """A variable's value as the request sent it (JSON), not an AST node."""

    value: Any


class OperationWalk:
    def __init__(self, document: DocumentNode, variables: Mapping[str, Any], operation_name: str | None) -> None:
        self.variables = variables
        cache_key = (id(document), operation_name)
        cached = _WALKS.get(cache_key)
        if cached is not None and cached[0] is document:
            _, self.defaults, self._fields = cached
            return
        self.fragments: dict[str, FragmentDefinitionNode] = {}
        operations: list[OperationDefinitionNode] = []
        for definition in document.definitions:
            if isinstance(definition, FragmentDefinitionNode):
                self.fragments[definition.name.value] = definition
            elif isinstance(definition, OperationDefinitionNode):
                operations.append(definition)
        operation = _chosen(operations, operation_name)
        self.defaults: dict[str, ValueNode] = {}
        self._memo: dict[tuple[int, ...], _Fields] = {}
        self._active: set[tuple[int, ...]] = set()
        self._reads_variables = False
        self._fields: _Fields = {}
        if operation is not None:  # none: execution refuses the request before any resolver
            for definition in operation.variable_definitions or ():
                if definition.default_value is not None:
                    self.defaults[definition.variable.name.value] = definition.default_value
            self._fields = self._level((operation.selection_set,))
        if not self._reads_variables:  # the same fields for any variables: walked once per document
            if len(_WALKS) >= MAX_CACHED_WALKS:
                del _WALKS[next(iter(_WALKS))]
            _WALKS[cache_key] = (document, self.defaults, self._fields)

    def fields(self) -> Iterator[tuple[FieldNode, int]]:
        """Each field that runs (the node whose arguments execution reads) and how many times."""
        return iter(self._fields.values())

    def resolve(self, node: ValueNode) -> ValueNode | Given:
        """An argument value with a variable replaced by what execution gets for it."""
        if not isinstance(node, VariableNode):
            return node
        name = node.name.value
        if name in self.variables:
            return Given(self.variables[name])
        return self.defaults.get(name) or Given(None)

    # -- the walk ----------------------------------------------------------------------------

    def _level(self, selection_sets: tuple[SelectionSetNode, ...]) -> _Fields:
        """The fields that run for these merged selection sets, and everything under them."""
        key = tuple(map(id, selection_sets))
        known = self._memo.get(key)
        if known is not None:
            return known
        if key in self._active:  # a fragment that contains itself
            return {}
        self._active.add(key)
        found: _Fields = {}
        for same_key in self._collect(selection_sets).values():
            first = same_key[0]
            _add(found, first, 1)  # once per object of the parent
            below = tuple(f.selection_set for f in same_key if f.selection_set is not None)
            if below:
                for node, times in self._level(below).values():
                    _add(found, node, times)
        self._active.discard(key)
        self._memo[key] = found
        return found

    def _collect(self, selection_sets: tuple[SelectionSetNode, ...]) -> dict[str, list[FieldNode]]:
        """Fields by response key, through fragments, as graphql-core's collect_fields groups them."""
        grouped: dict[str, list[FieldNode]] = {}
        visited: set[str] = set()
        pending = [iter(s.selections) for s in reversed(selection_sets)]
        while pending:
            selection = next(pending[-1], None)
            if selection is None:
                pending.pop()
            elif not self._included(selection):
                continue
            elif isinstance(selection, FieldNode):
                response_key = (selection.alias or selection.name).value
                grouped.setdefault(response_key, []).append(selection)
            elif isinstance(selection, InlineFragmentNode):
                pending.append(iter(selection.selection_set.selections))
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if name not in visited and fragment is not None:
                    visited.add(name)
                    pending.append(iter(fragment.selection_set.selections))
        return grouped

    def _included(self, node: Any) -> bool:
        """@skip(if: true) and @include(if: false) leave a selection out; @skip wins."""
        for directive in node.directives or ():
            name = directive.name.value
            if name not in ("skip", "include"):
                continue
            condition = next((a.value for a in directive.arguments or () if a.name.value == "if"), None)
            if isinstance(condition, VariableNode):
                self._reads_variables = True
            value = self.resolve(condition) if condition is not None else None
            flag = value.value if isinstance(value, (Given, BooleanValueNode)) else None
            if flag is (name == "skip"):  # not a boolean: coercion refuses it; counted as run
                return False
        return True


def _chosen(operations: list[OperationDefinitionNode], name: str | None) -> OperationDefinitionNode | None:
    if name is None:
        return operations[0] if len(operations) == 1 else None
    return next((o for o in operations if o.name is not None and o.name.value == name), None)


def _add(into: _Fields, node: FieldNode, times: int) -> None:
    known = into.get(id(node))
    into[id(node)] = (node, times + known[1] if known is not None else times)
