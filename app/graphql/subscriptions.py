"""Subscriptions: model download progress, the current state on every replica first, then live events."""

from __future__ import annotations

from typing import AsyncGenerator, Optional

import strawberry

from app.graphql import types as t
from app.graphql.context import Context
from app.graphql.convert import event_to_gql

Info = strawberry.Info[Context, None]


@strawberry.type
class Subscription:
    @strawberry.subscription(description="One model's download events, or every model's when omitted.")
    async def model_download_progress(
        self, info: Info, model: Optional[str] = None
    ) -> AsyncGenerator[t.DownloadEvent, None]:
        services = info.context.services
        if model is not None:
            services.settings.model(model)  # NOT_FOUND for an unknown model
        names = [model] if model is not None else list(services.settings.models)
        # Subscribe before reading the snapshot so no event falls between the two.
        async with services.models.bus.subscribe(model) as events:
            for name in names:  # the current state on every live replica, one event each
                for status in services.replicas.replicas(name):
                    yield event_to_gql(status.as_event())
            async for event in events:
                yield event_to_gql(event)
