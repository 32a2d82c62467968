"""The local backend service: `instascene serve`, an HTTP API over the backend.

Modules (each small, each with one reason to exist):
  jobs          the job kinds and their runners (segmentation and completion plug in here)
  runners       the runners that exist today: validate, render
  store         job records on disk, one JSON per job, so a restart keeps every result
  worker        the single worker thread: one job at a time (one GPU, no contention)
  security      the token, the data-root confinement of every path, request size limits
  capabilities  what this backend can do: device, versions, generator weights, job kinds
  app           the FastAPI application that ties them together

Only `app` imports FastAPI; nothing here imports torch at import time, so the
`instascene` command stays fast.
"""
