terraform {
  # terraform_data (dead-letter wiring) needs 1.4; strcontains (source filtering) needs 1.5.
  required_version = ">= 1.5"

  required_providers {
    google = {
      source = "hashicorp/google"
      # major version 5 pinned: the module uses its resource schemas
      version = ">= 5.0, < 6.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = ">= 2.4"
    }
  }
}
