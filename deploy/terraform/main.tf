# The event pipelines on Google Cloud: the same resources as deploy/deploy.py, from the same YAML.
# docs/deploy.md explains every account and role.

# ---------------------------------------------------------------------------------------------
# What the routing config asks for
# ---------------------------------------------------------------------------------------------
locals {
  cfg      = yamldecode(file(var.config_path))
  settings = local.cfg.settings
  triggers = try(local.cfg.triggers, {})

  config_project = try(local.settings.project, var.project)
  config_region  = try(local.settings.region, var.region)
  ledger_bucket  = local.settings.ledger.bucket
  ledger_raw     = try(local.settings.ledger.prefix, "pipeline-ledger/")
  ledger_prefix  = local.ledger_raw == "" || endswith(local.ledger_raw, "/") ? local.ledger_raw : "${local.ledger_raw}/"

  completion_setting = try(local.settings.completion_topic, null)
  completion_topic   = local.completion_setting == null ? var.default_completion_topic : element(reverse(split("/", local.completion_setting)), 0)

  storage_buckets = toset([for name, t in local.triggers : t.storage.bucket if can(t.storage.bucket)])
  pubsub_topics   = toset([for name, t in local.triggers : element(reverse(split("/", t.pubsub.topic)), 0) if can(t.pubsub.topic)])
  has_completion  = length([for name, t in local.triggers : name if can(t.completion.upstream)]) > 0
  status_topics   = toset([for t in var.status_topics : t.topic])
  message_topics  = setunion(local.has_completion ? setunion(local.pubsub_topics, [local.completion_topic]) : local.pubsub_topics, local.status_topics)
  user_topics     = var.create_trigger_topics ? setsubtract(local.pubsub_topics, [local.completion_topic, var.sweep_topic, var.dead_letter_topic]) : toset([])

  # What the backends need comes from their declarations (var.backend_*, var.status_triggers),
  # written by `python -m deploy.deploy --terraform-vars`: this module names no backend.
  apis = toset(concat(
    ["cloudfunctions", "run", "eventarc", "pubsub", "storage", "cloudscheduler", "cloudbuild", "artifactregistry", "iam"],
    [for api in var.backend_apis : trimsuffix(api, ".googleapis.com")],
    length(var.backend_secrets) > 0 ? ["secretmanager"] : [],
  ))

  # The runtime account's declared grants, keyed, by the resource type that binds them.
  grants = { for g in var.backend_grants : "${g.kind}|${g.resource}|${g.role}" => merge(g, {
    resource = replace(g.resource, "$${PROJECT_NUMBER}", data.google_project.this.number)
  }) }
  project_grants         = { for k, g in local.grants : k => g if g.kind == "project" && g.terraform == "" }
  bucket_grants          = { for k, g in local.grants : k => g if g.kind == "bucket" && g.terraform == "" }
  service_account_grants = { for k, g in local.grants : k => g if g.kind == "service-account" && g.terraform == "" }
  instance_grants        = { for k, g in local.grants : k => g if g.terraform == "google_data_fusion_instance_iam_member" }
  command_grants         = { for k, g in local.grants : k => g if g.terraform == "" && !contains(["project", "bucket", "service-account"], g.kind) }

  runtime_member      = "serviceAccount:${google_service_account.runtime.email}"
  trigger_member      = "serviceAccount:${google_service_account.trigger.email}"
  pubsub_agent_member = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  # Function names: identical to deploy.py's service_name(): base-slug, or a cut slug plus 8 hex
  # of sha256(key) when the slug changed the key or the name would pass 49 characters.
  storage_slugs = { for b in local.storage_buckets : b => trim(replace(lower(b), "/[^a-z0-9-]+/", "-"), "-") }
  storage_fn_names = { for b, s in local.storage_slugs : b => (
    s == b && length("on-object-finalized-${s}") <= 49 ? "on-object-finalized-${s}"
    : "${trim(substr("on-object-finalized-${s}", 0, 40), "-")}-${substr(sha256(b), 0, 8)}"
  ) }
  message_slugs = { for t in local.message_topics : t => trim(replace(lower(t), "/[^a-z0-9-]+/", "-"), "-") }
  message_fn_names = { for t, s in local.message_slugs : t => (
    s == t && length("on-message-${s}") <= 49 ? "on-message-${s}"
    : "${trim(substr("on-message-${s}", 0, 40), "-")}-${substr(sha256(t), 0, 8)}"
  ) }
  # on_job_status per region per pushed status event type: on-job-status in var.region,
  # on-job-status-<region> elsewhere; a second event type's functions add its first backend's name.
  status_bases = { for i, t in var.status_triggers : t.event_type => (
    i == 0 ? "on-job-status" : (
      trim(replace(lower(t.backend), "/[^a-z0-9-]+/", "-"), "-") == t.backend && length("on-job-status-${t.backend}") <= 49
      ? "on-job-status-${t.backend}" : "${trim(substr("on-job-status-${trim(replace(lower(t.backend), "/[^a-z0-9-]+/", "-"), "-")}", 0, 40), "-")}-${substr(sha256(t.backend), 0, 8)}"
    )
  ) }
  status_functions = merge([for t in var.status_triggers : { for r in t.regions : (
    r == var.region ? local.status_bases[t.event_type] : (
      length("${local.status_bases[t.event_type]}-${r}") <= 49 ? "${local.status_bases[t.event_type]}-${r}" : "${trim(substr("${local.status_bases[t.event_type]}-${r}", 0, 40), "-")}-${substr(sha256(r), 0, 8)}"
    )
  ) => { event_type = t.event_type, region = r } }]...)

  # The functions learn their project from the config; only a config without one needs the env var.
  function_env = merge(
    { PIPELINES_CONFIG = "pipelines.yaml" },
    try(local.settings.project, null) == null ? { GOOGLE_CLOUD_PROJECT = var.project } : {},
    # a credential a backend rotates goes back to its secret, named by this env var
    { for env, s in var.backend_secrets : s.kept_as => "projects/${s.project}/secrets/${s.secret}" if s.kept_as != "" },
    var.env,
  )

  # The function source: main.py, requirements.txt, handlers/ and the config as pipelines.yaml.
  source_files  = var.source_dir == null ? [] : [for f in fileset(var.source_dir, "{main.py,requirements.txt,handlers/**}") : f if !strcontains(f, "__pycache__") && !endswith(f, ".pyc")]
  source_bucket = var.source_bucket != null ? var.source_bucket : google_storage_bucket.source[0].name
  source_object = var.source_object != null ? var.source_object : google_storage_bucket_object.source[0].name
}

