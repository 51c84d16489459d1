# Inputs of the event-pipelines module. Everything the routing config already says (buckets,
# topics) is read from config_path and what its backends need from backend_* and status_triggers
# (written by deploy --terraform-vars); the rest say where and how to deploy.

variable "project" {
  description = "Project to deploy into. Must equal settings.project of the config."
  type        = string
}

variable "region" {
  description = "Region of the functions, the ledger bucket (unless ledger_location) and the scheduler job."
  type        = string
}

variable "config_path" {
  description = "Path to the routing YAML. Deployed as pipelines.yaml beside main.py, and read here to derive triggers and IAM."
  type        = string
}

variable "source_dir" {
  description = "Project root holding main.py, requirements.txt and handlers/. The module zips those with the config as pipelines.yaml. Give this or source_object."
  type        = string
  default     = null
}

variable "source_bucket" {
  description = "Bucket for the source zip. Default: a bucket named <project>-pipelines-source created by the module."
  type        = string
  default     = null
}

variable "source_object" {
  description = "A ready source zip in source_bucket (must contain pipelines.yaml equal to config_path). Give this or source_dir."
  type        = string
  default     = null
}

# What the configured backends need, written from their declarations (handlers/backends) by
#   python -m deploy.deploy --config X --project P --region R --terraform-vars backends.auto.tfvars.json
# Regenerate the file whenever the config (or a backend flag) changes.

variable "backend_apis" {
  description = "Services the configured backends need enabled (like \"x.googleapis.com\")."
  type        = list(string)
  default     = []
}

variable "backend_grants" {
  description = "The runtime account's grants the configured backends declare: role on a resource of a kind (project, bucket, service-account, or a provider resource type named by terraform with its attributes; a grant with neither is made by its gcloud command). \"$${PROJECT_NUMBER}\" in a resource stands for the project's number."
  type = list(object({
    role       = string
    kind       = string
    resource   = string
    project    = string
    why        = string
    terraform  = string
    attributes = map(string)
    command    = list(string)
  }))
  default = []
}

variable "backend_secrets" {
  description = "Env var => Secret Manager secret mounted into every function: the credentials the configured pipelines read (and any --secret)."
  type = map(object({
    project = string
    secret  = string
    version = string
    # the env var naming this secret, when a backend keeps rotated values in it (new versions)
    kept_as = optional(string, "")
  }))
  default = {}
}

variable "status_triggers" {
  description = "Eventarc event types backends push job status as, with the regions of this project that run such pipelines: one on_job_status function per region per event type."
  type = list(object({
    backend    = string
    event_type = string
    regions    = list(string)
  }))
  default = []
}

variable "status_topics" {
  description = "Pub/Sub topics backends publish run status to (Data Fusion's eventPublishConfig): each is created, its publisher (a service agent; \"$${PROJECT_NUMBER}\" stands for the project's number) may publish to it, on_message receives it, and each enable call (a REST method, URL and JSON body, made with gcloud's token) turns publishing on."
  type = list(object({
    topic     = string
    publisher = string
    why       = string
    enable = list(object({
      method = string
      url    = string
      body   = string
    }))
  }))
  default = []
}

variable "env" {
  description = "Extra plain env vars for every function (for example a credential's tenant and client ids, API_AUDIENCE). Never secrets."
  type        = map(string)
  default     = {}
}

variable "api_invokers" {
  description = "Principals allowed to call the api function (user:..., group:..., serviceAccount:...). Never allUsers."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.api_invokers : !contains(["allUsers", "allAuthenticatedUsers"], m)])
    error_message = "The api is authenticated only: api_invokers cannot contain allUsers or allAuthenticatedUsers."
  }
}

variable "deploy_api" {
  description = "Deploy the HTTP api function (REST trigger API)."
  type        = bool
  default     = true
}

variable "create_trigger_topics" {
  description = "Create the topics of pubsub triggers. Set false when they exist already (they are then not managed here)."
  type        = bool
  default     = true
}

variable "default_completion_topic" {
  description = "Completion topic created when the config sets no settings.completion_topic."
  type        = string
  default     = "pipeline-completions"
}

variable "dead_letter_topic" {
  description = "Topic receiving events the functions failed to handle after max_delivery_attempts."
  type        = string
  default     = "pipeline-dead-letters"
}

variable "sweep_topic" {
  description = "Topic the scheduler publishes to; check_runs listens on it."
  type        = string
  default     = "pipeline-sweep"
}

variable "sweep_schedule" {
  description = "Cron schedule of the sweep (check_runs)."
  type        = string
  default     = "* * * * *"
}

variable "scheduler_job_name" {
  description = "Name of the Cloud Scheduler job."
  type        = string
  default     = "pipeline-sweep"
}

variable "max_delivery_attempts" {
  description = "Deliveries of one event before it goes to the dead-letter topic (Pub/Sub allows 5 to 100)."
  type        = number
  default     = 20

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be between 5 and 100."
  }
}

variable "configure_dead_letters" {
  description = "Attach the dead-letter topic to the subscriptions Eventarc creates (runs gcloud where Terraform runs: the provider cannot manage those subscriptions)."
  type        = bool
  default     = true
}

variable "ledger_retention_days" {
  description = "Delete run records (<prefix>runs/) not rewritten for this many days. 0 keeps them forever. Must outlast the 24 h retry window plus max_event_age."
  type        = number
  default     = 30

  validation {
    condition     = var.ledger_retention_days == 0 || var.ledger_retention_days >= 2
    error_message = "ledger_retention_days must be 0 (keep) or at least 2: a redelivered event must still find its run record."
  }
}

variable "ledger_location" {
  description = "Location of the ledger bucket. Default: region."
  type        = string
  default     = null
}

variable "bucket_locations" {
  description = "Location of storage-trigger buckets (bucket => location), skipping the lookup. Eventarc triggers live in their bucket's location."
  type        = map(string)
  default     = {}
}

variable "runtime_service_account_id" {
  description = "Account id of the functions' runtime service account."
  type        = string
  default     = "pipelines-runtime"
}

variable "trigger_service_account_id" {
  description = "Account id of the service account Eventarc delivers events as."
  type        = string
  default     = "pipelines-trigger"
}

variable "function_memory" {
  description = "Memory of every function."
  type        = string
  default     = "512Mi"
}

variable "function_timeout_seconds" {
  description = "Timeout of every function (event functions: at most 540)."
  type        = number
  default     = 300
}

variable "max_instances" {
  description = "Maximum instances per function (null: the platform default)."
  type        = number
  default     = null
}

variable "pubsub_token_creator" {
  description = "The project's Pub/Sub service agent predates 2021-04-08: let it mint tokens for the trigger account."
  type        = bool
  default     = false
}
