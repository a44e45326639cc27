"""inkq workers: queue definitions, job functions and the image pipelines they run.

Modules imported by the API (`queues`, `blobs`, `settings`, `errors`) stay free of image and
provider code; the job functions in `jobs` pull those in only inside worker processes.
"""
