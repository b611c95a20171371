"""graphql-core execution with one shortcut: lists of non-null Floats that are already floats.

graphql-core completes a `[Float!]!` one element at a time (a path entry, a non-null check and a
scalar coercion per float): for a 384-float embedding that was a quarter of a cached `embed`'s
CPU. A list whose items are all finite Python floats is exactly what that per-element completion
would return, so it is returned as it is; anything else (ints, NaN, None, `@stream`) takes the
stock path and gets the stock result or error.
"""

from __future__ import annotations

import math
from typing import Any

from graphql import GraphQLFloat, GraphQLNonNull
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext


def _finite_floats(values: Any) -> bool:
    return (
        type(values) is list
        and all(type(value) is float for value in values)
        and all(map(math.isfinite, values))
    )


class CitadelExecutionContext(StrawberryGraphQLCoreExecutionContext):
    def complete_list_value(  # type: ignore[override]
        self,
        return_type: Any,
        field_details_list: Any,
        info: Any,
        path: Any,
        result: Any,
        position_context: Any,
    ) -> Any:
        item_type = return_type.of_type
        if (
            isinstance(item_type, GraphQLNonNull)
            and item_type.of_type is GraphQLFloat
            and _finite_floats(result)
            and self.get_stream_usage(field_details_list, path) is None
        ):
            return result
        return super().complete_list_value(return_type, field_details_list, info, path, result, position_context)
