"""The real world: files with fsync, asyncio TCP, the monotonic clock.

`host.NodeHost` runs one node (through `keeldb.runtime.driver.Driver` and `world.RealWorld`)
with its peer transport, client port and admin port; `runner` is its process entry point,
`launch` starts and kills such processes, `admin` and `client` talk to them.
See docs/runtime-real.md.
"""
