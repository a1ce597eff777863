"""Many models at once: one model's resumable training job (`jobs`, no Ray needed), the fan-out of many jobs as Ray
tasks with retries (`fanout`), the connection to Ray (`ray_connection`) and the averaging of ensemble members
(`averaging`). Built on `distill`; the specialists and the orchestration build on it."""
