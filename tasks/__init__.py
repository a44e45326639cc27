"""inkq's worker side, in three layers (the import-linter contracts in setup.cfg check them):

- `tasks.core`: what the API and the worker service share: settings, queues, Redis key names, the
  blob store, credits, changes, errors, links, logs, metrics, progress. It imports nothing above it.
- here, at the top: the functions rq runs by dotted name, which job records in Redis name and so
  never move (`tasks.jobs.stencil`, `tasks.callbacks.on_success`, `tasks.webhooks.send`), and what they
  run: the image engines (`images`, `stencil`, `enhance`, `colormatch`, `vector`) and the provider
  (`gemini`, with its fleet quota `quota`).
- `tasks.runtime`: the worker service that runs them (supervisor, slot worker, CPU pool, recovery).

The API imports `tasks.core` (and `tasks.webhooks`, to check and schedule webhooks), never the
runtime, the jobs or the engines: it enqueues jobs by dotted name.
"""
