"""asyncio runtime: listeners with limits, client connections, DC relay, mask relay, reload, workers."""