data "google_project" "this" {
  project_id = var.project
}

# ---------------------------------------------------------------------------------------------
# APIs
# ---------------------------------------------------------------------------------------------
resource "google_project_service" "apis" {
  for_each           = local.apis
  project            = var.project
  service            = "${each.key}.googleapis.com"
  disable_on_destroy = false
}

# ---------------------------------------------------------------------------------------------
# The run ledger
# ---------------------------------------------------------------------------------------------
resource "google_storage_bucket" "ledger" {
  project                     = var.project
  name                        = local.ledger_bucket
  location                    = coalesce(var.ledger_location, var.region)
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = false
  }

  dynamic "lifecycle_rule" {
    for_each = var.ledger_retention_days > 0 ? [var.ledger_retention_days] : []
    content {
      condition {
        age            = lifecycle_rule.value
        matches_prefix = ["${local.ledger_prefix}runs/"]
      }
      action {
        type = "Delete"
      }
    }
  }

  lifecycle {
    precondition {
      condition     = local.config_project == var.project
      error_message = "settings.project of the config differs from var.project: the functions would keep runs and publish completions for the config's project."
    }
    precondition {
      condition     = (var.source_dir == null) != (var.source_object == null)
      error_message = "Give exactly one of source_dir and source_object."
    }
  }

  depends_on = [google_project_service.apis]
}

