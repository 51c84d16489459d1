"""Event-driven pipeline launcher for Google Cloud Functions (what is deployed).

The folders follow an event, from the ways in to the completion event it ends with; the shared
plumbing is at the bottom. Each layer imports only itself and the layers below it in this list
(``tests/test_layout.py`` holds the code to it)::

    entry/        ways in: no decisions of their own
      functions     the five functions' services: parse, plan, carry the plan out (error policy)
      api           the REST API (POST /runs, GET /runs/{key}, cancel, GET /pipelines, POST /replays)
      manual        runs started by hand, shared by the REST API and the command line
      replay        backfill: old objects and dead letters through the live path, exactly once,
                    resumable (a checkpoint in the ledger), rate-limited; rerun generations
      cli/          python -m handlers: validate, explain, runs, launch, cancel, replay, graph, sync
                    (__init__ parser and main; output, args, validate, explain, runs, launch,
                    replay, graph, sync: pipelines kept as code created or updated from the repo)
    follow/       following a run to its end
      tracking      the sweep and the push path: backend status -> run state, timeouts, stalls
      completion    the completion event of a finished run: built once, published with one id
      chaining      completion triggers: chains and fan-in joins
    launch/       one launch per event
      service       claim -> launch -> record, exactly once, with the retry and error policy
      ledger        run records and active markers over a small store contract
      slot          one uncertain start at a time per target of a backend whose find() guesses
      windows       batch: windows of object events: join exactly once, close, manifest, launch
      store         that store: the Cloud Storage JSON API (create-only and CAS writes)
      runtime       the per-process wiring: config, ledger, backends, publisher (built lazily)
    route/        what an event means, decided before anything is written
      match         event -> matching triggers (objects, messages, completions), near-miss reasons
      identity      run identity and RunKey: format, parse (labels, REST paths), validate; job names
      render        the rendered launch: parameters, outputs, job name, labels
      plan          the one decision path the functions act on and explain renders
    model/        the routing config and the events, typed
      config        the YAML config, validated once (every problem listed) into frozen dataclasses
      templates     parameter templates: placeholders checked at load, rendered from an event
      events        the CloudEvents the functions receive (storage, Pub/Sub, notifications), typed
      completions   the completion event format; completions and fan-ins as trigger inputs
      windows       a window's members, its manifest format and location, a closed window as input
    backends/     the pipeline systems, behind one declared contract
      contract      Backend protocol, BackendSpec (everything a backend declares), run states
      registry      backend name -> the module declaring it
      dataflow      Dataflow classic and Flex Templates (REST v1b3)
      datafusion    Cloud Data Fusion / CDAP pipelines
      fabric/       Microsoft Fabric item jobs (fabric/jobs), Entra ID tokens (fabric/entra), names
                    resolved by display name (fabric/lookup), a dataflow's public parameters
                    (fabric/parameters) and as its mashup.pq declares them (fabric/mashup),
                    definitions kept in the repo and long-running operations
                    (fabric/definitions), the rotated refresh token kept in Secret Manager
                    (fabric/secrets)
      dataproc      Dataproc Serverless Spark batches (a client-chosen batch id: exact find)
    core/         plumbing every layer shares
      errors        the one error tree: retryable vs permanent
      http          HTTP answers -> the error tree; timeouts
      retry         capped exponential backoff honouring Retry-After, within a budget
      clients       Google HTTP session and Pub/Sub publisher, built once per process
      logs          JSON log lines Cloud Logging understands, secrets masked
      times         one way to read and write times
      patterns      globs and regular expressions matched in linear time (no backtracking)
      ids           one recipe for derived ids

``main.py`` holds the thin entry points; ``schemas/`` the published completion-event schema and the
REST API's OpenAPI contract.
"""
