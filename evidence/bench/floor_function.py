"""The cold-start floor: what any function of this design pays before a line of this project runs.

functions-framework imported and the app created the way ours is (``create_app`` of a CloudEvent
function, first event delivered through it), then google-auth's credential path exactly as our
functions take it (handlers/core/clients.py ``google_session``): ``google.auth.default()`` with the
cloud-platform scope, an ``AuthorizedSession``, and its first request, which fetches the token from
the metadata server (local/metadata_server.py in the benchmark). That first request goes to the
metadata server's root, the cheapest authorized call there is (one loopback round trip). No project
code: a function's cold start minus this floor, measured in the same run, is the project's own share.
"""

import os

import functions_framework

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


@functions_framework.cloud_event
def floor(cloud_event):
    import google.auth  # imported on first use, as ours does
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=SCOPES)
    session = AuthorizedSession(credentials)
    host = os.environ["GCE_METADATA_HOST"]
    answer = session.get(f"http://{host}/", headers={"Metadata-Flavor": "Google"}, timeout=(5, 30))
    answer.raise_for_status()
