"""The real world: files with fsync, asyncio TCP, the monotonic clock."""
