"""Specification: a lost start answer on Data Fusion does not start a second run, even though CDAP
lists a new run only after a moment (the emulator hides new runs for ``visible_after_seconds``)."""

import requests

from handlers.backends.contract import FindSemantics
from handlers.launch.service import LaunchService
from local.kits.datafusion import DataFusionHarness
from tests.support import events as ev


def test_lost_start_answer_with_a_slow_runs_listing_still_starts_one_run(world, cdap_emulator):
    fusion = DataFusionHarness(cdap_emulator)
    fusion.reset()
    requests.post(
        f"{fusion.url}/_emulator/settings", json={"visible_after_seconds": 1.0}, timeout=5
    ).raise_for_status()
    try:
        pipeline = {**fusion.pipeline_options("enrich"), "parameters": {"source": "gs://{bucket}/{name}"}}
        config = world.config(
            {"enrich": pipeline}, {"landing": {"storage": {"bucket": "landing"}, "pipeline": "enrich"}}
        )
        backend = fusion.backend()
        backend.find_semantics = FindSemantics(exact=True, settle_seconds=1.5)
        runtime = world.runtime(config, datafusion=backend)
        fusion.inject("launch", 503, after_effect=True)
        from handlers.model.events import parse_object_finalized

        outcome = LaunchService(runtime).start(
            config.triggers["landing"], parse_object_finalized(ev.storage_finalized("landing", "x.csv"))
        )
        assert outcome.result == "adopted"
        assert fusion.runs_started() == 1
    finally:
        requests.post(f"{fusion.url}/_emulator/settings", json={"visible_after_seconds": 0}, timeout=5)
