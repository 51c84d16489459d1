"""The cold-start baseline: a function shaped like Google's official "launch a Dataflow template when a
file lands" sample (functions-framework + the googleapiclient discovery client for Dataflow + a Pub/Sub
publisher client), pointed at the same local services as ours.

It does less than our function (no ledger, no exactly-once, no config) and is still the yardstick:
ours must cold-start faster and smaller while doing more. Both sides take the production credential
path: ``google.auth.default()`` against the local metadata server (local/metadata_server.py).
"""

import json
import os
import uuid

import functions_framework
from google.cloud import pubsub_v1
from googleapiclient.discovery import build

PROJECT = os.environ.get("GOOGLE_CLOUD_PROJECT", "local-project")
REGION = os.environ.get("BENCH_REGION", "europe-west1")
TEMPLATE = os.environ.get("BENCH_TEMPLATE", "gs://bench-templates/wordcount")
TOPIC = os.environ.get("BENCH_TOPIC", "bench-completions")


@functions_framework.cloud_event
def launch_template(cloud_event):
    data = cloud_event.data
    dataflow = build(
        "dataflow",
        "v1b3",
        cache_discovery=False,
        client_options={"api_endpoint": os.environ["DATAFLOW_API_ENDPOINT"]},
    )
    job_name = f"sample-{data['generation']}-{uuid.uuid4().hex[:8]}"  # the samples use a timestamp
    response = (
        dataflow.projects()
        .locations()
        .templates()
        .launch(
            projectId=PROJECT,
            location=REGION,
            gcsPath=TEMPLATE,
            body={
                "jobName": job_name,
                "parameters": {
                    "inputFile": f"gs://{data['bucket']}/{data['name']}",
                    "output": "gs://o/sample/",
                },
            },
        )
        .execute()
    )
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(PROJECT, TOPIC)
    publisher.publish(topic, json.dumps(response["job"]).encode(), job_id=response["job"]["id"]).result(30)


@functions_framework.cloud_event
def launch_template_from_notification(cloud_event):
    """The same sample fed by a Cloud Storage notification through Pub/Sub (the burst benchmark)."""
    import base64

    message = cloud_event.data["message"]
    data = json.loads(base64.b64decode(message["data"]))
    if message.get("attributes", {}).get("eventType") != "OBJECT_FINALIZE":
        return
    _launch(data)


def _launch(data):
    dataflow = build(
        "dataflow",
        "v1b3",
        cache_discovery=False,
        client_options={"api_endpoint": os.environ["DATAFLOW_API_ENDPOINT"]},
    )
    dataflow.projects().locations().templates().launch(
        projectId=PROJECT,
        location=REGION,
        gcsPath=TEMPLATE,
        body={
            "jobName": "sample-" + str(data["generation"]),
            "parameters": {"inputFile": f"gs://{data['bucket']}/{data['name']}", "output": "gs://o/sample/"},
        },
    ).execute()
