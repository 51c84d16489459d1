"""Specification: a chain that crosses backends.

A file lands -> Dataflow (classic template) -> on its completion, a Data Fusion pipeline -> on its
completion, a Fabric Dataflow Gen2 refresh. Completions are the real messages pulled from the Pub/Sub
emulator and handed to the same dispatch code ``on_message`` runs (twice each, as at-least-once
delivery may); each backend is its own emulator.
"""

from __future__ import annotations

import json

from handlers.entry import functions as dispatch
from handlers.follow.tracking import Tracker
from handlers.launch.service import LaunchService
from local.kits.datafusion import DataFusionHarness
from local.kits.fabric import FabricHarness
from tests.support import events as ev


def test_dataflow_then_data_fusion_then_fabric(world, dataflow, cdap_emulator, fabric_emulator):
    fusion, fabric = DataFusionHarness(cdap_emulator), FabricHarness(fabric_emulator)
    fusion.reset()
    fabric.reset()
    pipelines = {
        "ingest": {
            **dataflow.pipeline_options("ingest"),
            "parameters": {"input": "gs://{bucket}/{name}"},
            "outputs": {"table": "raw.{stem}"},
        },
        "enrich": {
            **fusion.pipeline_options("enrich"),
            "parameters": {"source": "{upstream.outputs.table}"},
            "outputs": {"table": "curated.{upstream.outputs.table}"},
        },
        "publish": {
            **fabric.pipeline_options("publish"),
            "parameters": {"Table": "{upstream.outputs.table}", "Upstream": "{upstream.run_key}"},
        },
    }
    triggers = {
        "landing": {"storage": {"bucket": "landing"}, "pipeline": "ingest"},
        "after-ingest": {"completion": {"upstream": "ingest"}, "pipeline": "enrich"},
        "after-enrich": {"completion": {"upstream": "enrich"}, "pipeline": "publish"},
    }
    runtime = world.runtime(
        world.config(pipelines, triggers), datafusion=fusion.backend(), fabric=fabric.backend()
    )
    from handlers.model.events import parse_object_finalized

    LaunchService(runtime).start(
        runtime.config.triggers["landing"],
        parse_object_finalized(ev.storage_finalized("landing", "in/orders.csv")),
    )

    def finish(expect: int) -> dict:
        for h in (dataflow, fusion, fabric):
            h.advance(120)
        Tracker(runtime).sweep()
        return world.completions(expect=expect)[-1]

    def forward(completion: dict) -> None:
        message = ev.pubsub_message(
            world.completion_topic,
            json.dumps(completion["event"]).encode(),
            attributes=completion["attributes"],
            message_id=completion["message_id"],
        )
        for _ in range(2):  # at-least-once: every completion arrives twice
            dispatch.handle_message(message, runtime)

    ingest = finish(1)
    forward(ingest)
    enrich = finish(2)
    forward(enrich)
    finish(3)
    done = world.completions()
    assert [
        (c["attributes"]["pipeline"], c["attributes"]["backend"], c["attributes"]["state"]) for c in done
    ] == [
        ("ingest", "dataflow", "SUCCEEDED"),
        ("enrich", "datafusion", "SUCCEEDED"),
        ("publish", "fabric", "SUCCEEDED"),
    ]
    # each step launched once, with parameters taken from the step before
    (cdap_start,) = [x for x in fusion.launches() if x["status"] == 200]
    assert cdap_start["parameters"] == {"source": "raw.orders"}
    (fabric_run,) = [x for x in fabric.launches() if x["status"] == 202]
    assert fabric_run["parameters"] == {
        "Table": "curated.raw.orders",
        "Upstream": enrich["attributes"]["run_key"],
    }
    assert ingest["event"]["data"]["outputs"] == {"table": "raw.orders"}


def test_a_chain_through_dataproc_from_dataflow_and_back(world, dataflow, dataproc_emulator):
    """Dataflow -> Dataproc (a Spark batch) -> Dataflow: chaining from and to the fifth backend,
    every completion delivered twice."""
    from local.kits.dataproc import DataprocHarness

    spark = DataprocHarness(dataproc_emulator)
    spark.reset()
    pipelines = {
        "ingest": {
            **dataflow.pipeline_options("ingest"),
            "parameters": {"input": "gs://{bucket}/{name}"},
            "outputs": {"table": "raw.{stem}"},
        },
        "aggregate": {
            **spark.pipeline_options("aggregate"),
            "parameters": {"source": "{upstream.outputs.table}"},
            "outputs": {"table": "agg.{upstream.outputs.table}"},
        },
        "publish": {
            **dataflow.pipeline_options("publish"),
            "parameters": {"input": "{upstream.outputs.table}", "upstream": "{upstream.run_key}"},
        },
    }
    triggers = {
        "landing": {"storage": {"bucket": "landing"}, "pipeline": "ingest"},
        "after-ingest": {"completion": {"upstream": "ingest"}, "pipeline": "aggregate"},
        "after-aggregate": {"completion": {"upstream": "aggregate"}, "pipeline": "publish"},
    }
    runtime = world.runtime(world.config(pipelines, triggers), dataproc=spark.backend())
    from handlers.model.events import parse_object_finalized

    LaunchService(runtime).start(
        runtime.config.triggers["landing"],
        parse_object_finalized(ev.storage_finalized("landing", "in/sales.csv")),
    )

    def finish(expect: int) -> dict:
        for h in (dataflow, spark):
            h.advance(120)
        Tracker(runtime).sweep()
        return world.completions(expect=expect)[-1]

    def forward(completion: dict) -> None:
        message = ev.pubsub_message(
            world.completion_topic,
            json.dumps(completion["event"]).encode(),
            attributes=completion["attributes"],
            message_id=completion["message_id"],
        )
        for _ in range(2):
            dispatch.handle_message(message, runtime)

    forward(finish(1))
    aggregate = finish(2)
    forward(aggregate)
    finish(3)
    assert [(c["attributes"]["pipeline"], c["attributes"]["backend"]) for c in world.completions()] == [
        ("ingest", "dataflow"),
        ("aggregate", "dataproc"),
        ("publish", "dataflow"),
    ]
    (batch,) = [x for x in spark.launches() if x["status"] == 200]
    assert batch["parameters"] == {"source": "raw.sales"}
    publishes = [x for x in dataflow.launches() if x["status"] == 200 and x["parameters"].get("upstream")]
    assert [p["parameters"] for p in publishes] == [
        {"input": "agg.raw.sales", "upstream": aggregate["attributes"]["run_key"]}
    ]
