"""The worker runtime: the supervisor (`cli`, run as `python -m tasks.runtime.cli` and `inkq-workers`),
the rq worker base and slot worker (`worker`, `slots`), the CPU pool (`cpu`, `malloc`), the recovery sweep
(`recovery`) and `orphans`. Nothing outside the runtime imports it."""
