"""Event-driven pipeline launcher for Google Cloud Functions.

Modules, one concept each (read them in this order to follow an event):

- ``events``      typed, read-only wrappers over the CloudEvent shapes the functions receive
- ``config``      the routing YAML, loaded and validated once into frozen dataclasses
- ``templates``   parameter templates: placeholders checked at load, rendered from an event
- ``routing``     event -> matching triggers, with the reason for each near miss
- ``ledger``      run records in a GCS bucket: create-only claim, compare-and-swap updates
- ``launch``      the launch service: claim -> backend.launch -> record, with the error policy
- ``backends``    one module per pipeline system behind one small contract
- ``errors``      the error tree (retryable vs permanent); ``logs`` structured JSON logging
"""