# ---------------------------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------------------------
resource "google_pubsub_topic" "completion" {
  project    = var.project
  name       = local.completion_topic
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "dead_letter" {
  project    = var.project
  name       = var.dead_letter_topic
  depends_on = [google_project_service.apis]
}

# A topic without a subscription drops what it receives: keep dead letters 7 days to inspect and replay.
resource "google_pubsub_subscription" "dead_letter" {
  project                    = var.project
  name                       = "${var.dead_letter_topic}-sub"
  topic                      = google_pubsub_topic.dead_letter.id
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_topic" "sweep" {
  project    = var.project
  name       = var.sweep_topic
  depends_on = [google_project_service.apis]
}

# Topics backends publish run status to (var.status_topics): on_message completes those runs.
resource "google_pubsub_topic" "status" {
  for_each = local.status_topics
  project  = var.project
  name     = each.value
}

resource "google_pubsub_topic_iam_member" "status_publisher" {
  for_each = { for t in var.status_topics : t.topic => t }
  project  = var.project
  topic    = google_pubsub_topic.status[each.key].name
  role     = "roles/pubsub.publisher"
  member   = replace(each.value.publisher, "$${PROJECT_NUMBER}", data.google_project.this.number)
}

# Turning publishing on has no provider resource for an instance this module does not manage: the
# REST call, with gcloud's access token fetched inside the shell (never in the plan or state).
resource "terraform_data" "status_publishing" {
  for_each         = { for c in flatten([for t in var.status_topics : [for e in t.enable : merge(e, { topic = t.topic })]]) : "${c.method} ${c.url}" => c }
  triggers_replace = [each.key, each.value.body]

  provisioner "local-exec" {
    command = "curl --fail-with-body -sS -X ${each.value.method} -H \"Authorization: Bearer $(gcloud auth print-access-token)\" -H 'Content-Type: application/json' '${each.value.url}' -d '${each.value.body}'"
  }

  depends_on = [google_pubsub_topic_iam_member.status_publisher]
}

resource "google_pubsub_topic" "trigger" {
  for_each   = local.user_topics
  project    = var.project
  name       = each.key
  depends_on = [google_project_service.apis]
}

# ---------------------------------------------------------------------------------------------
# Service accounts
# ---------------------------------------------------------------------------------------------
resource "google_service_account" "runtime" {
  project      = var.project
  account_id   = var.runtime_service_account_id
  display_name = "event pipelines: functions runtime"
  depends_on   = [google_project_service.apis]
}

resource "google_service_account" "trigger" {
  project      = var.project
  account_id   = var.trigger_service_account_id
  display_name = "event pipelines: Eventarc delivery"
  depends_on   = [google_project_service.apis]
}

# ---------------------------------------------------------------------------------------------
# IAM of the runtime account (what the functions do)
# ---------------------------------------------------------------------------------------------
resource "google_storage_bucket_iam_member" "ledger_runtime" {
  bucket = google_storage_bucket.ledger.name
  role   = "roles/storage.objectUser"
  member = local.runtime_member
}

# Authoritative for the publisher role: the runtime account is the completion topic's only
# publisher (chaining acts only on completions from this topic, each checked against the ledger).
resource "google_pubsub_topic_iam_binding" "completion_runtime" {
  project = var.project
  topic   = google_pubsub_topic.completion.name
  role    = "roles/pubsub.publisher"
  members = [local.runtime_member]
}

# What the configured backends declare (var.backend_grants), by the resource type that binds it.
resource "google_project_iam_member" "runtime_project" {
  for_each = local.project_grants
  project  = each.value.resource
  role     = each.value.role
  member   = local.runtime_member
}

resource "google_storage_bucket_iam_member" "runtime_bucket" {
  for_each = local.bucket_grants
  bucket   = each.value.resource
  role     = each.value.role
  member   = local.runtime_member
}

resource "google_service_account_iam_member" "runtime_service_account" {
  for_each           = local.service_account_grants
  service_account_id = "projects/${each.value.project}/serviceAccounts/${each.value.resource}"
  role               = each.value.role
  member             = local.runtime_member
}

resource "google_data_fusion_instance_iam_member" "runtime_instance" {
  for_each = local.instance_grants
  project  = each.value.attributes.project
  region   = each.value.attributes.region
  name     = each.value.attributes.name
  role     = each.value.role
  member   = local.runtime_member
}

# Grants no provider resource can make (a resource inside an instance): their gcloud command.
resource "terraform_data" "runtime_command" {
  for_each         = local.command_grants
  triggers_replace = [each.key, local.runtime_member]

  provisioner "local-exec" {
    command = join(" ", [for a in concat(each.value.command, ["--member=${local.runtime_member}", "--role=${each.value.role}"]) : format("'%s'", a)])
  }
}

resource "google_secret_manager_secret_iam_member" "runtime_secret" {
  for_each  = var.backend_secrets
  project   = each.value.project
  secret_id = each.value.secret
  role      = "roles/secretmanager.secretAccessor"
  member    = local.runtime_member
}

# A credential a backend rotates (Entra's refresh token) is added back as a new version.
resource "google_secret_manager_secret_iam_member" "runtime_secret_version_adder" {
  for_each  = { for env, s in var.backend_secrets : env => s if s.kept_as != "" }
  project   = each.value.project
  secret_id = each.value.secret
  role      = "roles/secretmanager.secretVersionAdder"
  member    = local.runtime_member
}

# ---------------------------------------------------------------------------------------------
# IAM of event delivery
# ---------------------------------------------------------------------------------------------
resource "google_project_iam_member" "trigger_event_receiver" {
  count   = length(local.storage_buckets) + length(local.status_functions) > 0 ? 1 : 0
  project = var.project
  role    = "roles/eventarc.eventReceiver"
  member  = local.trigger_member
}

data "google_storage_project_service_account" "gcs" {
  project = var.project
}

resource "google_project_iam_member" "gcs_pubsub_publisher" {
  count   = length(local.storage_buckets) > 0 ? 1 : 0
  project = var.project
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  project = var.project
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_agent_member
}

resource "google_service_account_iam_member" "pubsub_token_creator" {
  count              = var.pubsub_token_creator ? 1 : 0
  service_account_id = google_service_account.trigger.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent_member
}

# ---------------------------------------------------------------------------------------------
# Function source
# ---------------------------------------------------------------------------------------------
resource "google_storage_bucket" "source" {
  count                       = var.source_bucket == null ? 1 : 0
  project                     = var.project
  name                        = "${var.project}-pipelines-source"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  depends_on                  = [google_project_service.apis]
}

data "archive_file" "source" {
  count       = var.source_dir == null ? 0 : 1
  type        = "zip"
  output_path = "${path.root}/.terraform/event-pipelines-source.zip"

  dynamic "source" {
    for_each = local.source_files
    content {
      content  = file("${var.source_dir}/${source.value}")
      filename = source.value
    }
  }

  source {
    content  = file(var.config_path)
    filename = "pipelines.yaml"
  }
}

resource "google_storage_bucket_object" "source" {
  count  = var.source_dir == null ? 0 : 1
  bucket = local.source_bucket
  name   = "event-pipelines/${data.archive_file.source[0].output_md5}.zip"
  source = data.archive_file.source[0].output_path
}

# ---------------------------------------------------------------------------------------------
# Functions: one on_object_finalized per bucket, one on_message per topic, on_job_status per
# region per pushed status event type and check_runs, all in google_cloudfunctions2_function.event keyed by their name
# in GCP; the HTTP api apart. Every event function retries (RETRY_POLICY_RETRY) and is delivered
# as the trigger account.
# ---------------------------------------------------------------------------------------------
data "google_storage_bucket" "trigger" {
  for_each = setsubtract(local.storage_buckets, keys(var.bucket_locations))
  name     = each.key
}

locals {
  # Function name => entry point and trigger (pubsub_topic and event_filters only where set).
  event_functions = merge(
    { for b, name in local.storage_fn_names : name => {
      entry_point    = "on_object_finalized"
      event_type     = "google.cloud.storage.object.v1.finalized"
      trigger_region = try(var.bucket_locations[b], lower(data.google_storage_bucket.trigger[b].location))
      event_filters  = [{ attribute = "bucket", value = b }]
    } },
    { for t, name in local.message_fn_names : name => {
      entry_point    = "on_message"
      event_type     = "google.cloud.pubsub.topic.v1.messagePublished"
      trigger_region = var.region
      pubsub_topic   = "projects/${var.project}/topics/${t}"
    } },
    { for name, s in local.status_functions : name => {
      entry_point    = "on_job_status"
      event_type     = s.event_type
      trigger_region = s.region
    } },
    { "check-runs" = {
      entry_point    = "check_runs"
      event_type     = "google.cloud.pubsub.topic.v1.messagePublished"
      trigger_region = var.region
      pubsub_topic   = google_pubsub_topic.sweep.id
    } },
  )
}

resource "google_cloudfunctions2_function" "event" {
  for_each = local.event_functions
  project  = var.project
  location = var.region
  name     = each.key

  build_config {
    runtime     = "python311"
    entry_point = each.value.entry_point
    source {
      storage_source {
        bucket = local.source_bucket
        object = local.source_object
      }
    }
  }

  service_config {
    service_account_email = google_service_account.runtime.email
    available_memory      = var.function_memory
    timeout_seconds       = var.function_timeout_seconds
    max_instance_count    = var.max_instances
    environment_variables = local.function_env

    dynamic "secret_environment_variables" {
      for_each = var.backend_secrets
      content {
        key        = secret_environment_variables.key
        project_id = secret_environment_variables.value.project
        secret     = secret_environment_variables.value.secret
        version    = secret_environment_variables.value.version
      }
    }
  }

  event_trigger {
    trigger_region        = each.value.trigger_region
    event_type            = each.value.event_type
    pubsub_topic          = try(each.value.pubsub_topic, null)
    retry_policy          = "RETRY_POLICY_RETRY"
    service_account_email = google_service_account.trigger.email

    dynamic "event_filters" {
      for_each = try(each.value.event_filters, [])
      content {
        attribute = event_filters.value.attribute
        value     = event_filters.value.value
      }
    }
  }

  # The union of what each kind waits for (depends_on cannot differ per instance): storage
  # triggers need the event receiver and GCS publisher grants, message triggers their topics,
  # status triggers the backends' project roles; all need the ledger and the secrets.
  depends_on = [
    google_project_iam_member.trigger_event_receiver,
    google_project_iam_member.gcs_pubsub_publisher,
    google_project_iam_member.runtime_project,
    google_pubsub_topic.trigger,
    google_pubsub_topic.completion,
    google_pubsub_topic.status,
    google_storage_bucket_iam_member.ledger_runtime,
    google_secret_manager_secret_iam_member.runtime_secret,
  ]
}

# HTTP, authenticated only: no allUsers binding is ever made; invokers are var.api_invokers.
resource "google_cloudfunctions2_function" "api" {
  count    = var.deploy_api ? 1 : 0
  project  = var.project
  location = var.region
  name     = "api"

  build_config {
    runtime     = "python311"
    entry_point = "api"
    source {
      storage_source {
        bucket = local.source_bucket
        object = local.source_object
      }
    }
  }

  service_config {
    service_account_email = google_service_account.runtime.email
    available_memory      = var.function_memory
    timeout_seconds       = var.function_timeout_seconds
    max_instance_count    = var.max_instances
    environment_variables = local.function_env

    dynamic "secret_environment_variables" {
      for_each = var.backend_secrets
      content {
        key        = secret_environment_variables.key
        project_id = secret_environment_variables.value.project
        secret     = secret_environment_variables.value.secret
        version    = secret_environment_variables.value.version
      }
    }
  }

  depends_on = [
    google_storage_bucket_iam_member.ledger_runtime,
    google_secret_manager_secret_iam_member.runtime_secret,
  ]
}

# ---------------------------------------------------------------------------------------------
# Invokers: the trigger account on each event function, the configured principals on the api
# ---------------------------------------------------------------------------------------------
resource "google_cloud_run_v2_service_iam_member" "trigger_invoker" {
  for_each = google_cloudfunctions2_function.event
  project  = var.project
  location = var.region
  name     = each.value.service_config[0].service
  role     = "roles/run.invoker"
  member   = local.trigger_member
}

resource "google_cloud_run_v2_service_iam_member" "api_invoker" {
  for_each = var.deploy_api ? toset(var.api_invokers) : toset([])
  project  = var.project
  location = var.region
  name     = google_cloudfunctions2_function.api[0].service_config[0].service
  role     = "roles/run.invoker"
  member   = each.key
}

# ---------------------------------------------------------------------------------------------
# The sweep: Cloud Scheduler publishes to the sweep topic every minute (as its own service agent)
# ---------------------------------------------------------------------------------------------
resource "google_cloud_scheduler_job" "sweep" {
  project   = var.project
  region    = var.region
  name      = var.scheduler_job_name
  schedule  = var.sweep_schedule
  time_zone = "Etc/UTC"

  pubsub_target {
    topic_name = google_pubsub_topic.sweep.id
    data       = base64encode("{}")
  }

  depends_on = [google_cloudfunctions2_function.event]
}

# ---------------------------------------------------------------------------------------------
# Dead letters. Eventarc creates and owns each function's Pub/Sub subscription, so no provider
# resource can hold its dead-letter policy: gcloud sets it (idempotent), again whenever the
# function's trigger changes (a new trigger means a new subscription).
# ---------------------------------------------------------------------------------------------
resource "terraform_data" "dead_letter_policy" {
  for_each = { for name, f in google_cloudfunctions2_function.event : name => f if var.configure_dead_letters }
  triggers_replace = [
    each.value.event_trigger[0].trigger,
    google_pubsub_topic.dead_letter.id,
    var.max_delivery_attempts,
  ]

  provisioner "local-exec" {
    interpreter = ["bash", "-c"]
    command     = <<-EOT
      set -euo pipefail
      sub=$(gcloud eventarc triggers describe "$TRIGGER" --format='value(transport.pubsub.subscription)')
      gcloud pubsub subscriptions update "$sub" --dead-letter-topic="$DEAD_LETTER_TOPIC" --max-delivery-attempts="$ATTEMPTS"
      gcloud pubsub subscriptions add-iam-policy-binding "$sub" --member="$PUBSUB_AGENT" --role=roles/pubsub.subscriber
    EOT
    environment = {
      TRIGGER           = each.value.event_trigger[0].trigger
      DEAD_LETTER_TOPIC = google_pubsub_topic.dead_letter.id
      ATTEMPTS          = tostring(var.max_delivery_attempts)
      PUBSUB_AGENT      = local.pubsub_agent_member
    }
  }

  depends_on = [google_pubsub_topic_iam_member.dead_letter_publisher]
}
