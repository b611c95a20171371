"""Subscriptions: model download progress, the current state on every replica first, then live events."""

from __future__ import annotations

from typing import Annotated, AsyncGenerator, Optional

import strawberry

from app.graphql import jobs as job_fields
from app.graphql import types as t
from app.graphql.context import Context
from app.graphql.convert import event_to_gql

Info = strawberry.Info[Context, None]


@strawberry.type(description="Live events over WebSocket (graphql-transport-ws, graphql-ws) or Server-Sent Events (graphql-sse)")
class Subscription:
    @strawberry.subscription(description="One model's download events, or every model's when omitted.")
    async def model_download_progress(
        self,
        info: Info,
        model: Annotated[Optional[str], strawberry.argument(description="A catalog model's name; null: every model")] = None,
    ) -> AsyncGenerator[t.DownloadEvent, None]:
        catalog = info.context.services.catalog
        async with catalog.progress(model, info.context.principal) as (snapshot, events):
            for event in snapshot:  # the current state on every live replica, one event each
                yield event_to_gql(event)
            async for event in events:
                yield event_to_gql(event)

    job_progress = strawberry.subscription(
        resolver=job_fields.job_progress,
        description="A job's progress (or every job of a collection, or every job the key may read): the current state "
        "first, then every change, from whichever replica runs it, throttled like download progress.",
    )
