"""Many models at once: one model's resumable training job (`jobs`, no Ray needed), the fan-out of many jobs as Ray
tasks with retries (`fanout`), the connection to Ray (`ray_connection`) and the averaging of ensemble members
(`averaging`). Built on `distill`; the specialists and the orchestration build on it."""

import os

# Ray reads this when it is imported, not when it starts: set here, before this package's modules import Ray, it
# keeps a local Ray instance's services on loopback (unset, they listen on every interface of the machine). A value
# the user set, or an `import ray` that came first, wins.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
