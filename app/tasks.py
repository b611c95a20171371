"""Background task shutdown, written once."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(*tasks: asyncio.Future[object] | None, ignore_errors: bool = False) -> None:
    """Cancel the tasks (None entries are skipped) and wait until every one has finished.

    Their cancellation is expected and swallowed; an error a task raised instead is re-raised
    (the first one), as awaiting the task would, unless `ignore_errors` (shutdown paths whose tasks
    log their own failures). A cancellation of the caller itself propagates.
    """
    pending = [task for task in tasks if task is not None]
    if not pending:
        return
    for task in pending:
        task.cancel()
    await asyncio.wait(pending)
    errors = [task.exception() for task in pending if not task.cancelled()]  # marks each retrieved
    for error in errors:
        if error is not None and not ignore_errors:
            raise error
